"""A build run as one library call: check the locks, bring the engine up, execute the plan,
publish, measure.

The command line, the bench and the tests call :func:`build` with their own :class:`Settings`;
adapters (engine, registry, bootstrapper) can be passed in, and are made from the settings
otherwise. Nothing here prints: progress goes to the ``progress`` object, the outcome comes back
as a :class:`Run`, and a failure is raised as a :class:`BuildError` after the run's record was
written.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from buildtool.adapters import setup
from buildtool.adapters.files import adopt, atomic_write, held, owned_dir
from buildtool.adapters.protocols import Engine, Registry
from buildtool.adapters.registry import Registry as RegistryClient
from buildtool.adapters.registry import is_loopback
from buildtool.core import stopping
from buildtool.core.errors import BuildError, LockError
from buildtool.deploy import stacks
from buildtool.execute import space
from buildtool.execute.executor import Bootstrapper, Executor, Progress, Result
from buildtool.execute.gate import judge
from buildtool.execute.lookup import to_build
from buildtool.execute.security import (
    DB_ANNOTATION,
    NO_DB,
    REPORT_TYPE,
    Scanner,
    deciding_reports,
    needs_database,
    registry_sbom,
    registry_sbom_data,
    stale_entries,
)
from buildtool.execute.security import prepare as security_prepare
from buildtool.locking import apt, aptsource, oslock
from buildtool.locking.lock import verify
from buildtool.locking.targets import targets
from buildtool.model.allowlist import FILE
from buildtool.model.load import load_fleet
from buildtool.model.oslocks import os_lock_path
from buildtool.model.types import Fleet
from buildtool.plan.plan import Plan, make_plan, replan
from buildtool.publish import record
from buildtool.publish.release import Move, Revision, labels, publish, release_tag, revision
from buildtool.report import history, page, sizes, tables, timeline
from buildtool.settings import Settings

log = logging.getLogger("buildtool.pipeline")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Run:
    tag: str
    seconds: float
    results: list[Result]
    moves: list[Move] = field(default_factory=list)
    sizes: list[sizes.ImageSize] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the gate's: database, stale or expiring allowlist entries
    forwarded: list[oslock.Move] = field(default_factory=list)  # OS lock versions moved because the archive replaced them
    critical: str = ""  # the chain of images that set the run's length, with their times
    diff: str = ""  # what changed since the release this one replaced, as Markdown (a publish that moved tags)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)


def lock_names(fleet: Fleet, plan: Plan) -> list[str]:
    """The lock targets the plan's images are made from (each image's lock and its ancestors')."""
    names = {f.name for s in plan.steps for f in fleet.lineage(s.name if s.kind == "family" else fleet.services[s.name].family)}
    names |= {s.name for s in plan.steps if s.kind == "service"}
    return [t.name for t in targets(fleet) if t.name in names or t.name.removesuffix(".build") in names]


def prepare_state(settings: Settings) -> None:
    """The state dir must be the toolkit's (the repository's own build/ is adopted)."""
    adopt(settings.root / "build")
    owned_dir(settings.state_dir, repo=settings.root, what="state dir (FLEET_STATE_DIR)")
    adopt(settings.state_dir)  # a state dir of the old layout: its folders get their own markers, once


def one_at_a_time(fn: Callable[..., T]) -> Callable[..., T]:
    """Runs on one state dir take turns: a second waits (and says for whom) until the first ends."""

    @functools.wraps(fn)
    def wrapper(settings: Settings, *args: object, **kwargs: object) -> T:
        prepare_state(settings)
        say = lambda who: log.warning("waiting: %s is using the state dir %s (give this run its own FLEET_STATE_DIR not to wait)", who, settings.state_dir)  # noqa: E731
        with held(settings.state_dir / "run.lock", waiting=say):
            return fn(settings, *args, **kwargs)

    return wrapper


def bring_up(settings: Settings, *, engine: bool = True) -> RegistryClient:
    """Engine (unless not needed) and registry up, installed and started here when missing; the
    run's registry client."""
    if engine:
        setup.ensure_engine(state_dir=settings.state_dir)
    if is_loopback(settings.registry):
        setup.ensure_registry(settings.registry, storage_dir=settings.registry_storage, state_dir=settings.state_dir)
    return registry_client(settings)


def registry_client(settings: Settings) -> RegistryClient:
    """The run's registry client, with the run's credentials: every command builds it here."""
    return RegistryClient(settings.registry, token=settings.registry_token, user=settings.registry_user)


def apt_cache(settings: Settings) -> Path:
    """The state dir's apt index cache, where OS locks are resolved and checked."""
    return owned_dir(settings.state_dir / "apt", repo=settings.root, what="apt index cache")


def forward_locks(settings: Settings, fleet: Fleet, plan: Plan, registry: Registry | None, *, locked: bool, progress: Progress,
                  resolver: oslock.Apt = apt) -> tuple[Fleet, Plan, list[oslock.Move]]:  # fmt: skip
    """The OS locks the plan's images install from, checked against the archive's indexes (read
    once per run) before anything is built; an image already in ``registry`` installs nothing
    and is not checked (no registry: every image is built, as by bake). Versions the archive no
    longer serves (Debian and Ubuntu replace security updates in place) are forwarded: each moves
    to what the same suite serves now, the lock is rewritten, and the plan made again.
    ``locked``: refused instead (LockError), nothing built. Returns the fleet and plan to build,
    and every move."""
    cache = apt_cache(settings)
    aptsource.new_run()
    moves: list[oslock.Move] = []
    for _ in range(len(fleet.families) + 1):  # a moved root is rebuilt: its own sections are read next
        building = plan.steps if registry is None else to_build(plan, settings, registry)
        wanted = {os_lock_path(s.name): fleet.os_lock_sections(s.name) for s in building if s.kind == "family"}
        gone = oslock.unserved(fleet, {path: sections for path, sections in wanted.items() if sections}, cache=cache, resolver=resolver)
        if not gone:
            break
        if locked:
            lines = "".join(f"\n  - {line}" for line in oslock.describe(fleet, gone))
            names = sorted({name for pairs in gone.values() for name, _ in pairs})
            raise LockError(f"--locked: the archive no longer serves versions the OS locks of these images name; nothing was built:{lines}\n"
                            f"Move them with `{oslock.REFRESH}` (or `nox -s lock -- {' '.join(f'--upgrade-package {n}' for n in names)}`), "
                            "or build without --locked, which forwards them")  # fmt: skip
        step = oslock.forward(fleet, gone, cache=cache, resolver=resolver)
        for move in step:
            progress.note(f"forwarded {move.path}: {move.line()}")
        moves += step
        fleet = load_fleet(fleet.root)
        plan = replan(fleet, plan)
    return fleet, plan, moves


def build(settings: Settings, fleet: Fleet, plan: Plan, **kwargs: object) -> Run:
    """Build, verify, scan and push the plan's images by identity; then (``publish_tags``) move the
    release tags when every one succeeded, and measure them.

    Raises LockError before anything starts (the state dir untouched) when a lock of the plan is
    not what its inputs make, SecurityError when the gate cannot run as configured, BuildError
    (no tag moved) when an image failed, failed the gate, or was blocked, and Interrupted (no tag
    moved) when a stop signal came. See :func:`_build` for the keyword arguments.
    """
    if kwargs.get("publish_tags", True):
        settings.require_release("a build that moves the release tags (--no-publish builds and pushes by identity only)")
    problems = verify(fleet, lock_names(fleet, plan))
    problems += oslock.verify(fleet, {f.name for s in plan.steps for f in fleet.lineage(s.lineage[-1])})
    if problems:
        raise LockError("locks of the selected images do not match their inputs; nothing was built:\n" + "\n".join(f"  - {p}" for p in problems))
    return _build(settings, fleet, plan, **kwargs)


@one_at_a_time
def _build(
    settings: Settings,
    fleet: Fleet,
    plan: Plan,
    *,
    progress: Progress,
    engine: Engine | None = None,
    registry: Registry | None = None,
    bootstrap: Bootstrapper | None = None,
    scanner: Scanner | None = None,
    tag: str | None = None,
    publish_tags: bool = True,
    commit: Revision | None = None,
    locked: bool = False,
    resolver: oslock.Apt | None = None,
) -> Run:
    """:func:`build` once its locks are checked, with the state dir held: adapters default to the
    settings' (the engine only when a step needs it), ``tag`` to the commit's release tag;
    ``locked``: refuse OS locks the archive no longer serves rather than forward them."""
    if registry is None:
        registry = bring_up(settings, engine=False)
    fleet, plan, forwarded = forward_locks(settings, fleet, plan, registry, locked=locked, progress=progress, resolver=resolver or apt)
    if engine is None:
        engine = space.EngineOnDemand(settings)  # type: ignore[assignment]
    if bootstrap is None:
        from buildtool.adapters.bootstrap import bootstrap_rootfs as bootstrap
    security, notes = security_prepare(settings, fleet, plan, scanner=scanner) if settings.scan else (None, [])
    rev = commit or revision(settings.root)
    tag = tag or release_tag(rev, (s.identity for s in plan.steps))
    started = time.monotonic()
    executor = Executor(
        plan,
        settings=settings,
        engine=engine,
        registry=registry,
        progress=progress,
        bootstrap=bootstrap,
        labels=labels(rev),
        security=security,
    )
    results = executor.run()
    if isinstance(engine, space.EngineOnDemand) and engine.refused is not None:
        raise engine.refused  # no engine, or no room for one: every step that needed it failed for that one reason
    verdicts = [r.verdict for r in results if r.verdict]
    if security:
        images = [(s.repository, s.lineage) for s in plan.steps]
        stale = stale_entries(security.allowlist, verdicts, images)
        notes += [f"{FILE}: {e.where}: {e.id} ({e.target}) matched no finding of this run's images: stale, remove it" for e in stale]
        notes += [f"WARN {v.repository}: {v.summary()}" for v in verdicts if v.status == "WARN"]
    notes += [w for r in results for w in r.warnings]
    seconds = time.monotonic() - started
    chain = timeline.critical_path(results, {s.key: s.parent for s in plan.steps})
    record = {"tag": tag, "seconds": seconds, "notes": notes, "forwarded": [asdict(m) for m in forwarded], "critical_path": timeline.as_json(chain),
              "critical": timeline.describe(chain), "results": [asdict(r) for r in results]}  # fmt: skip
    atomic_write(settings.state_dir / "reports" / "last-run.json", json.dumps(record, indent=2))
    critical = str(record["critical"])
    failed = [r for r in results if r.status in ("failed", "blocked")]
    if failed:
        details = "\n".join(f"  - {r.repository}: {r.status}: {r.message}" for r in failed)
        raise BuildError(f"{len(failed)} of {len(results)} images did not build or pass their checks; no tag was moved:\n{details}")
    if not publish_tags:
        return Run(tag=tag, seconds=seconds, results=results, notes=notes, forwarded=forwarded, critical=critical)
    moves, stored, previous = publish_release(settings, fleet, registry, plan, tag)
    notes += stored
    measured = sizes.measure(plan, {r.key: r for r in results}, registry, settings.org, settings.state_dir)
    recorded, changed = store_record(settings, fleet, plan, results, registry, moves, tag, previous)
    tables.write(measured, settings.state_dir, critical)
    return Run(tag=tag, seconds=seconds, results=results, moves=moves, sizes=measured, notes=notes + recorded, forwarded=forwarded, critical=critical,
               diff=changed)  # fmt: skip


def publish_release(settings: Settings, fleet: Fleet, registry: Registry, plan: Plan, tag: str) -> tuple[list[Move], list[str], str]:
    """Move the release's tags (a stop signal waits: every tag moves, or none) and store its compose
    stacks beside it. Returns the moves, notes, and the release that was current before."""
    with stopping.deferred():
        before = record.state(registry, settings.org)
        moves = publish(registry, settings.org, {s.repository: s.id_tag for s in plan.steps}, tag)
        notes = store_stacks(settings, fleet, registry, moves, tag)
    return moves, notes, before.release if before else ""


def store_stacks(settings: Settings, fleet: Fleet, registry: Registry, moves: list[Move], tag: str) -> list[str]:
    """After a publish that moved tags: the release's compose stacks, beside it in the registry."""
    return stacks.store(registry, fleet, address=settings.registry, org=settings.org, release=tag) if moves else []


def store_record(settings: Settings, fleet: Fleet, plan: Plan, results: list[Result], registry: Registry, moves: list[Move], tag: str,
                 previous: str) -> tuple[list[str], str]:  # fmt: skip
    """After a publish that moved tags, once its images are measured: the release record that
    ``report --diff`` reads (:mod:`buildtool.report.history`), and the release's HTML page
    (reports/index.html); notes, and what changed since ``previous`` as Markdown."""
    if not moves:
        return [], ""
    images = history.collect(plan, {r.key: r for r in results}, registry, settings.org, settings.state_dir, sboms=settings.scan)
    notes, changed = history.record_release(registry, settings.org, tag, previous, images, settings.state_dir / "reports")
    page.write(registry, settings.org, tag, settings.state_dir / "reports" / "index.html", page.expiries(fleet.allowlist), keep=settings.keep_releases)
    return notes, changed


@one_at_a_time
def release(
    settings: Settings,
    fleet: Fleet,
    plan: Plan,
    *,
    registry: Registry | None = None,
    tag: str | None = None,
    report_only: bool = False,
    commit: Revision | None = None,
) -> Run:
    """Publish images that earlier jobs built, verified, scanned and pushed by identity (CI's last
    job), and report on them; ``report_only``: a job failed, so report what is there and move nothing.

    Every image must be in the registry by its identity, with a passing (or warned) gate verdict
    from the scan report kept beside it; otherwise no tag moves.
    """
    if not report_only:
        settings.require_release("publish")
    prepare_state(settings)
    if registry is None:
        registry = bring_up(settings, engine=False)
    tag = tag or release_tag(commit or revision(settings.root), (s.identity for s in plan.steps))
    results = [summarise(settings, fleet, registry, step) for step in plan.steps]
    for step, result in zip(plan.steps, results, strict=True):  # the SBOMs, for the run's artifacts
        found = registry_sbom_data(registry, settings.ref(step.repository).path, result.digest) if result.digest else None
        if found:
            atomic_write(settings.state_dir / "reports" / "sboms" / f"{step.repository}.cdx.json", found[1])
    missing = [r for r in results if r.status != "cached"]
    failed = [r for r in results if r.verdict is not None and r.verdict.failed]
    moves: list[Move] = []
    notes: list[str] = []
    previous = ""
    if not (report_only or missing or failed):
        moves, notes, previous = publish_release(settings, fleet, registry, plan, tag)
    measured = sizes.measure(plan, {r.key: r for r in results}, registry, settings.org, settings.state_dir)
    recorded, changed = store_record(settings, fleet, plan, results, registry, moves, tag, previous)
    tables.write(measured, settings.state_dir)
    run = Run(tag=tag, seconds=0.0, results=results, moves=moves, sizes=measured, notes=notes + recorded, diff=changed)
    lines = "".join(f"\n  - {r.repository}: {r.message}" for r in missing + failed)
    if report_only:
        raise BuildError(f"a job of this run failed: what it pushed is reported, and no tag was moved{lines}", run=run)
    if missing or failed:
        raise BuildError(f"{len(missing) + len(failed)} of {len(results)} images cannot be released; no tag was moved:{lines}", run=run)
    return run


def summarise(settings: Settings, fleet: Fleet, registry: Registry, step) -> Result:
    """An image as the registry holds it: present by identity, its gate verdict and its SBOM. The
    verdict is the newest scan report's that fits the run's policy (see
    :func:`~buildtool.execute.security.deciding_reports`); with none, the image is "unscanned" and
    cannot be released."""
    repo = settings.ref(step.repository).path
    digest = registry.digest(repo, step.id_tag)
    if not digest:
        return Result(key=step.key, repository=step.repository, status="missing", message=f"{repo}:{step.id_tag} is not in the registry")
    if not settings.scan:  # the library's switch for tests of other things: no gate, no verdict
        return Result(key=step.key, repository=step.repository, status="cached", digest=digest)
    lineage = step.lineage
    policy = "warn" if settings.vuln_policy == "warn" or any(fleet.families[f].vuln_policy == "warn" for f in lineage) else "enforce"
    needs_db = needs_database(settings)
    verdicts = []
    for ref in deciding_reports(registry.referrers(repo, digest, REPORT_TYPE), needs_db=needs_db):
        db = (ref.get("annotations") or {}).get(DB_ANNOTATION, NO_DB)
        manifest = registry.manifest(repo, ref["digest"])
        data = registry.blob(repo, manifest.data["layers"][0]["digest"]) if manifest and manifest.data.get("layers") else None
        if not data:
            verdicts = []  # a deciding report that cannot be read decides nothing: not scanned
            break
        verdicts.append(judge(json.loads(data), repository=step.repository, digest=digest, lineage=lineage, allowlist=fleet.allowlist,
                              policy=policy, db_version="" if db == NO_DB else db, today=settings.today))  # fmt: skip
    sbom = registry_sbom(registry, repo, digest)
    if not verdicts:
        wanted = "for secrets and, with an advisory database, vulnerabilities" if needs_db else "for secrets"
        return Result(key=step.key, repository=step.repository, status="unscanned", digest=digest, sbom=sbom,
                      message=f"{repo}@{digest} has no scan report {wanted}: not scanned, so not released (run its build job again)")  # fmt: skip
    verdict = next((v for v in verdicts if v.failed), verdicts[0])
    message = verdict.summary() if verdict.failed else ""
    return Result(key=step.key, repository=step.repository, status="cached", digest=digest, verdict=verdict, sbom=sbom, message=message)


@one_at_a_time
def prune(settings: Settings, fleet: Fleet, *, registry: Registry | None = None, dry_run: bool = False, local: bool = True) -> list[str]:
    """Apply retention (blueprint R3) to the registry org and, with ``local``, to this host: build
    cache beyond its size, local images of other orgs, build contexts and scan work folders.
    Returns what was done, a line each; nothing latest or prev needs is touched."""
    from buildtool.adapters.files import remove
    from buildtool.adapters.github import ContainerPackages
    from buildtool.publish.prune import GHCR, PackageDeleter, prune_cache, prune_repository

    if not dry_run:
        settings.require_release("prune")
    prepare_state(settings)
    if registry is None:
        registry = bring_up(settings, engine=local)
    plan = make_plan(fleet, all_families=True, all_services=True)
    pinned = [settings.force_image_tag] if settings.force_image_tag else []
    delete = None  # the registry API's delete
    if settings.registry == GHCR:  # which answers it with HTTP 405: GitHub's Packages API deletes there
        delete = PackageDeleter(ContainerPackages(settings.github_api_url, settings.org.split("/")[0], settings.registry_token or ""))
    lines = []
    for step in plan.steps:
        repo = settings.ref(step.repository).path
        kept = prune_repository(registry, repo, releases=settings.keep_releases, pinned=pinned, current_ids=[step.id_tag], dry_run=dry_run,
                                delete=delete)  # fmt: skip
        if kept.deleted:
            lines.append(f"{repo}: {len(kept.deleted)} image(s) {'to delete' if dry_run else 'deleted'}; kept {', '.join(kept.kept_tags)}")
    cache = prune_cache(registry, settings.org, {s.repository for s in plan.steps}, dry_run=dry_run, delete=delete)
    if cache.deleted:
        lines.append(f"{cache.repository}: {len(cache.deleted)} stale cache manifest(s) {'to delete' if dry_run else 'deleted'}")
    if not dry_run:
        lines.append(setup.collect_garbage(settings.registry))
    if local and not dry_run:
        from buildtool.adapters.engine import Docker

        current = {str(settings.ref(repo, s.id_tag)) for s in plan.steps for repo in (s.repository, s.builder_repository) if repo}
        lines += space.reclaim_local(settings, Docker(), keep=settings.build_cache_keep, current=current)
        for folder in ("contexts", "scan"):
            if (settings.state_dir / folder).exists():
                remove(settings.state_dir / folder)
        lines.append(f"state dir: build contexts and scan work folders removed from {settings.state_dir}")
    return lines
