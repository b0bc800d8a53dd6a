"""The stages one image passes through, in the order the executor walks them.

build (and load) → checks → health → scan → parent → push → sbom. Each is a method of
:class:`Stages` named in :data:`STAGES`; one more step of every image (signing, say) is one more
method and one more name. A stage fills in the image's :class:`Work` and returns the seconds of
any part it timed itself (the build: the load that followed it); the executor times the rest.
Time spent waiting for a build or check slot is the image's ``queued`` time, apart from its stages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from buildtool.adapters.bootstrap import relock_hint, unserved
from buildtool.adapters.engine import IDENTITY_LABEL
from buildtool.adapters.files import owned_dir, write_context
from buildtool.adapters.protocols import Built, Engine, Registry
from buildtool.core import stopping
from buildtool.core.errors import BuildError, LockError, VerifyError
from buildtool.execute.gate import Verdict
from buildtool.execute.roots import Bootstrapper, rootfs
from buildtool.execute.security import Security, registry_sbom
from buildtool.execute.structure import structure_checks
from buildtool.plan.plan import Plan, Step
from buildtool.settings import Settings

APP_USER = "10001:10001"
STAGES = ("build", "checks", "health", "scan", "parent", "push", "sbom")
log = logging.getLogger("buildtool.execute")


class GateFailure(VerifyError):
    """An image failed the supply-chain gate; carries the verdict for the report."""

    def __init__(self, message: str, verdict: Verdict) -> None:
        super().__init__(message)
        self.verdict = verdict


class Blocked(BuildError):
    """The image's parent failed after this image was built on it: nothing of it is pushed."""


class Progress(Protocol):
    """Where a run reports each step's status, and what it did besides (the command line shows it)."""

    def update(self, key: str, status: str, detail: str = "") -> None: ...

    def note(self, text: str) -> None: ...


@dataclass
class Work:
    """One image's work in a run, filled in as its stages pass."""

    step: Step
    ref: str  # REGISTRY/ORG/NAME:id-... as built, checked and pushed
    builder_ref: str = ""  # root steps: their builder root's
    built: Built | None = None
    builder: str = ""  # root steps: their builder root's digest
    digest: str = ""  # as the registry shows it once pushed
    scanned: tuple[dict, bytes] | None = None  # the scan report and the SBOM, until they are attached
    compressed: int = 0  # bytes of compressed layers
    warnings: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    queued: float = 0.0  # seconds spent waiting for a build or check slot, counted apart from the stages
    health: Future[None] | None = None  # services: the health check, started beside the checks


@dataclass
class Hooks:
    """What the stages need from the scheduler: the references an image builds on (its parent's and
    its builder root's image), a word when an image is in the engine (its children may start), and
    a wait for the parent's verdict before a push."""

    inputs: Callable[[str], tuple[str, str]]
    built: Callable[[Step, Work], None]
    parent_verdict: Callable[[Step], None]
    stopped: Callable[[], bool] = stopping.stopping  # the run was stopped: start nothing more


class Stages:
    def __init__(self, plan: Plan, *, settings: Settings, engine: Engine, registry: Registry, progress: Progress, hooks: Hooks,
                 bootstrap: Bootstrapper | None, labels: Mapping[str, str], security: Security | None) -> None:  # fmt: skip
        self.plan, self.settings, self.engine, self.registry, self.progress = plan, settings, engine, registry, progress
        self.hooks, self.bootstrap, self.labels, self.security = hooks, bootstrap, dict(labels), security
        self.verdicts: dict[str, Verdict] = {}
        self.sboms: dict[str, dict[str, object]] = {}
        jobs = max(1, settings.jobs)
        self._builds = threading.BoundedSemaphore(jobs)  # as many builds as BuildKit gets cores
        self._checks = threading.BoundedSemaphore(jobs)  # containers and scans beside them

    # -- an image already in the registry ----------------------------------------------------

    def cached(self, step: Step, digest: str) -> tuple[int, tuple[str, ...]]:
        """An image found by identity: its size against its budget, and its gate verdict."""
        repo = self.settings.ref(step.repository).path
        compressed = sum(self.registry.layer_sizes(repo, digest))
        warnings = self._budget(step, compressed)
        if self.security:
            self._gate_cached(step, repo, digest)
        return compressed, warnings

    # -- the stages of an image built in this run --------------------------------------------

    def build(self, work: Work) -> dict[str, float]:
        """Build the image (a root: its builder root and runtime root at once) and load it."""
        step, s = work.step, self.settings
        self.engine.ready()  # the engine up, with room on its disks, before a root is bootstrapped or a context written
        context = self._context(step)
        args = {"SOURCE_DATE_EPOCH": str(s.source_date_epoch)}
        if step.parent:
            args["FAMILY_IMAGE" if step.kind == "service" else "PARENT_IMAGE"] = self.hooks.inputs(step.parent)[0]
        if step.root is None and step.builder:
            args["BUILDER_IMAGE"] = self.hooks.inputs(step.builder)[1]
        logs = s.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        common = dict(context=context, build_args=args, secrets=s.secrets(), cache_mode=s.cache_mode, labels={IDENTITY_LABEL: step.identity, **self.labels},
                      cache_ref=str(s.cache_ref(step.repository)) if s.cache else None)  # fmt: skip
        # Targets made of bootstrap tarballs only carry clamped file times already: rewriting them
        # would decompress and recompress the same bytes.
        clamped = step.rendered.clamped
        self.progress.update(step.key, "building")
        with self._slot(self._builds, work):
            self._go(step)
            try:
                if step.root is None:
                    work.built = self.engine.build(tag=work.ref, log=logs / f"{step.repository}.log", rewrite_timestamps="runtime" not in clamped, **common)
                else:
                    work.builder_ref = str(s.ref(step.builder_repository, step.id_tag))
                    with ThreadPoolExecutor(max_workers=2) as both:
                        builder = both.submit(self.engine.build, tag=work.builder_ref, target="builder-root", log=logs / f"{step.builder_repository}.log",
                                              rewrite_timestamps="builder-root" not in clamped, **common)  # fmt: skip
                        runtime = both.submit(self.engine.build, tag=work.ref, log=logs / f"{step.repository}.log",
                                              rewrite_timestamps="runtime" not in clamped, **common)  # fmt: skip
                        work.built, work.builder = runtime.result(), builder.result().digest
            except BuildError as exc:
                raise self._explain(step, exc) from exc
        work.compressed = work.built.compressed
        work.warnings = self._budget(step, work.compressed)
        self.hooks.built(step, work)
        return {"load": work.built.load_seconds}

    def checks(self, work: Work) -> None:
        """Before anything is pushed: the non-root user, the structure checks and the smoke checks of
        the whole lineage. A service's health container starts first and comes up while they run."""
        step, ref = work.step, work.ref
        self.progress.update(step.key, "verifying")
        with self._slot(self._checks, work):
            self._go(step)
            if step.kind == "service":
                work.health = self._start_health(work)
            try:
                user = self.engine.image_user(ref)
                if user != APP_USER:
                    raise VerifyError(f"{step.repository}: runs as {user or 'root'!r}, must be {APP_USER}")
                failures = self.engine.run_checks(ref, [*structure_checks(step.runtime_tools), *((c.name, c.run) for c in step.smoke if not c.gpu)])
                gpu_checks = [(c.name, c.run) for c in step.smoke if c.gpu]
                if gpu_checks and self.engine.gpus_available(ref):
                    failures += self.engine.run_checks(ref, gpu_checks, gpus=True)
                elif gpu_checks:
                    log.info("%s: no GPU on this engine, skipped: %s", step.repository, ", ".join(name for name, _ in gpu_checks))
                if failures:
                    details = "\n".join(f"  smoke check {name!r} failed: {output}" for name, output in failures)
                    raise VerifyError(f"{step.repository}: {len(failures)} of {len(step.smoke)} smoke checks failed:\n{details}")
            except BaseException:
                if work.health is not None:
                    self._end_health(work)
                raise

    def health(self, work: Work) -> None:
        """A service answers its health check (GET /health: {"status": "ok"}) within the run's
        health timeout. It was started with the checks; this stage waits for what is left of it."""
        if work.health is not None:
            with self._slot(self._checks, work):
                work.health.result()

    def scan(self, work: Work) -> None:
        """Secrets and vulnerabilities of the built image, and its SBOM, judged before it is pushed."""
        if self.security is None:
            return
        step = work.step
        self.progress.update(step.key, "scanning")
        with self._slot(self._checks, work):
            self._go(step)
            folder = self._work(step)
            archive = self.engine.save(work.ref, folder / "image.tar")
            try:
                report = self.security.scan(archive, folder)
                sbom = self.security.scanner.sbom(archive, folder / "sbom.cdx.json")
            finally:
                archive.unlink(missing_ok=True)
        self._decide(step, report, self.engine.image_digest(work.ref))
        work.scanned = report, sbom

    def parent(self, work: Work) -> None:
        """Wait for the parent's verdict: an image is pushed only on a parent that passed and is pushed."""
        if work.step.parent:
            self.progress.update(work.step.key, "waiting")
            self.hooks.parent_verdict(work.step)

    def push(self, work: Work) -> None:
        """Push by identity (a root: its builder root first); the registry must show the digest that was built and checked."""
        step, s = work.step, self.settings
        self._go(step)
        self.progress.update(step.key, "pushing")
        assert work.built is not None
        pairs = [(work.builder_ref, step.builder_repository, work.builder)] if work.builder_ref else []
        for ref, repository, digest in [*pairs, (work.ref, step.repository, work.built.digest)]:
            self.engine.push(ref)
            shown = self.registry.digest(s.ref(repository).path, step.id_tag, fresh=True)
            if not shown:
                raise BuildError(f"{ref} was pushed but the registry does not show it")
            if shown != digest:
                raise BuildError(f"{ref} was pushed as {shown}, not as the {digest} that was built and checked")
        work.digest = work.built.digest

    def sbom(self, work: Work) -> None:
        """Attach the SBOM and the scan report to the pushed image (OCI referrers) and keep them for the next run."""
        if self.security is None or work.scanned is None:
            return
        step, repo = work.step, self.settings.ref(work.step.repository).path
        report, sbom = work.scanned
        manifest = self.registry.manifest(repo, work.digest)
        assert manifest is not None
        self.sboms[step.key] = self.security.attach_sbom(self.registry, repo, manifest, sbom)
        self.security.attach_report(self.registry, repo, manifest, report)
        self.security.keep(work.digest, report=report, sbom=self.sboms[step.key])

    # -- helpers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _slot(self, slots: threading.BoundedSemaphore, work: Work) -> Iterator[None]:
        """Hold one of ``slots`` for the work inside. The wait for it is the image's queue time,
        not its stage's: a profile then tells a slow build from one that waited for a turn."""
        began = time.monotonic()
        with slots:
            work.queued += time.monotonic() - began
            yield

    def _start_health(self, work: Work) -> Future[None]:
        """Start the service's container and wait for its HEALTHCHECK in a thread of its own. The
        wait ends when the container is healthy, unhealthy, past the timeout or removed."""
        done: Future[None] = Future()
        name = f"fleet-verify-{work.step.repository}-{os.getpid()}"

        def waiting() -> None:
            try:
                self.engine.wait_healthy(work.ref, name=name, timeout=self.settings.health_timeout)
                done.set_result(None)
            except BaseException as exc:  # handed to the health stage, which raises it
                done.set_exception(exc)

        threading.Thread(target=waiting, name=name, daemon=True).start()
        return done

    def _end_health(self, work: Work) -> None:
        """The checks failed: remove the health container until its wait has ended. The thread may
        not have started the container yet, so removal repeats (bounded by the health timeout)."""
        assert work.health is not None
        deadline = time.monotonic() + self.settings.health_timeout
        while time.monotonic() < deadline:
            self.engine.remove_containers(work.ref)
            if wait([work.health], timeout=1).done:
                return

    def _go(self, step: Step) -> None:
        """Before each piece of work that starts processes: nothing new once the run was stopped."""
        if self.hooks.stopped():
            raise BuildError(f"{step.repository}: cancelled (the run was stopped)")

    def _budget(self, step: Step, compressed: int) -> tuple[str, ...]:
        """Fail the step when the image is over its budget, or (budget_policy = "warn") say so."""
        problem = step.budget_problem(compressed)
        if problem and step.budget_policy == "warn":
            return (f"WARN {problem} (budget_policy = \"warn\")",)
        if problem:
            raise VerifyError(problem)
        return ()

    def _explain(self, step: Step, exc: BuildError) -> Exception:
        """A build error in terms of the fleet: a root image that cannot be pulled, an OS package the archive dropped."""
        if step.root is not None and step.root.source == "image" and step.root.image in exc.message:
            return BuildError(
                f"{exc.message}\n{step.name}: its root image {step.root.image!r} could not be pulled. Point [root] image in "
                f"families/{step.name}.toml at a registry that serves it (e.g. a mirror in {self.settings.registry}); "
                "the toolkit does not substitute another Python."
            )
        gone = unserved(exc.message)
        if gone:
            listed = ", ".join(f"{p} {v}" for p, v in gone)
            return LockError(f"{step.repository}: the archive no longer serves the locked {listed}; relock explicitly with {relock_hint([p for p, _ in gone])}")
        return exc

    def _context(self, step: Step) -> Path:
        links = None
        if step.root is not None and step.root.source == "bootstrap":
            if self.bootstrap is None:
                raise BuildError(f"{step.name} needs a bootstrapped root filesystem, but no bootstrapper is configured")
            links = rootfs(step, self.settings, self.bootstrap)
        return write_context(self.settings.state_dir / "contexts" / step.repository, step.rendered.context_files(), links=links)

    def _work(self, step: Step) -> Path:
        return owned_dir(self.settings.state_dir / "scan" / step.repository, what="scan work folder", clear=True)

    def _gate_cached(self, step: Step, repo: str, digest: str) -> None:
        """An image already in the registry is judged on its kept report for this database, or
        scanned there once when there is none (a new database, another machine's state dir)."""
        assert self.security is not None
        report = self.security.report(digest)
        if report is None:
            report = self.security.registry_report(self.registry, repo, digest)
            if report is None:
                self.progress.update(step.key, "scanning")
                report = self.security.scan(str(self.settings.ref(step.repository, digest=digest)), self._work(step))
                manifest = self.registry.manifest(repo, digest)
                if manifest is not None:
                    self.security.attach_report(self.registry, repo, manifest, report)
            self.security.keep(digest, report=report, sbom=registry_sbom(self.registry, repo, digest))
        sbom = self.security.record(digest).get("sbom")
        if sbom:
            self.sboms[step.key] = sbom
        self._decide(step, report, digest)

    def _decide(self, step: Step, report: dict, digest: str) -> None:
        assert self.security is not None
        verdict = self.security.judge(report, repository=step.repository, digest=digest, lineage=step.lineage)
        self.verdicts[step.key] = verdict
        if verdict.failed:
            lines = [f.line() for f in verdict.secrets] + [f.line() for f in verdict.blocking]
            raise GateFailure(f"{step.repository}: failed the supply-chain gate ({verdict.summary()}):\n" + "\n".join(f"  {x}" for x in lines), verdict)
