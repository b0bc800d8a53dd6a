"""Command line: ``python -m buildtool COMMAND``. The nox sessions call this."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from rich.table import Table

from buildtool import lock as locking
from buildtool.config import load_fleet
from buildtool.console import console, error
from buildtool.errors import ConfigError, LockError, ToolError
from buildtool.plan import make_plan
from buildtool.render import lock_path

REPO = Path(__file__).resolve().parent.parent


def _fleet(args: argparse.Namespace):  # noqa: ANN202
    return load_fleet(Path(args.root), os.environ)


def cmd_validate(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    console.print(f"fleet is valid: {len(fleet.families)} families, {len(fleet.machines)} machines, {len(fleet.services)} services")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Write every planned build context (Dockerfile, .dockerignore, generated files) under --out."""
    fleet = _fleet(args)
    plan = make_plan(fleet, all_services=True)
    out = Path(args.out)
    for step in plan.steps:
        dest = out / step.kind / step.repository
        step.rendered.write(dest)
    console.print(f"rendered {len(plan.steps)} build contexts under {out}")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    if args.check:
        problems = locking.check(fleet)
        if problems:
            raise LockError("locks do not match their inputs:\n" + "\n".join(f"  - {p}" for p in problems))
        console.print(f"all {len(locking.targets(fleet))} locks match their inputs")
        return 0
    total = time.monotonic()
    for target in locking.targets(fleet, args.names or None):
        seconds = locking.compile_target(target, engine=args.engine)
        lock = target.path.relative_to(fleet.root)
        console.print(f"locked {target.name:<28} {len(locking.read_lock(target.path).pins):>4} pins  {seconds:6.1f}s  -> {lock}")
    console.print(f"done in {time.monotonic() - total:.1f}s with {args.engine}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    plan = make_plan(
        fleet,
        machines=args.machine,
        families=args.family,
        services=args.services,
        all_services=args.all,
    )
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buildtool", description="Build the fleet's container images.")
    parser.add_argument("--root", default=str(REPO), help="repository root holding fleet.toml (default: this checkout)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("validate", help="check the fleet definition").set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="write all build contexts")
    p.add_argument("--out", default=str(REPO / "build" / "rendered"))
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("lock", help="hash-lock family and service requirements")
    p.add_argument("names", nargs="*", help="families or services to lock (default: all)")
    p.add_argument("--check", action="store_true", help="fail when a lock no longer matches its inputs")
    p.add_argument("--engine", choices=locking.ENGINES, default="uv")
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser("plan", help="print the build plan")
    _add_selection(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
    return parser


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("services", nargs="*", help="services to build (with the families they need)")
    p.add_argument("--machine", action="append", default=[], help="only this machine (repeatable)")
    p.add_argument("--family", action="append", default=[], help="only this family and its ancestors (repeatable)")
    p.add_argument("--all", action="store_true", help="every service")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except ToolError as exc:
        if args.debug:
            raise
        file = exc.problems[0].file if isinstance(exc, ConfigError) else None
        error(exc.message, file=file)
        return exc.exit_code
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
