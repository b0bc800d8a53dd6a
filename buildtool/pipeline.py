"""A build run as one library call: check the locks, bring the engine up, execute the plan,
publish, measure.

The command line, the bench and the tests call :func:`build` with their own :class:`Settings`;
adapters (engine, registry, bootstrapper) can be passed in, and are made from the settings
otherwise. Nothing here prints: progress goes to the ``progress`` object, the outcome comes back
as a :class:`Run`, and a failure is raised as a :class:`BuildError` after the run's record was
written.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from buildtool.adapters import setup
from buildtool.adapters.files import adopt, atomic_write, owned_dir
from buildtool.adapters.protocols import Engine, Registry
from buildtool.adapters.registry import Registry as RegistryClient
from buildtool.adapters.registry import is_loopback
from buildtool.core.errors import BuildError, LockError
from buildtool.execute.executor import Bootstrapper, Executor, Progress, Result
from buildtool.execute.security import Scanner, stale_entries
from buildtool.execute.security import prepare as security_prepare
from buildtool.locking.lock import verify
from buildtool.locking.targets import targets
from buildtool.model.allowlist import FILE
from buildtool.model.types import Fleet
from buildtool.plan.plan import Plan
from buildtool.publish.release import Move, publish, release_tag
from buildtool.report import sizes, tables
from buildtool.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Run:
    tag: str
    seconds: float
    results: list[Result]
    moves: list[Move] = field(default_factory=list)
    sizes: list[sizes.ImageSize] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the gate's: database, stale or expiring allowlist entries

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


def bring_up(settings: Settings) -> RegistryClient:
    """Engine and registry up (installed and started here when missing); the run's registry client."""
    setup.ensure_engine(state_dir=settings.state_dir)
    if is_loopback(settings.registry):
        setup.ensure_registry(settings.registry, storage_dir=settings.registry_storage, state_dir=settings.state_dir)
    return RegistryClient(settings.registry, token=settings.registry_token)


def build(
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
) -> Run:
    """Build, verify and push the plan's images; publish release tags when every one succeeded.

    Raises LockError before anything starts when a lock of the plan is not what its inputs
    make, and BuildError (no tag moved) when an image failed or was blocked.
    """
    problems = verify(fleet, lock_names(fleet, plan))
    if problems:
        raise LockError("locks of the selected images do not match their inputs; nothing was built:\n" + "\n".join(f"  - {p}" for p in problems))
    prepare_state(settings)
    if registry is None:
        registry = bring_up(settings)
    if engine is None:
        from buildtool.adapters.engine import Docker

        engine = Docker()
    if bootstrap is None:
        from buildtool.adapters.bootstrap import bootstrap_rootfs as bootstrap
    security, notes = security_prepare(settings, fleet, plan, scanner=scanner) if settings.scan else (None, [])
    tag = tag or release_tag(settings.root, settings.force_image_tag)
    started = time.monotonic()
    executor = Executor(
        plan, settings=settings, engine=engine, registry=registry, progress=progress, bootstrap=bootstrap, revision=tag, security=security
    )
    results = executor.run()
    verdicts = [r.verdict for r in results if r.verdict]
    if security:
        images = [(s.repository, s.lineage) for s in plan.steps]
        stale = stale_entries(security.allowlist, verdicts, images)
        notes += [f"{FILE}: {e.where}: {e.id} ({e.target}) matched no finding of this run's images: stale, remove it" for e in stale]
        notes += [f"WARN {v.repository}: {v.summary()}" for v in verdicts if v.status == "WARN"]
    seconds = time.monotonic() - started
    record = {"tag": tag, "seconds": seconds, "notes": notes, "results": [asdict(r) for r in results]}
    atomic_write(settings.state_dir / "reports" / "last-run.json", json.dumps(record, indent=2))
    failed = [r for r in results if r.status in ("failed", "blocked")]
    if failed:
        details = "\n".join(f"  - {r.repository}: {r.status}: {r.message}" for r in failed)
        raise BuildError(f"{len(failed)} of {len(results)} images did not build or pass their checks; no tag was moved:\n{details}")
    moves = publish(registry, settings.org, {s.repository: s.id_tag for s in plan.steps}, tag)
    measured = sizes.measure(plan, {r.key: r for r in results}, registry, settings.org, settings.state_dir)
    tables.write(measured, settings.state_dir)
    return Run(tag=tag, seconds=seconds, results=results, moves=moves, sizes=measured, notes=notes)
