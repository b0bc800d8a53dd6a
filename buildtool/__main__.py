"""Command line: ``python -m buildtool COMMAND``. The nox sessions call this."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from rich.table import Table

from buildtool import lock as locking
from buildtool.config import load_fleet
from buildtool.console import console, error
from buildtool.errors import BuildError, ConfigError, LockError, ToolError, UsageError
from buildtool.plan import make_plan

REPO = Path(__file__).resolve().parent.parent


def _fleet(args: argparse.Namespace):
    env = dict(os.environ)
    if args.registry:
        env["FLEET_REGISTRY"] = args.registry
    if args.org:
        env["FLEET_ORG"] = args.org
    return load_fleet(Path(args.root), env)


def cmd_validate(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    console.print(f"fleet is valid: {len(fleet.families)} families, {len(fleet.machines)} machines, {len(fleet.services)} services")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Write every planned build context (Dockerfile, .dockerignore, generated files) under --out."""
    from buildtool.output import adopt, owned_dir

    fleet = _fleet(args)
    plan = make_plan(fleet, all_families=True, all_services=True)
    adopt(fleet.root / "build")
    out = owned_dir(Path(args.out), repo=fleet.root, what="render --out", clear=True)
    for step in plan.steps:
        step.rendered.write(out / step.kind / step.repository)
    console.print(f"rendered {len(plan.steps)} build contexts under {out}")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    if args.check:
        problems = locking.check(fleet)
        if problems:
            raise LockError("locks do not match their inputs:\n" + "\n".join(f"  - {p}" for p in problems))
        console.print(f"all {len(locking.targets(fleet))} locks match their inputs and a fresh resolution of them")
        return 0
    total = time.monotonic()
    outcomes = locking.lock(fleet, args.names, engine=args.engine, upgrade=args.upgrade, upgrade_packages=args.upgrade_package)
    for o in outcomes:
        state = "locked" if o.changed else "resolved, unchanged" if o.resolved else "up to date"
        took = f"{o.seconds:6.1f}s" if o.resolved else " " * 7
        console.print(f"{state:<20} {o.target.name:<28} {o.pins:>4} pins {took}  {o.target.shown}")
    changed = sum(o.changed for o in outcomes)
    console.print(f"{changed} of {len(outcomes)} locks changed in {time.monotonic() - total:.2f}s ({args.engine})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    plan = _plan(fleet, args)
    if args.json:
        print(json.dumps(plan.as_json(), indent=2))
        return 0
    table = Table(title=f"build plan ({len(plan.steps)} images, machines: {', '.join(plan.machines)})")
    for col in ("#", "image", "machine", "builds on", "identity"):
        table.add_column(col)
    for i, step in enumerate(plan.steps, 1):
        parent = plan.step(step.parent).repository if step.parent else (step.root.source if step.root else "")
        table.add_row(str(i), step.repository, step.machine or "any", parent, step.identity[:16])
    console.print(table)
    return 0


def _plan(fleet, args: argparse.Namespace):
    return make_plan(
        fleet,
        machines=args.machine,
        families=args.family,
        groups=args.group,
        services=args.services,
        all_services=args.all,
    )


def _state_dir(args: argparse.Namespace, *, own: bool = False) -> Path:
    """The state dir (FLEET_STATE_DIR, default build/ of the repository); ``own``: it will be written to."""
    from buildtool.output import adopt, owned_dir

    default = Path(args.root).resolve() / "build"
    state = Path(os.environ.get("FLEET_STATE_DIR") or default)
    if not own:
        return state
    # The repository's build/ (ignored by git) is the toolkit's own; any other folder must be new, empty or marked.
    adopt(default)
    return owned_dir(state, repo=Path(args.root), what="state dir (FLEET_STATE_DIR)")


def _options(fleet, args: argparse.Namespace, tag: str):
    from buildtool import build

    return build.Options(
        registry=fleet.settings.registry,
        org=fleet.settings.org,
        state_dir=_state_dir(args),
        ca_bundle=Path(os.environ.get("FLEET_PIP_CA", "/etc/ssl/certs/ca-certificates.crt")),
        pip_index_env="FLEET_PIP_INDEX_URL" if os.environ.get("FLEET_PIP_INDEX_URL") else "",
        source_date_epoch=fleet.settings.source_date_epoch,
        jobs=getattr(args, "jobs", 2),
        revision=tag,
    )


def _bring_up(fleet, state: Path):
    """Engine and registry up (started here when missing); returns the registry client."""
    from buildtool import engine
    from buildtool.registry import Registry, is_loopback

    engine.ensure_engine(state_dir=state)
    address = fleet.settings.registry
    if is_loopback(address):
        storage = Path(os.environ.get("FLEET_REGISTRY_STORAGE", "/var/lib/fleet-registry"))
        engine.ensure_registry(address, storage_dir=storage, state_dir=state)
    return Registry(address, token=os.environ.get("FLEET_REGISTRY_TOKEN"))


def _lock_names(fleet, plan) -> list[str]:
    """The lock targets the plan's images are made from (each image's lock and its ancestors')."""
    names = {f.name for s in plan.steps for f in fleet.lineage(s.name if s.kind == "family" else fleet.services[s.name].family)}
    names |= {s.name for s in plan.steps if s.kind == "service"}
    return [t.name for t in locking.targets(fleet) if t.name in names or t.name.removesuffix(".build") in names]


def cmd_build(args: argparse.Namespace) -> int:
    """Build, verify and push the selected images; publish release tags when every one succeeded."""
    from buildtool import build, report
    from buildtool.bootstrap import bootstrap_rootfs
    from buildtool.docker import Docker
    from buildtool.output import atomic_write
    from buildtool.progress import Progress
    from buildtool.release import publish, release_tag

    fleet = _fleet(args)
    if args.families_only and not (args.family or args.group or args.services):
        args.group = ["cpu"]
    plan = _plan(fleet, args)
    problems = locking.verify(fleet, _lock_names(fleet, plan))
    if problems:
        raise LockError("locks of the selected images do not match their inputs; nothing was built:\n" + "\n".join(f"  - {p}" for p in problems))
    state = _state_dir(args, own=True)
    registry = _bring_up(fleet, state)
    tag = release_tag(fleet.root, os.environ)
    options = _options(fleet, args, tag)
    started = time.monotonic()
    with Progress((s.key, f"{s.repository}" + (f" ({s.machine})" if s.machine else "")) for s in plan.steps) as progress:
        results = build.Executor(plan, options=options, docker=Docker(), registry=registry, progress=progress, bootstrap=bootstrap_rootfs).run()
    counts = build.summarize(results)
    elapsed = time.monotonic() - started
    failed = [r for r in results if r.status in ("failed", "blocked")]
    (state / "reports").mkdir(parents=True, exist_ok=True)
    atomic_write(state / "reports" / "last-run.json", json.dumps({"tag": tag, "seconds": elapsed, "results": build.results_json(results)}, indent=2))
    if failed:
        details = "\n".join(f"  - {r.repository}: {r.status}: {r.message}" for r in failed)
        raise BuildError(f"{len(failed)} of {len(results)} images did not build; no tag was moved:\n{details}")
    built = counts.get("built", 0)
    console.print(f"{len(results)} images in {elapsed:.1f}s: {built} built, {counts.get('cached', 0)} unchanged (identity already in the registry)")
    if built == 0:
        console.print("nothing changed: nothing was built")
    moves = publish(registry, fleet.settings.org, {s.repository: s.id_tag for s in plan.steps}, tag)
    console.print(f"published {tag}: {len(moves)} tag(s) written")
    sizes = report.measure(plan, {r.key: r.status for r in results}, registry, fleet.settings.org, state)
    report.write(sizes, state)
    report.show(sizes)
    return 0


def cmd_bake(args: argparse.Namespace) -> int:
    """Write the plan as docker-bake.json (with materialised contexts) for `docker buildx bake`."""
    from buildtool import bake, build
    from buildtool.bootstrap import bootstrap_rootfs
    from buildtool.output import owned_dir

    fleet = _fleet(args)
    if not (args.family or args.group or args.services or args.all):
        args.group = ["cpu"]
    plan = _plan(fleet, args)
    out = owned_dir(Path(args.out), repo=fleet.root, what="bake --out", clear=True)
    _state_dir(args, own=True)
    options = _options(fleet, args, "")
    path = bake.write(plan, options, out, bootstrap=lambda step: build.rootfs(step, options, bootstrap_rootfs))
    console.print(f"wrote {path} ({len(plan.steps)} targets); build with: docker buildx bake -f {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from buildtool import bench

    fleet = _fleet(args)
    state = _state_dir(args, own=True) / "bench"
    _bring_up(fleet, state)
    saved = dict(os.environ)
    try:
        rows = bench.run_bench(Path(args.root), state, lock_all=args.lock_all)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    bench.show(rows)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from buildtool import report

    state = _state_dir(args)
    try:
        sizes = report.load(state)
    except FileNotFoundError:
        raise UsageError(f"no size report yet in {state / 'reports'}; run `nox -s build_families` first") from None
    fmt = args.format
    if fmt == "json":
        print((state / "reports" / "sizes.json").read_text())
    elif fmt == "markdown":
        print(report.markdown(sizes))
    else:
        report.show(sizes)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from buildtool.registry import Registry
    from buildtool.release import rollback

    fleet = _fleet(args)
    plan = _plan(fleet, args)
    registry = Registry(fleet.settings.registry, token=os.environ.get("FLEET_REGISTRY_TOKEN"))
    repos = [s.repository for s in plan.steps if s.kind == "service"] if args.services or args.all else [s.repository for s in plan.steps]
    for move in rollback(registry, fleet.settings.org, repos, os.environ):
        console.print(f"{move.repository}:{move.tag} -> {move.digest}")
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """The GitHub Actions matrix: one entry per family group x machine that has something to build."""
    fleet = _fleet(args)
    include = []
    for group in sorted({f.group for f in fleet.families.values()}):
        for machine in fleet.machines:
            plan = make_plan(fleet, machines=[machine], groups=[group])
            include.append({"group": group, "machine": machine, "images": len(plan.steps)})
    print(json.dumps({"include": include}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="buildtool", description="Build the fleet's container images.")
    parser.add_argument("--root", default=str(REPO), help="repository root holding fleet.toml (default: this checkout)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--registry", help="registry host[:port] (default: FLEET_REGISTRY, then fleet.toml)")
    parser.add_argument("--org", help="organisation below the registry (default: FLEET_ORG, then fleet.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("validate", help="check the fleet definition").set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="write all build contexts")
    p.add_argument("--out", default=str(REPO / "build" / "rendered"))
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("lock", help="hash-lock family and service requirements (stable: unchanged inputs keep their pins)")
    p.add_argument("names", nargs="*", help="families or services to resolve again (default: those whose inputs changed)")
    p.add_argument("--check", action="store_true", help="fail unless every lock matches its inputs and a fresh resolution of them")
    p.add_argument("--engine", choices=locking.ENGINES, default="uv")
    p.add_argument("--upgrade", action="store_true", help="resolve every lock from scratch: move every pin to the newest that fits")
    p.add_argument("--upgrade-package", action="append", default=[], metavar="NAME", help="move this package's pin (repeatable)")
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser("build", help="build, verify, push and publish images")
    _add_selection(p)
    p.add_argument("--families-only", action="store_true", help="families only (default group: cpu)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="images built at once")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("bake", help="write the plan as a docker-bake.json")
    _add_selection(p)
    p.add_argument("--out", default=str(REPO / "build" / "bake"))
    p.set_defaults(func=cmd_bake)

    p = sub.add_parser("bench", help="measure no-op and one-change rebuilds and locking against baselines")
    p.add_argument("--lock-all", action="store_true", help="lock the GPU families too (pip-compile takes minutes each)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="print the last size report")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("rollback", help="point 'latest' back at 'prev' (or at FORCE_IMAGE_TAG)")
    _add_selection(p)
    p.set_defaults(func=cmd_rollback)

    sub.add_parser("matrix", help="print the CI matrix (family group x machine) as JSON").set_defaults(func=cmd_matrix)

    p = sub.add_parser("plan", help="print the build plan")
    _add_selection(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
    return parser


def _add_selection(p: argparse.ArgumentParser) -> None:
    # Also accepted after the command (nox passes its arguments there); SUPPRESS keeps a value
    # given before the command.
    p.add_argument("--registry", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--org", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("services", nargs="*", help="services to build (with the families they need)")
    p.add_argument("--machine", action="append", default=[], help="only this machine (repeatable)")
    p.add_argument("--family", action="append", default=[], help="only this family and its ancestors (repeatable)")
    p.add_argument("--group", action="append", default=[], help="families of this group: cpu, gpu, legacy (repeatable)")
    p.add_argument("--gpu", dest="group", action="append_const", const="gpu", help="same as --group gpu")
    p.add_argument("--all", action="store_true", help="every service")


class _Parser(argparse.ArgumentParser):
    """Bad arguments exit with UsageError's code (argparse's own 2 is ConfigError's)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(name)s: %(message)s")
        return args.func(args)
    except ToolError as exc:
        if debug:
            raise
        file = exc.problems[0].file if isinstance(exc, ConfigError) else None
        error(exc.message, file=file)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`plan --json | head`): stop writing, quietly, as a SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as exc:
        if debug:
            raise
        error(f"internal error: {type(exc).__name__}: {exc}\nThis is a bug in buildtool; rerun with --debug for the traceback.")
        return 70


if __name__ == "__main__":
    sys.exit(main())
