"""`nox -s bench`: the toolkit against baselines measured in the same run, as ratios.

1. No-op rebuild of the CPU families and a set of their services: the toolkit (identity lookups)
   vs `docker buildx bake` of the same plan with a warm cache.
2. A one-file code change in one service: the toolkit (rebuilds and verifies one image) vs the
   same bake.
3. Locking: uv vs pip-compile on the targets pip-compile can lock.

Where this engine's bake cannot run the file (buildx 0.13 has no per-target host network, and
the engine runs without a bridge), the baseline is the same targets built one by one with
`docker buildx build` and the same cache settings, which is what bake would run; the output
says which baseline was used. Everything runs on a copy of the fleet, under its own registry
org and state dir, through the same library call the command line makes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from buildtool import bake, pipeline
from buildtool.adapters import host
from buildtool.adapters.bootstrap import bootstrap_rootfs
from buildtool.adapters.files import copy_fleet, owned_dir, write_context
from buildtool.core.errors import CommandError
from buildtool.execute.executor import Progress, rootfs
from buildtool.locking.resolver import pip_compile_can_lock, resolve
from buildtool.locking.targets import targets
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from buildtool.settings import Settings

SERVICES = ["ServiceRegistry", "MemoryFusionHub", "CacheManager", "SelfHealingSupervisor"]
Row = tuple[str, float, str, float]  # measurement, toolkit seconds, baseline, baseline seconds


class _Quiet:
    def update(self, key: str, status: str, detail: str = "") -> None:
        pass


def _copy_fleet(src: Path, dest: Path) -> None:
    owned_dir(dest, repo=src, what="bench fleet copy", clear=True)
    copy_fleet(src, dest)
    agent = dest / "agents" / "reference_agent" / "agent.py"
    write_context(dest / "agents" / "bench_agent", [("agent.py", agent.read_bytes())])
    svc = dest / "services" / f"{SERVICES[0]}.toml"
    svc.write_text(svc.read_text() + 'source = "agents/bench_agent"\n')


def _timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def _baseline(bake_file: Path) -> tuple[str, float]:
    """Build every target of the bake file: with bake where it can, else target by target."""
    start = time.monotonic()
    try:
        host.run(["docker", "buildx", "bake", "-f", str(bake_file)])
        return "docker buildx bake", time.monotonic() - start
    except CommandError:
        pass
    start = time.monotonic()
    data = json.loads(bake_file.read_text())
    for name in data["group"]["default"]["targets"]:
        t = data["target"][name]
        argv = ["docker", "buildx", "build", "--network=host", "--load", "-f", f"{t['context']}/Dockerfile"]
        for k, v in t["args"].items():
            if v.startswith("parent-"):  # named-context parents: use the tag bake would have built
                parent = data["target"][v.removeprefix("parent-")]
                v = parent["tags"][0]
            argv += ["--build-arg", f"{k}={v}"]
        argv += [f"--secret={s}" for s in t["secret"]]
        argv += [f"--cache-from={c}" for c in t["cache-from"]]
        argv += ["-t", t["tags"][0], t["context"]]
        host.run(argv)
    return "docker buildx build per bake target", time.monotonic() - start


def run_bench(settings: Settings, *, lock_all: bool = False, progress: Progress | None = None) -> list[Row]:
    """Run the measurements on a copy of ``settings.root``'s fleet, under its own org and state dir."""
    pipeline.prepare_state(settings)
    state = settings.state_dir / "bench"
    root = state / "fleet"
    _copy_fleet(settings.root, root)
    bench = dataclasses.replace(settings, root=root, org=f"bench-{int(time.time())}", state_dir=state / "state")
    progress = progress or _Quiet()

    def tool() -> None:
        fleet = load_fleet(root)
        pipeline.build(bench, fleet, make_plan(fleet, services=SERVICES), progress=progress)

    def bake_file() -> Path:
        plan = make_plan(load_fleet(root), services=SERVICES)
        return bake.write(plan, bench, owned_dir(state / "bake", clear=True), bootstrap=lambda step: rootfs(step, bench, bootstrap_rootfs))

    rows: list[Row] = []
    tool()  # first build, not measured
    noop = _timed(tool)
    kind, base = _baseline(bake_file())
    rows.append(("no-op rebuild", noop, kind, base))

    agent = root / "agents" / "bench_agent" / "agent.py"
    agent.write_text(agent.read_text() + "\n# bench change 1\n")
    change = _timed(tool)
    agent.write_text(agent.read_text() + "\n# bench change 2\n")
    kind, base = _baseline(bake_file())
    rows.append(("one-service code change", change, kind, base))

    fleet = load_fleet(root)
    chosen = [t for t in targets(fleet) if pip_compile_can_lock(t) and (lock_all or t.name not in fleet.families or not fleet.families[t.name].gpu)]
    parent = lambda t: fleet.locks.get(t.constraints) if t.constraints else None  # noqa: E731
    uv = sum(_timed(lambda t=t: resolve(t, parent(t), engine="uv", ca_bundle=settings.ca_bundle)) for t in chosen)
    pipc = sum(_timed(lambda t=t: resolve(t, parent(t), engine="pip-compile", ca_bundle=settings.ca_bundle)) for t in chosen)
    rows.append((f"lock {len(chosen)} targets (uv)", uv, "pip-compile", pipc))
    return rows
