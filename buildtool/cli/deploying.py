"""The deployment commands: a release's compose stacks, read from the registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildtool import pipeline
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
    found = stacks.fetch(registry, run_settings.org, release)
    wanted = {m: text for m, text in found.items() if not args.machine or m in args.machine}
    if args.machine and set(args.machine) - set(found):
        raise UsageError(f"release {release} has no stack for {', '.join(sorted(set(args.machine) - set(found)))} (it has: {', '.join(sorted(found))})")
    out = Path(args.out) if args.out else fleet.root / "deploy"
    for path in stacks.write(out, wanted, repo=fleet.root):
        console.print(f"wrote {path} (release {release})", highlight=False)
    return 0
