"""The commands: each reads the fleet, calls the library, and prints. Nothing else prints."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from buildtool import pipeline, settings
from buildtool.cli.console import console, step_summary, warning
from buildtool.core.errors import BuildError, LockError, UsageError
from buildtool.locking import lock as locking
from buildtool.locking import oslock
from buildtool.model.load import load_fleet
from buildtool.model.types import Fleet
from buildtool.plan.plan import Plan, check_repositories, make_plan


def fleet_of(args: argparse.Namespace) -> Fleet:
    """The fleet under --root. Its warnings go to stderr once per command, though a command may read the fleet again."""
    fleet = load_fleet(Path(args.root))
    if not getattr(args, "warned", False):
        for w in fleet.warnings:
            warning(str(w), file=w.file)
        args.warned = True
    return fleet


def settings_of(args: argparse.Namespace, fleet: Fleet) -> settings.Settings:
    """The run's settings: flags over the process environment over fleet.toml over the defaults."""
    return settings.from_sources(
        fleet,
        os.environ,
        registry=args.registry,
        org=args.org,
        jobs=getattr(args, "jobs", None),
        vuln_policy=getattr(args, "vuln_policy", None),
        keep_releases=getattr(args, "keep_releases", None),
    )


def plan_of(fleet: Fleet, args: argparse.Namespace, *, default_group: str | None = None) -> Plan:
    """The selected images. ``--within-groups`` keeps families and services of those groups only;
    ``--skip-unplaced`` drops named services that run on none of the selected machines (CI's
    per-machine jobs): both may leave nothing to do, an empty plan."""
    within = sorted({g for g in re.split(r"[\s,]+", getattr(args, "within_groups", None) or "") if g})
    skip = getattr(args, "skip_unplaced", False)
    if not (within or skip):
        groups = args.group or ([default_group] if default_group and not (args.family or args.services or args.all) else [])
        return make_plan(fleet, machines=args.machine, families=args.family, groups=groups, services=args.services, all_services=args.all)
    services = list(fleet.services) if args.all else list(args.services)
    unknown = [s for s in services if s not in fleet.services]
    if unknown:  # reported by make_plan with its did-you-mean
        return make_plan(fleet, services=unknown)
    machines = args.machine or list(fleet.machines)
    if within:
        services = [s for s in services if fleet.families[fleet.services[s].family].group in within]
    if skip:
        services = [s for s in services if set(fleet.services[s].machines) & set(machines)]
    if (args.services or args.all) and not services:
        return Plan(steps=(), machines=tuple(machines))  # services were asked for, and none is left
    groups = list(args.group) or ([g for g in within if g in {f.group for f in fleet.families.values()}] if not args.family else [])
    if not (services or groups or args.family):
        return Plan(steps=(), machines=tuple(machines))
    return make_plan(fleet, machines=args.machine, families=args.family, groups=groups, services=services)


def out_dir(args: argparse.Namespace, fleet: Fleet, default: str, what: str) -> Path:
    """``--out`` (default: build/DEFAULT), made the toolkit's folder and emptied; the repository's
    build/ is the toolkit's own."""
    from buildtool.adapters.files import adopt, owned_dir

    adopt(fleet.root / "build")
    return owned_dir(Path(args.out or fleet.root / "build" / default), repo=fleet.root, what=what, clear=True)


def validate(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    check_repositories(fleet)  # every repository the plan would write: the fleet's own, none the toolkit's
    warned = f", {len(fleet.warnings)} warning(s)" if fleet.warnings else ""
    console.print(f"fleet is valid: {len(fleet.families)} families, {len(fleet.machines)} machines, {len(fleet.services)} services{warned}")
    return 0


def render(args: argparse.Namespace) -> int:
    """Write every planned build context (Dockerfile, .dockerignore, generated files) under --out."""
    from buildtool.adapters.files import write_context

    fleet = fleet_of(args)
    plan = make_plan(fleet, all_families=True, all_services=True)
    out = out_dir(args, fleet, "rendered", "render --out")
    for step in plan.steps:
        write_context(out / step.kind / step.repository, step.rendered.context_files())
    console.print(f"rendered {len(plan.steps)} build contexts under {out}")
    return 0


def _apt_cache(run: settings.Settings) -> Path:
    """The state dir's apt index cache, where OS locks are resolved; a command reads each archive's
    indexes once, fresh."""
    from buildtool.locking import aptsource

    pipeline.prepare_state(run)
    aptsource.new_run()
    return pipeline.apt_cache(run)


def lock(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    run = settings_of(args, fleet)
    if args.locked and not args.check:
        raise UsageError("--locked goes with --check (a build takes --locked itself)")
    if args.check:
        # What the stamps show first (offline, nothing written); then both kinds are resolved again.
        problems = locking.verify(fleet) + oslock.verify(fleet)
        replaced: list[str] = []
        if not problems:
            checked = oslock.check(fleet, cache=_apt_cache(run), locked=args.locked)
            problems, replaced = locking.check(fleet, ca_bundle=run.ca_bundle) + checked.problems, checked.replaced
        for line in replaced:  # the archive moved on, not the lock: what `refresh` and a forwarding build move
            warning(line)
        if problems:
            raise LockError("locks do not match their inputs:\n" + "\n".join(f"  - {p}" for p in problems))
        aside = f" ({len(replaced)} with versions the archive replaced)" if replaced else ""
        console.print(f"all {len(locking.targets(fleet))} Python locks and {len(oslock.os_targets(fleet))} OS package locks "
                      f"match their inputs and a fresh resolution of them{aside}")  # fmt: skip
        return 0
    total = time.monotonic()
    families = set(fleet.families)
    python_names = [n for n in args.names if n not in families or any(t.name == n for t in locking.targets(fleet))]
    outcomes = locking.lock(fleet, python_names if args.names else None, engine=args.engine, upgrade=args.upgrade,
                            upgrade_packages=args.upgrade_package, ca_bundle=run.ca_bundle)  # fmt: skip
    for o in outcomes:
        state = "locked" if o.changed else "resolved, unchanged" if o.resolved else "up to date"
        took = f"{o.seconds:6.1f}s" if o.resolved else " " * 7
        console.print(f"{state:<20} {o.target.name:<28} {o.pins:>4} pins {took}  {o.target.path}")
    fleet = fleet_of(args)  # the OS locks of children build on their root's, which may just have moved
    exact = dict(p.split("==", 1) for p in args.upgrade_package if "==" in p)  # NAME==VERSION: that version, in each lock pinning NAME
    want = {t.path: {n: v for n, v in exact.items() if n in fleet.os_locks[t.path].pins(*t.sections)}
            for t in oslock.os_targets(fleet) if t.path in fleet.os_locks}  # fmt: skip
    os_outcomes = oslock.lock(fleet, [n for n in args.names if n in families], cache=_apt_cache(run), upgrade=args.upgrade,
                              upgrade_packages=[p for p in args.upgrade_package if "==" not in p], want={k: v for k, v in want.items() if v})  # fmt: skip
    for o in os_outcomes:
        state = "locked" if o.changed else "resolved, unchanged" if o.resolved else "up to date"
        took = f"{o.seconds:6.1f}s" if o.resolved else " " * 7
        console.print(f"{state:<20} {o.target.family + ' (OS)':<28} {o.packages:>4} debs {took}  {o.target.path}")
        for move in o.moves:
            console.print(f"{'':<20} {move.line()}", highlight=False, markup=False)
    changed = sum(o.changed for o in outcomes) + sum(o.changed for o in os_outcomes)
    console.print(f"{changed} of {len(outcomes) + len(os_outcomes)} locks changed in {time.monotonic() - total:.2f}s ({args.engine}, apt)")
    return 0


def plan(args: argparse.Namespace) -> int:
    the_plan = plan_of(fleet_of(args), args)
    if args.json:
        print(json.dumps(the_plan.as_json(), indent=2))
        return 0
    table = Table(title=f"build plan ({len(the_plan.steps)} images, machines: {', '.join(the_plan.machines)})")
    for col in ("#", "image", "machine", "builds on", "identity"):
        table.add_column(col)
    for i, step in enumerate(the_plan.steps, 1):
        parent = the_plan.step(step.parent).repository if step.parent else (step.root.source if step.root else "")
        table.add_row(str(i), step.repository, step.machine or "any", parent, step.identity[:16])
    console.print(table)
    return 0


def build(args: argparse.Namespace) -> int:
    """Build, verify and push the selected images; publish release tags when every one succeeded."""
    from buildtool.cli.progress import Progress

    fleet = fleet_of(args)
    the_plan = plan_of(fleet, args, default_group="cpu" if args.families_only else None)
    if not the_plan.steps:
        console.print("nothing to build for this selection")
        return 0
    run_settings = settings_of(args, fleet)
    rows = ((s.key, s.repository + (f" ({s.machine})" if s.machine else "")) for s in the_plan.steps)
    with Progress(rows) as progress:
        run = pipeline.build(run_settings, fleet, the_plan, progress=progress, publish_tags=not args.no_publish, locked=args.locked)
    built = run.count("built")
    console.print(f"{len(run.results)} images in {run.seconds:.1f}s: {built} built, {run.count('cached')} unchanged (identity already in the registry)")
    console.print("nothing changed: nothing was built" if built == 0 else run.critical, highlight=False)
    if args.no_publish:
        console.print(f"pushed by identity only; release {run.tag} is the publish step's")
    else:
        console.print(f"published {run.tag}: {len(run.moves)} tag(s) written")
        show_sizes(run.sizes)
        step_summary(run.diff)
    for note in run.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if run.forwarded:
        paths = sorted({m.path for m in run.forwarded})
        console.print(f"forwarded {len(run.forwarded)} OS package(s) the archive replaced, in {', '.join(paths)} (commit them, or run "
                      f"`nox -s refresh`):", highlight=False)  # fmt: skip
        for move in run.forwarded:
            console.print(f"  {move.path}: {move.line()}", highlight=False, markup=False)
    return 0


def repro(args: argparse.Namespace) -> int:
    """Build the selection twice from scratch and compare every digest; name the first difference."""
    from buildtool import repro as reproducibility
    from buildtool.cli.progress import Progress

    fleet = fleet_of(args)
    the_plan = plan_of(fleet, args)
    run_settings = settings_of(args, fleet)
    rows = ((s.key, s.repository + (f" ({s.machine})" if s.machine else "")) for s in the_plan.steps)
    started = time.monotonic()
    with Progress(rows) as progress:
        comparisons = reproducibility.run_twice(run_settings, fleet, the_plan, progress=progress)
    table = Table(title=f"two builds from scratch ({time.monotonic() - started:.0f}s)")
    for col in ("image", "first build", "second build", "same"):
        table.add_column(col)
    for c in comparisons:
        table.add_row(c.repository, c.first[:19], c.second[:19], "yes" if c.same else "[red]NO[/]")
    console.print(table)
    differ = [c for c in comparisons if not c.same]
    if differ:
        details = "\n".join(f"  - {c.repository}: {c.difference}" for c in differ)
        raise BuildError(f"{len(differ)} of {len(comparisons)} images are not reproducible:\n{details}")
    console.print(f"all {len(comparisons)} images are reproducible: two builds from scratch gave the same digests")
    return 0


def publish(args: argparse.Namespace) -> int:
    """Release images the CI jobs pushed by identity; report on them (also when a job failed)."""
    fleet = fleet_of(args)
    the_plan = plan_of(fleet, args)
    try:
        run = pipeline.release(settings_of(args, fleet), fleet, the_plan, report_only=args.report_only)
    except BuildError as exc:
        if exc.run is not None:
            show_sizes(exc.run.sizes)
        raise
    console.print(f"published {run.tag}: {len(run.moves)} tag(s) written")
    for note in run.notes:  # the compose stacks stored beside the release, or why not
        console.print(f"note: {note}", markup=False, highlight=False)
    show_sizes(run.sizes)
    step_summary(run.diff)
    return 0


def show_sizes(measured: list) -> None:
    from buildtool.report import tables

    console.print(tables.table(measured))
    console.print(tables.largest_layers(measured), markup=False)
    for s in measured:
        for name, paths in s.cuda_duplicates.items():
            console.print(f"[red]{s.repository}: {name} is present {len(paths)} times:[/] {', '.join(paths)}")
    step_summary("## Image sizes\n\n" + tables.markdown(measured))


def bake(args: argparse.Namespace) -> int:
    """Write the plan as docker-bake.json (with materialised contexts) for `docker buildx bake`."""
    from buildtool import bake as baking
    from buildtool.adapters.bootstrap import bootstrap_rootfs
    from buildtool.execute.roots import rootfs

    fleet = fleet_of(args)
    the_plan = plan_of(fleet, args, default_group="cpu")
    run_settings = settings_of(args, fleet)
    out = out_dir(args, fleet, "bake", "bake --out")
    pipeline.prepare_state(run_settings)
    from buildtool.cli.progress import Progress

    with Progress((), live=False) as progress:  # bake builds every target: the OS locks of all of them are read, and forwarded
        fleet, the_plan, _ = pipeline.forward_locks(run_settings, fleet, the_plan, None, locked=False, progress=progress)
    path = baking.write(the_plan, run_settings, out, bootstrap=lambda step: rootfs(step, run_settings, bootstrap_rootfs))
    console.print(f"wrote {path} ({len(the_plan.steps)} targets); build with: docker buildx bake -f {path}")
    return 0


def bench(args: argparse.Namespace) -> int:
    """Measure the toolkit against `docker buildx bake` of the same targets; print and keep the table."""
    from buildtool import bench as benching

    fleet = fleet_of(args)
    run_settings = settings_of(args, fleet)
    report = benching.run_bench(run_settings, quick=args.quick, cuda=not args.without_cuda, say=lambda line: console.print(f"bench: {line}", highlight=False))
    table = Table(title=f"bench, {report.mode} ({report.images} images; one run, one machine)")
    for col in ("measurement", "toolkit", "baseline", "baseline value", "ratio (baseline / toolkit)", "goal"):
        table.add_column(col, justify="left" if col in ("measurement", "baseline", "goal") else "right")
    for r in report.rows:
        table.add_row(*(escape(cell) for cell in r.cells()))
    console.print(table)
    console.print(f"bake: {report.bake.buildx}; BuildKit {report.bake.buildkit}")
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"results: {run_settings.state_dir / 'reports' / 'bench.json'} and bench.md")
    return 0


def rollback(args: argparse.Namespace) -> int:
    from buildtool.publish.release import rollback as roll_back

    if not (args.services or args.family or args.group or args.all):
        # An empty selection would be the default plan: every CPU family moved back at once.
        raise UsageError("rollback moves only what it is told to: name services, or select families with --family NAME or "
                         "--group GROUP (--all: every service); --machine alone selects nothing. No tag was moved")  # fmt: skip
    fleet = fleet_of(args)
    the_plan = plan_of(fleet, args)
    run_settings = settings_of(args, fleet)
    run_settings.require_release("rollback")
    registry = pipeline.registry_client(run_settings)
    named = set(args.family)
    # The named images only: a service's image (per machine), a family's own image, not its ancestors.
    repos = [s.repository for s in the_plan.steps if s.kind == "service" or s.name in named or not (args.services or args.all or named)]
    for move in roll_back(registry, run_settings.org, repos, run_settings.force_image_tag):
        console.print(f"{move.repository}:{move.tag} -> {move.digest}")
    return 0


def workflow(args: argparse.Namespace) -> int:
    """Write the CI workflow from the plan, or (``--check``) fail when the committed one differs."""
    from buildtool.adapters.files import atomic_write, inside_repo
    from buildtool.ci import workflow as generated

    fleet = fleet_of(args)
    text = generated.render(fleet)
    path = fleet.root / generated.PATH
    current = path.read_text() if path.is_file() else ""
    if args.check:
        if current != text:
            raise UsageError(f"{generated.PATH} is not what the build plan generates; run `nox -s workflow` and commit it")
        console.print(f"{generated.PATH} matches the build plan")
        return 0
    if current != text:
        atomic_write(inside_repo(fleet.root, generated.PATH), text)
    console.print(f"wrote {generated.PATH} ({text.count(chr(10) + '  level-')} family levels)")
    return 0


def prune(args: argparse.Namespace) -> int:
    """Retention: registry tags beyond the last releases, old build cache, other orgs' local images."""
    fleet = fleet_of(args)
    for line in pipeline.prune(settings_of(args, fleet), fleet, dry_run=args.dry_run, local=not args.registry_only):
        console.print(line)
    return 0


def refresh(args: argparse.Namespace) -> int:
    """Move what the outside world moved since the locks were made; print and keep the summary."""
    from buildtool import refresh as refreshing

    fleet = fleet_of(args)
    run = settings_of(args, fleet)
    result = refreshing.refresh(run, fleet)
    path = Path(args.summary) if args.summary else run.state_dir / "reports" / "refresh.md"
    refreshing.write(result, path)
    console.print(result.markdown(), highlight=False, markup=False)
    step_summary(result.markdown())
    console.print(f"{len(result.changes)} package(s) moved, {len(result.rebuilt)} image(s) to rebuild; summary: {path}")
    return 0


def pull_request(args: argparse.Namespace) -> int:
    """Commit the changed locks to a branch, push it, and open or update its one pull request."""
    from buildtool.adapters.github import PullRequests
    from buildtool.ci.pull import propose

    fleet = fleet_of(args)
    env = {k: os.environ.get(k, "") for k in ("GITHUB_TOKEN", "GITHUB_REPOSITORY", "GITHUB_API_URL", "GITHUB_SERVER_URL")}
    missing = [k for k in ("GITHUB_TOKEN", "GITHUB_REPOSITORY") if not env[k]]
    if missing:
        raise UsageError(f"pull-request runs in the refresh workflow and needs {' and '.join(missing)} in its environment")
    body = Path(args.body_file).read_text(encoding="utf-8", errors="replace")
    api = PullRequests(env["GITHUB_API_URL"] or "https://api.github.com", env["GITHUB_REPOSITORY"], env["GITHUB_TOKEN"])
    done = propose(fleet.root, branch=args.branch, base=args.base, title=args.title, body=body, remote=args.remote,
                   server_url=env["GITHUB_SERVER_URL"] or "https://github.com", token=env["GITHUB_TOKEN"], api=api)  # fmt: skip
    if done.action == "none":
        console.print("the locks did not move: no pull request to open or update")
    else:
        console.print(f"{done.action} pull request #{done.number} ({done.url}) with {len(done.files)} lock file(s) on {args.branch}")
    return 0
