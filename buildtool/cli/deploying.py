"""The deployment commands: a release's compose stacks, read from the registry."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from buildtool import pipeline
from buildtool.adapters import setup
from buildtool.adapters.files import owned_dir
from buildtool.cli.commands import fleet_of, settings_of
from buildtool.cli.console import console
from buildtool.core.errors import UsageError
from buildtool.deploy import stacks


def compose(args: argparse.Namespace) -> int:
    """Write a release's compose stacks (default: the release the org's state was published by;
    ``--release`` or FORCE_IMAGE_TAG pins one) to ``deploy/MACHINE/compose.yaml``."""
    fleet = fleet_of(args)
    run_settings = settings_of(args, fleet)
    for m in args.machine:
        if m not in fleet.machines:
            raise UsageError(f"unknown machine {m!r}; one of {', '.join(fleet.machines)}")
    registry = pipeline.bring_up(run_settings, engine=False)
    release = args.release or run_settings.force_image_tag or stacks.current_release(registry, run_settings.org)
    found = stacks.fetch(registry, run_settings.org, release, address=run_settings.registry)
    wanted = {m: text for m, text in found.items() if not args.machine or m in args.machine}
    if args.machine and set(args.machine) - set(found):
        raise UsageError(f"release {release} has no stack for {', '.join(sorted(set(args.machine) - set(found)))} (it has: {', '.join(sorted(found))})")
    out = Path(args.out) if args.out else fleet.root / "deploy"
    for path in stacks.write(out, wanted, repo=fleet.root):
        console.print(f"wrote {path} (release {release})", highlight=False)
    return 0


def deploy(args: argparse.Namespace) -> int:
    """Deploy a release's stack on one machine, health-gated; on failure, what ran before runs again."""
    from buildtool.deploy import compose as composing
    from buildtool.deploy import rollout
    from buildtool.model import deploy as model

    fleet = fleet_of(args)
    run_settings = settings_of(args, fleet)
    machine = args.machine
    if machine not in fleet.machines:
        raise UsageError(f"unknown machine {machine!r}; one of {', '.join(fleet.machines)}")
    on = {s.name: s for s in model.on_machine(fleet, machine)}
    for name in args.service:
        if name not in on:
            raise UsageError(f"{name!r} is no service of {machine}; its services: {', '.join(sorted(on))}")
    overrides = [Path(f).resolve() for f in args.override]
    for f in overrides:
        if not f.is_file():
            raise UsageError(f"override file {f} is not a file")
    folder = owned_dir(Path(args.dir) if args.dir else fleet.root / "deploy" / machine, repo=fleet.root, what="deploy folder")
    if args.rollback:
        previous = folder / "previous.yaml"
        if not previous.is_file():
            raise UsageError(f"{previous} does not exist: no earlier stack was replaced by a deploy here, so there is none to roll back to")
        stack = previous.read_text()
        found = re.search(r"for release ([A-Za-z0-9_.-]{1,128}), written", stack.split("\n", 1)[0])
        release = found.group(1) if found else "the previous stack"
    else:
        registry = pipeline.bring_up(run_settings, engine=False)
        release = args.release or run_settings.force_image_tag or stacks.current_release(registry, run_settings.org)
        found_stacks = stacks.fetch(registry, run_settings.org, release, address=run_settings.registry)
        if machine not in found_stacks:
            raise UsageError(f"release {release} has no stack for {machine} (it has: {', '.join(sorted(found_stacks)) or 'none'})")
        stack = found_stacks[machine]
    setup.ensure_compose()  # compose v2 from Debian where it is missing, as the engine
    for note in rollout.preflight(fleet, machine, list(args.service) or list(on)):
        console.print(note, highlight=False)
    timeout = args.timeout or rollout.START_PERIOD * (model.depth(fleet, machine) + 1)
    outcome = rollout.deploy(folder, stack, release, services=[composing.service_name(on[n]) for n in args.service], overrides=overrides,
                             timeout=timeout, say=lambda line: console.print(f"deploy: {line}", highlight=False))  # fmt: skip
    console.print(f"deployed {release} on {machine}: pull {outcome.seconds['pull']:.1f}s, up until all healthy {outcome.seconds['up']:.1f}s; "
                  f"{len(outcome.started)} started or recreated, {len(outcome.kept)} unchanged", highlight=False)  # fmt: skip
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``compose`` and ``deploy`` commands."""
    p = sub.add_parser("compose", help="write a release's compose stacks, as its publish stored them, to deploy/MACHINE/compose.yaml")
    p.add_argument("--registry", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--org", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--release", help="the release (default: FORCE_IMAGE_TAG, else the one the org's state was published by)")
    p.add_argument("--machine", action="append", default=[], help="only this machine (repeatable)")
    p.add_argument("--out", help="write below this folder instead of ROOT/deploy")
    p.set_defaults(func=compose)

    p = sub.add_parser("deploy", help="deploy a release's stack on one machine: pull by digest, start in layers, wait healthy; on failure, what ran before")
    p.add_argument("--registry", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--org", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--machine", required=True, help="the machine this runs on (mainpc, pc2)")
    p.add_argument("--release", help="the release (default: FORCE_IMAGE_TAG, else the one the org's state was published by)")
    p.add_argument("--rollback", action="store_true", help="deploy the stack the last deploy replaced (deploy/MACHINE/previous.yaml)")
    p.add_argument("--service", action="append", default=[], help="only this service and what it depends on (repeatable)")
    p.add_argument("--override", action="append", default=[], help="another compose file over the stack (repeatable)")
    p.add_argument("--dir", help="the machine's deploy folder (default: ROOT/deploy/MACHINE)")
    p.add_argument("--timeout", type=int, help="seconds until every service is healthy (default: 60 per startup layer, plus 60)")
    p.set_defaults(func=deploy)
