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
from buildtool.adapters.protocols import Engine, Registry
from buildtool.core.errors import CommandError
from buildtool.execute.executor import Progress, rootfs
from buildtool.locking.resolver import pip_compile_can_lock, resolve
from buildtool.locking.targets import targets
from buildtool.model.load import load_fleet
from buildtool.model.locks import family_lock_path, service_lock_path
from buildtool.model.types import Fleet, Service
from buildtool.plan.plan import MB, make_plan
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


NAIVE = ["ServiceRegistry", "SelfHealingSupervisor", "AdvancedCommandHandler"]  # web, own requirements, legacy


def naive_dockerfile(fleet: Fleet, service: Service, machine: str) -> str:
    """One stage, as a hand-written Dockerfile would have it: the root family's builder root (the
    same OS and Python, with apt and pip), the lineage's OS packages and the service's complete
    lock installed on top, the app copied in, nothing cleaned up."""
    os_packages = sorted({p for f in fleet.lineage(service.family) for p in f.os_packages})
    profile = fleet.machines[machine].profile_dict()
    lines = ["ARG BUILDER_IMAGE", "FROM ${BUILDER_IMAGE}", "USER 0:0"]
    if os_packages:
        lines.append(f"RUN apt-get update && apt-get install -y {' '.join(os_packages)}")
    lines += [
        "COPY requirements.txt /tmp/requirements.txt",
        "RUN --network=host --mount=type=secret,id=pip_ca PIP_CERT=/run/secrets/pip_ca pip install --require-hashes --no-deps -r /tmp/requirements.txt",
        "COPY app/ /app/",
        "ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(profile.items())),
        "USER 10001:10001",
        f"CMD {json.dumps(list(service.entrypoint))}",
    ]
    return "\n".join(lines) + "\n"


def naive_sizes(settings: Settings, fleet: Fleet, engine: Engine, registry: Registry, names: list[str]) -> list[Row]:
    """Compressed size of each service as the toolkit built it vs a naive single-stage build of it."""
    plan = make_plan(fleet, services=names)
    rows: list[Row] = []
    for step in (s for s in plan.steps if s.kind == "service"):
        service = fleet.services[step.name]
        owner = fleet.lock_owner(service.family)
        path = service_lock_path(service.name) if service.requirements else family_lock_path(owner.name) if owner else None
        lock = fleet.lock(path) if path else None
        files = [("Dockerfile", naive_dockerfile(fleet, service, step.machine or "").encode()), ("requirements.txt", (lock.text if lock else "").encode())]
        files += [(f"app/{p}", d) for p, d in fleet.sources[service.source].files]
        context = write_context(settings.state_dir / "naive" / step.repository, files)
        root = plan.step(step.builder or "")
        builder = registry.digest(settings.ref(root.builder_repository).path, root.id_tag)
        built = engine.build(context=context, tag=str(settings.ref(f"naive-{step.repository}", "bench")), secrets=settings.secrets(), cache_ref=None,
                             build_args={"BUILDER_IMAGE": str(settings.ref(root.builder_repository, digest=builder or ""))}, labels={},
                             log=settings.state_dir / "naive" / f"{step.repository}.log")  # fmt: skip
        ours = sum(registry.layer_sizes(settings.ref(step.repository).path, step.id_tag))
        rows.append((f"{step.repository} size (MB compressed)", ours / MB, "naive single stage", built.compressed / MB))
    return rows


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

    fleet = load_fleet(root)
    tool_naive = lambda: pipeline.build(bench, fleet, make_plan(fleet, services=NAIVE), progress=progress)  # noqa: E731
    tool_naive()
    from buildtool.adapters.engine import Docker

    rows += naive_sizes(bench, fleet, Docker(), pipeline.bring_up(bench, engine=False), NAIVE)
    return rows
