"""The executor: build, verify and push each planned image under its identity tag.

Each image passes through the named stages of :mod:`buildtool.execute.stages`. An image starts
as soon as its parent's image exists (in the registry, or in the engine once built in this run),
up to ``jobs`` builds at a time, with checks, scans and pushes of other images beside them. Its
push waits for the parent's verdict: a parent that fails blocks its descendants, and nothing of
theirs is pushed. An image whose identity tag is already in the registry is skipped: it was
built and verified before (an identity tag is pushed only after its image passed verification).
Release tags are the publisher's (:mod:`buildtool.publish.release`), and move only when every
step of the run succeeded.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from buildtool.adapters import host
from buildtool.adapters.files import full_disk
from buildtool.adapters.protocols import Engine, Registry
from buildtool.core import stopping
from buildtool.core.errors import BuildError, Interrupted, ToolError
from buildtool.execute.gate import Verdict
from buildtool.execute.lookup import found, lookup
from buildtool.execute.roots import Bootstrapper
from buildtool.execute.security import Security
from buildtool.execute.stages import STAGES, Blocked, GateFailure, Hooks, Progress, Stages, Work
from buildtool.plan.plan import Plan, Step
from buildtool.settings import Settings

__all__ = ["Bootstrapper", "Executor", "Progress", "Result"]

CANCEL_GRACE = 5.0  # seconds the workers get to end once their processes are gone
POLL = 0.5  # seconds between looks at a stop signal while waiting
log = logging.getLogger("buildtool.execute")


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
    stages: dict[str, float] = field(default_factory=dict)  # seconds of each stage it passed, in order
    started: float = 0.0  # seconds from the run's start
    ended: float = 0.0


class _Clock:
    """A step's time limit: it runs while the step works, and stands still while the step waits
    for its parent's verdict (that time is the parent's)."""

    def __init__(self, limit: float, on_expire: Callable[[], None]) -> None:
        self.limit, self.spent, self.on_expire = limit, 0.0, on_expire
        self._timer: threading.Timer | None = None
        self._since = 0.0

    def run(self) -> None:
        self._since = time.monotonic()
        self._timer = threading.Timer(max(0.0, self.limit - self.spent), self.on_expire)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.spent += time.monotonic() - self._since


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
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.progress = progress
        self.results: dict[str, Result] = {}
        self.stages = Stages(plan, settings=settings, engine=engine, registry=registry, progress=progress, bootstrap=bootstrap,
                             labels=labels or {}, security=security, hooks=Hooks(self._inputs, self._built, self._parent_verdict, self._stopped))  # fmt: skip
        self._expired: set[str] = set()  # steps ended by their time limit
        self._local: dict[str, str] = {}  # images built and loaded into the engine by this run, not yet final: their identity tags
        self._final = {s.key: threading.Event() for s in plan.steps}  # set once the step's result is in
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()  # wakes the scheduler: an image built, a step ended
        self._cancelled = threading.Event()
        self._t0 = time.monotonic()

    # -- scheduling -------------------------------------------------------------------------

    def lookup(self) -> None:
        lookup(self.plan, self.settings, self.registry)

    def _found(self, step: Step) -> tuple[str | None, str | None]:
        return found(step, self.settings, self.registry)

    def run(self) -> list[Result]:
        self._t0 = time.monotonic()
        pending = list(self.plan.steps)
        running: dict[Future[Result], Step] = {}
        # A worker per image: most of them wait (for a build slot, for a parent's verdict); the
        # stages' own limits say how much runs at once.
        pool = ThreadPoolExecutor(max_workers=max(1, len(pending)))
        try:
            self.lookup()
            while pending or running:
                for step in list(pending):
                    ready = self._ready(step)
                    if ready is None:
                        continue
                    pending.remove(step)
                    if ready:
                        self._finish(Result(key=step.key, repository=step.repository, status="blocked", message=ready))
                    elif self._known(step):  # in the registry already: a lookup, no worker and no time limit
                        self._finish(self._attempt(step, None))
                    else:
                        future = pool.submit(self._guarded, step)
                        future.add_done_callback(lambda _: self._events.put("ended"))
                        running[future] = step
                if not running:
                    if pending:  # cannot happen with a plan from make_plan (parents come first)
                        raise BuildError(f"steps wait for parents outside the plan: {', '.join(s.key for s in pending)}")
                    continue
                try:
                    self._events.get(timeout=POLL)
                except queue.Empty:
                    continue
                for future in [f for f in running if f.done()]:
                    running.pop(future)
                    self._finish(future.result())
        except Interrupted as exc:
            self._cancelled.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise self._cancel(exc, list(running), [*running.values(), *pending]) from None
        pool.shutdown()
        return [self.results[s.key] for s in self.plan.steps]

    def _ready(self, step: Step) -> str | None:
        """None while the step's parent image exists nowhere yet; "" when the step may start (its
        parent is in the registry, or built into the engine by this run); else why it is blocked."""
        if not step.parent:
            return ""
        parent = self.results.get(step.parent)
        if parent is not None:
            return f"{parent.repository} failed" if parent.status in ("failed", "blocked") else ""
        return "" if step.parent in self._local else None

    def _inputs(self, key: str) -> tuple[str, str]:
        """References to the image (and a root's builder root) of the step ``key``, for a child's
        FROM: by digest once it is in the registry; by identity tag while only this run's engine
        holds it, as loaded (BuildKit resolves a tag in the engine's own store, a digest only in
        a registry; the child's image is the same either way)."""
        step, s = self.plan.step(key), self.settings
        result = self.results.get(key)
        if result is None:
            assert key in self._local
            return str(s.ref(step.repository, step.id_tag)), str(s.ref(step.builder_repository, step.id_tag)) if step.root else ""
        if result.status not in ("built", "cached"):  # it failed after the step was started on it
            raise Blocked(f"{result.repository} failed")
        builder = str(s.ref(step.builder_repository, digest=result.builder)) if step.root else ""
        return str(s.ref(step.repository, digest=result.digest)), builder

    def _built(self, step: Step, work: Work) -> None:
        self._local[step.key] = work.ref
        self._events.put("built")

    def _stopped(self) -> bool:
        return self._cancelled.is_set() or stopping.stopping()

    def _parent_verdict(self, step: Step) -> None:
        """Wait (the time limit standing still) until the parent's result is in; a parent that did
        not pass blocks this image."""
        assert step.parent
        while not self._final[step.parent].wait(POLL):
            if self._stopped():
                raise BuildError(f"{step.repository}: cancelled while waiting for {self.plan.step(step.parent).repository} (the run was stopped)")
        parent = self.results[step.parent]
        if parent.status not in ("built", "cached"):
            raise Blocked(f"{parent.repository} failed")

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
        self._local.pop(result.key, None)
        self._final[result.key].set()
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

    def _guarded(self, step: Step) -> Result:
        limit = self._limit(step)
        clock = _Clock(limit, lambda: self._expire(step))
        clock.run()
        try:
            result = self._attempt(step, clock)
        finally:
            clock.stop()
        if step.key in self._expired and result.status == "failed":
            family = step.lineage[-1]
            return dataclasses.replace(result, message=f"{step.repository}: stopped after its time limit of {limit:.0f}s; if it needs longer, raise "
                                                       f"time_limit_minutes in families/{family}.toml (FLEET_STEP_TIME_LIMIT overrides it)")  # fmt: skip
        return result

    def _attempt(self, step: Step, clock: _Clock | None) -> Result:
        start = time.monotonic()
        work = Work(step=step, ref=str(self.settings.ref(step.repository, step.id_tag)))
        done = {"key": step.key, "repository": step.repository, "started": start - self._t0}
        try:
            status = self._step(work, clock)
            result = Result(**done, status=status, digest=work.digest, builder=work.builder, warnings=work.warnings,  # type: ignore[arg-type]
                            compressed=work.compressed)  # fmt: skip
        except Blocked as exc:
            result = Result(**done, status="blocked", message=exc.message)  # type: ignore[arg-type]
        except GateFailure as exc:
            result = Result(**done, status="failed", message=exc.message, verdict=exc.verdict)  # type: ignore[arg-type]
        except ToolError as exc:
            result = Result(**done, status="failed", message=exc.message)  # type: ignore[arg-type]
        except Exception as exc:
            log.debug("step %s failed", step.key, exc_info=True)
            message = f"{type(exc).__name__}: {exc}"
            if full := full_disk(exc):  # the toolkit's own write (a log, a context, a scan)
                message = f"{step.repository}: {full}"
            result = Result(**done, status="failed", message=message)  # type: ignore[arg-type]
        if result.status == "failed" and (why := self._parent_failed(step, clock)):
            result = dataclasses.replace(result, status="blocked", message=why)
        end = time.monotonic()
        return dataclasses.replace(result, seconds=end - start, ended=end - self._t0, stages=dict(work.seconds),
                                   verdict=result.verdict or self.stages.verdicts.get(step.key), sbom=self.stages.sboms.get(step.key))  # fmt: skip

    def _parent_failed(self, step: Step, clock: _Clock | None) -> str:
        """After an image failed, started on a parent not yet judged: why it is blocked when that
        parent failed too (its descendants fail for its reason, as they would had they waited
        for it), else ""."""
        if not step.parent or (step.parent in self.results and self.results[step.parent].status in ("built", "cached")):
            return ""
        if clock is not None:
            clock.stop()
        try:
            self._parent_verdict(step)
        except Blocked as exc:
            return exc.message
        except BuildError:
            pass  # the run was stopped
        finally:
            if clock is not None:
                clock.run()
        return ""

    def _step(self, work: Work, clock: _Clock | None) -> str:
        """Walk the image through its stages, timing each; "cached" when the registry holds it by identity."""
        step = work.step
        self.progress.update(step.key, "checking")
        digest, builder = self._found(step)
        if digest and builder is not None:
            work.compressed, work.warnings = self.stages.cached(step, digest)
            work.digest, work.builder = digest, builder
            return "cached"
        try:
            for name in STAGES:
                began, queued = time.monotonic(), work.queued
                waiting = name == "parent" and clock is not None
                if waiting:
                    clock.stop()
                try:
                    parts = getattr(self.stages, name)(work) or {}
                finally:
                    if waiting:
                        clock.run()
                work.seconds[name] = time.monotonic() - began - sum(parts.values()) - (work.queued - queued)
                work.seconds.update(parts)
        finally:
            work.seconds["queued"] = work.queued
        return "built"
