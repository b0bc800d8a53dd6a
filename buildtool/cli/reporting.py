"""The ``report`` command: the last run's size report, or what changed between two releases."""

from __future__ import annotations

import argparse
import dataclasses
import json

from buildtool import pipeline
from buildtool.adapters.files import atomic_write
from buildtool.adapters.protocols import Registry
from buildtool.cli.commands import fleet_of, settings_of, show_sizes
from buildtool.cli.console import console
from buildtool.core.errors import UsageError
from buildtool.plan.plan import MB
from buildtool.publish import record


def report(args: argparse.Namespace) -> int:
    if args.diff is not None:
        return diff(args)
    if args.format == "html":
        return page(args)
    from buildtool.report import sizes, tables

    state = settings_of(args, fleet_of(args)).state_dir
    try:
        measured = sizes.load(state)
    except FileNotFoundError:
        raise UsageError(f"no size report yet in {state / 'reports'}; run `nox -s build_families` first") from None
    if args.format == "json":
        print((state / "reports" / "sizes.json").read_text())
    elif args.format == "markdown":
        print(tables.markdown(measured))
    else:
        show_sizes(measured)
    return 0


def current(registry: Registry, org: str, otherwise: str) -> str:
    """The release the org's state was published by; UsageError (ending with ``otherwise``) without one."""
    state = record.state(registry, org)
    if state is None or not state.release:
        raise UsageError(f"{org} has no current release on record (none published yet, or a rollback since); {otherwise}")
    return state.release


def diff(args: argparse.Namespace) -> int:
    """``--diff [OLD NEW]``: two releases' records compared (default: the current release against
    the one it replaced); the Markdown also goes to STATE_DIR/reports/diff.md."""
    from rich.table import Table

    from buildtool.report import history

    if len(args.diff) not in (0, 2):
        raise UsageError("--diff takes two releases, OLD NEW, or none (the current release against the one it replaced)")
    settings = settings_of(args, fleet_of(args))
    pipeline.prepare_state(settings)  # diff.md is written there
    registry = pipeline.registry_client(settings)
    old, new = args.diff or ("", "")
    newer = history.fetch(registry, settings.org, new or current(registry, settings.org, "give two: --diff OLD NEW"))
    new, old = newer["release"], old or str(newer.get("previous") or "")
    if not old:
        raise UsageError(f"the record of {new} names no release it replaced; give two: --diff OLD NEW")
    changes = history.diff(history.fetch(registry, settings.org, old), newer)
    text = history.markdown(old, new, changes)
    atomic_write(settings.state_dir / "reports" / "diff.md", text)
    if args.format != "table":
        print(text if args.format == "markdown" else json.dumps([dataclasses.asdict(c) for c in changes], indent=1), end="")
        return 0
    table = Table(title=f"{old} → {new}: {len(changes)} image(s) changed")
    for col in ("image", "change", "why", "MB", "layers that moved", "packages", "advisories"):
        table.add_column(col)
    for c in changes:
        (x, y) = c.size
        layers, packages, advisories = ("\n".join(lines) for lines in c.cells(packages=8))
        table.add_row(c.repository, c.status, ", ".join(c.why), f"{x / MB:.1f} → {y / MB:.1f}", layers, packages, advisories)
    console.print(table)
    return 0


def page(args: argparse.Namespace) -> int:
    """``--format html``: the current release's page, with the releases before it, to STATE_DIR/reports/index.html."""
    from buildtool.report import page as html_page

    fleet = fleet_of(args)
    settings = settings_of(args, fleet)
    pipeline.prepare_state(settings)  # index.html is written there
    registry = pipeline.registry_client(settings)
    release = args.release or current(registry, settings.org, "name one: --release TAG")
    out = settings.state_dir / "reports" / "index.html"
    releases = html_page.write(registry, settings.org, release, out, html_page.expiries(fleet.allowlist), keep=settings.keep_releases)
    console.print(f"wrote {out} ({len(releases)} release(s): {releases[0]['release']} … {release})", highlight=False)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="print the last size report, or (--diff) what changed between two releases")
    p.add_argument("--format", choices=("table", "markdown", "json", "html"), default="table",
                   help="html: the current release's page, charts and all, to STATE_DIR/reports/index.html (readable offline)")  # fmt: skip
    p.add_argument("--release", help="with --format html: this release's page instead of the current one's")
    p.add_argument("--diff", nargs="*", metavar="RELEASE", help="OLD NEW: images rebuilt and why, layer sizes, packages, advisories "
                   "(no releases: the current one against the one it replaced)")  # fmt: skip
    p.add_argument("--registry", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--org", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=report)
