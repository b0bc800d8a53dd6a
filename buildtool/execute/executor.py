"""The executor: build, verify and push each planned image under its identity tag.

Steps run as soon as their parent is done, up to ``jobs`` at a time. An image whose identity
tag is already in the registry is skipped: it was built and verified before (an identity tag is
pushed only after its image passed verification). Release tags are the publisher's
(:mod:`buildtool.publish.release`), and move only when every step of the run succeeded.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from buildtool.adapters import host
from buildtool.adapters.bootstrap import relock_hint, unserved
from buildtool.adapters.engine import IDENTITY_LABEL
from buildtool.adapters.files import disk_full, owned_dir, write_context
from buildtool.adapters.protocols import Engine, Registry
from buildtool.core import stopping
from buildtool.core.errors import BuildError, Interrupted, LockError, ToolError, VerifyError
from buildtool.execute.gate import Verdict
from buildtool.execute.lookup import found, lookup
from buildtool.execute.roots import Bootstrapper, rootfs
from buildtool.execute.security import Security, registry_sbom
from buildtool.execute.structure import structure_checks
from buildtool.plan.plan import Plan, Step
from buildtool.settings import Settings

APP_USER = "10001:10001"
CANCEL_GRACE = 5.0  # seconds the workers get to end once their processes are gone
log = logging.getLogger("buildtool.execute")


class GateFailure(VerifyError):
    """An image failed the supply-chain gate; carries the verdict for the report."""

    def __init__(self, message: str, verdict: Verdict) -> None:
        super().__init__(message)
        self.verdict = verdict


class Progress(Protocol):
    """Where a run reports each step's status, and what it did besides (the command line shows it)."""

    def update(self, key: str, status: str, detail: str = "") -> None: ...

    def note(self, text: str) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Result:
    key: str
    repository: str
    status: str  # built | cached | failed | blocked
    digest: str = ""
    seconds: float = 0.0
    message: str = ""
    verdict: Verdict | None = None  # the supply-chain gate's, when the run scans
    sbom: dict[str, object] | None = None  # digest and component count of the SBOM attached to the image
    builder: str = ""  # root steps: the digest of their builder root
    compressed: int = 0  # bytes of compressed layers
    warnings: tuple[str, ...] = ()  # what the run reports without failing (an image over a "warn" budget)




@dataclass(frozen=True)
class Outcome:
    status: str  # built | cached
    digest: str
    builder: str
    compressed: int
    warnings: tuple[str, ...]


class Executor:
    def __init__(
        self,
        plan: Plan,
        *,
        settings: Settings,
        engine: Engine,
        registry: Registry,
        progress: Progress,
        bootstrap: Bootstrapper | None = None,
        labels: Mapping[str, str] | None = None,
        security: Security | None = None,
    ) -> None:
        self.plan = plan
        self.security = security  # None: no scans (the gate is the pipeline's to configure)
        self._verdicts: dict[str, Verdict] = {}
        self._sboms: dict[str, dict[str, object]] = {}
        self.labels = dict(labels or {})  # what every image built carries: the commit and its date
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.progress = progress
        self.bootstrap = bootstrap
        self.results: dict[str, Result] = {}
        self._expired: set[str] = set()  # steps ended by their time limit

    # -- scheduling -------------------------------------------------------------------------

    def lookup(self) -> None:
        lookup(self.plan, self.settings, self.registry)

    def _found(self, step: Step) -> tuple[str | None, str | None]:
        return found(step, self.settings, self.registry)

    def run(self) -> list[Result]:
        pending = list(self.plan.steps)
        running: dict[Future[Result], Step] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.jobs))
        try:
            self.lookup()
            while pending or running:
                for step in list(pending):
                    parent = self.results.get(step.parent) if step.parent else None
                    if step.parent and parent is None:
                        continue
                    pending.remove(step)
                    if parent is not None and parent.status in ("failed", "blocked"):
                        self._finish(Result(key=step.key, repository=step.repository, status="blocked", message=f"{parent.repository} failed"))
                        continue
                    if self._known(step):  # in the registry already: a lookup, no worker and no time limit
                        self._finish(self._attempt(step, parent, time.monotonic()))
                        continue
                    running[pool.submit(self._guarded, step, parent)] = step
                if not running:
                    if pending:  # cannot happen with a plan from make_plan (parents come first)
                        raise BuildError(f"steps wait for parents outside the plan: {', '.join(s.key for s in pending)}")
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)
                    self._finish(future.result())
        except Interrupted as exc:
            pool.shutdown(wait=False, cancel_futures=True)
            raise self._cancel(exc, list(running), [*running.values(), *pending]) from None
        pool.shutdown()
        return [self.results[s.key] for s in self.plan.steps]

    def _cancel(self, exc: Interrupted, running: list[Future[Result]], cancelled: list[Step]) -> Interrupted:
        """End what this run started (its build, push and check processes, its containers) and
        say what finished: identity tags already pushed stay, and the next run resumes from them."""
        host.end(host.descendants())
        self.engine.remove_containers()
        wait(running, timeout=CANCEL_GRACE)  # the workers end as their processes do
        finished = [r.repository for r in self.results.values() if r.status in ("built", "cached")]
        names = ", ".join(s.repository for s in cancelled) or "none"
        how = signal.Signals(exc.signum).name
        return Interrupted(exc.signum, f"stopped by {how}: cancelled {len(cancelled)} image(s) ({names}); {len(finished)} finished and "
                                       "pushed by identity, which the next run reuses; no release tag was moved")  # fmt: skip

    def _known(self, step: Step) -> bool:
        """The image (and a root's builder) is in the registry and its gate verdict is at hand:
        its step is a lookup, done without a worker."""
        digest, builder = self._found(step)
        if digest is None or builder is None:
            return False
        return self.security is None or self.security.report(digest) is not None

    def _finish(self, result: Result) -> None:
        self.results[result.key] = result
        self.progress.update(result.key, result.status, result.message.splitlines()[0] if result.message else "")

    def _limit(self, step: Step) -> float:
        """Seconds a step may take: FLEET_STEP_TIME_LIMIT, else its family's time_limit_minutes."""
        return self.settings.step_time_limit or step.time_limit_minutes * 60.0

    def _expire(self, step: Step) -> None:
        """A step past its limit: end its processes (build, push, checks) and its containers."""
        self._expired.add(step.key)
        refs = [str(self.settings.ref(step.repository, step.id_tag))]
        if step.root is not None:
            refs.append(str(self.settings.ref(step.builder_repository, step.id_tag)))
        logs = [f"/logs/{step.repository}.log"] + ([f"/logs/{step.builder_repository}.log"] if step.root is not None else [])
        host.end(host.descendants([*refs, *logs]))
        for ref in refs:
            self.engine.remove_containers(ref)

    def _guarded(self, step: Step, parent: Result | None) -> Result:
        start = time.monotonic()
        limit = self._limit(step)
        timer = threading.Timer(limit, self._expire, (step,))
        timer.daemon = True
        timer.start()
        try:
            result = self._attempt(step, parent, start)
        finally:
            timer.cancel()
        if step.key in self._expired and result.status == "failed":
            family = step.lineage[-1]
            return dataclasses.replace(result, message=f"{step.repository}: stopped after its time limit of {limit:.0f}s; if it needs longer, raise "
                                                       f"time_limit_minutes in families/{family}.toml (FLEET_STEP_TIME_LIMIT overrides it)")  # fmt: skip
        return result

    def _attempt(self, step: Step, parent: Result | None, start: float) -> Result:
        try:
            outcome = self._step(step, parent)
            return Result(key=step.key, repository=step.repository, status=outcome.status, digest=outcome.digest,
                          seconds=time.monotonic() - start, verdict=self._verdicts.get(step.key), sbom=self._sboms.get(step.key),
                          builder=outcome.builder, compressed=outcome.compressed, warnings=outcome.warnings)  # fmt: skip
        except GateFailure as exc:
            message = exc.message
            return Result(key=step.key, repository=step.repository, status="failed", seconds=time.monotonic() - start, message=message,
                          verdict=exc.verdict)  # fmt: skip
        except ToolError as exc:
            message = exc.message
        except Exception as exc:
            log.debug("step %s failed", step.key, exc_info=True)
            message = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # the toolkit's own write (a log, a context, a scan)
                message = f"{step.repository}: {disk_full(Path(exc.filename) if exc.filename else self.settings.state_dir)}"
        return Result(key=step.key, repository=step.repository, status="failed", seconds=time.monotonic() - start, message=message)

    # -- one image --------------------------------------------------------------------------

    def _step(self, step: Step, parent: Result | None) -> Outcome:
        s = self.settings
        repo = s.ref(step.repository).path
        self.progress.update(step.key, "checking")
        digest, builder = self._found(step)
        if digest and builder is not None:
            compressed = sum(self.registry.layer_sizes(repo, digest))
            warnings = self._budget(step, compressed)
            if self.security:
                self._gate_cached(step, repo, digest)
            return Outcome("cached", digest, builder, compressed, warnings)

        self.progress.update(step.key, "building")
        context = self._context(step)
        args = {"SOURCE_DATE_EPOCH": str(s.source_date_epoch)}
        if parent is not None:
            parent_step = self.plan.step(step.parent)
            arg = "FAMILY_IMAGE" if step.kind == "service" else "PARENT_IMAGE"
            args[arg] = str(s.ref(parent_step.repository, digest=parent.digest))
        if step.root is None and step.builder:
            args["BUILDER_IMAGE"] = str(s.ref(self.plan.step(step.builder).builder_repository, digest=self.results[step.builder].builder))
        labels = {IDENTITY_LABEL: step.identity, **self.labels}
        ref = str(s.ref(step.repository, step.id_tag))
        logs = s.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        build = dict(context=context, build_args=args, secrets=s.secrets(), cache_ref=str(s.cache_ref(step.repository)) if s.cache else None,
                     cache_mode=s.cache_mode, labels=labels)  # fmt: skip
        # Targets made of bootstrap tarballs only carry clamped file times already: rewriting them
        # would decompress and recompress the same bytes.
        clamped = step.rendered.clamped
        builder_ref = ""
        try:
            if step.root is not None:
                builder_ref = str(s.ref(step.builder_repository, step.id_tag))
                self.engine.build(tag=builder_ref, target="builder-root", log=logs / f"{step.builder_repository}.log",
                                  rewrite_timestamps="builder-root" not in clamped, **build)  # fmt: skip
            built = self.engine.build(tag=ref, log=logs / f"{step.repository}.log", rewrite_timestamps="runtime" not in clamped, **build)
        except BuildError as exc:
            raise self._explain(step, exc) from exc
        warnings = self._budget(step, built.compressed)
        self.progress.update(step.key, "verifying")
        self.verify(step, ref)
        scanned = self._gate_built(step, ref) if self.security else None
        if stopping.stopping():
            raise BuildError(f"{step.repository}: cancelled before its push (the run was stopped)")
        self.progress.update(step.key, "pushing")
        if builder_ref:
            self.engine.push(builder_ref)
            builder = self.registry.digest(s.ref(step.builder_repository).path, step.id_tag, fresh=True)
            if not builder:
                raise BuildError(f"{builder_ref} was pushed but the registry does not show it")
        self.engine.push(ref)
        digest = self.registry.digest(repo, step.id_tag, fresh=True)
        if not digest:
            raise BuildError(f"{ref} was pushed but the registry does not show it")
        if self.security and scanned:
            report, sbom = scanned
            manifest = self.registry.manifest(repo, digest)
            assert manifest is not None
            self._sboms[step.key] = self.security.attach_sbom(self.registry, repo, manifest, sbom)
            self.security.attach_report(self.registry, repo, manifest, report)
            self.security.keep(digest, report=report, sbom=self._sboms[step.key])
        return Outcome("built", digest, builder or "", built.compressed, warnings)

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

    # -- the supply-chain gate --------------------------------------------------------------

    def _work(self, step: Step) -> Path:
        return owned_dir(self.settings.state_dir / "scan" / step.repository, what="scan work folder", clear=True)

    def _gate_built(self, step: Step, ref: str) -> tuple[dict, bytes]:
        """Scan a built image before it is pushed: its secrets and vulnerabilities, and its SBOM."""
        assert self.security is not None
        self.progress.update(step.key, "scanning")
        work = self._work(step)
        archive = self.engine.save(ref, work / "image.tar")
        try:
            report = self.security.scan(archive, work)
            sbom = self.security.scanner.sbom(archive, work / "sbom.cdx.json")
        finally:
            archive.unlink(missing_ok=True)
        self._decide(step, report, self.engine.image_digest(ref))
        return report, sbom

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
        self._sboms[step.key] = self.security.record(digest).get("sbom")
        self._decide(step, report, digest)

    def _decide(self, step: Step, report: dict, digest: str) -> None:
        assert self.security is not None
        verdict = self.security.judge(report, repository=step.repository, digest=digest, lineage=step.lineage)
        self._verdicts[step.key] = verdict
        if verdict.failed:
            lines = [f.line() for f in verdict.secrets] + [f.line() for f in verdict.blocking]
            raise GateFailure(f"{step.repository}: failed the supply-chain gate ({verdict.summary()}):\n" + "\n".join(f"  {x}" for x in lines), verdict)

    def _context(self, step: Step) -> Path:
        links = None
        if step.root is not None and step.root.source == "bootstrap":
            if self.bootstrap is None:
                raise BuildError(f"{step.name} needs a bootstrapped root filesystem, but no bootstrapper is configured")
            links = rootfs(step, self.settings, self.bootstrap)
        return write_context(self.settings.state_dir / "contexts" / step.repository, step.rendered.context_files(), links=links)

    def verify(self, step: Step, ref: str) -> None:
        """Checks before anything is pushed: non-root user, smoke checks of the whole lineage, health."""
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
        if step.kind == "service":
            self.engine.wait_healthy(ref, name=f"fleet-verify-{step.repository}-{os.getpid()}", timeout=self.settings.health_timeout)
