"""`nox -s bench`: the toolkit against baselines measured in the same run, printed as ratios.

1. No-op rebuild of the CPU families and a set of their services: the toolkit (identity lookups)
   vs `docker buildx bake` of the same plan with a warm cache.
2. A one-file code change in one service: the toolkit (rebuilds and verifies one image) vs the
   same bake.
3. Locking: uv vs pip-compile on the same lock targets.

Where this engine's bake cannot run the file (buildx 0.13 has no per-target host network, and
the engine runs without a bridge), the baseline is the same targets built one by one with
`docker buildx build` and the same cache settings, which is what bake would run; the output
says which baseline was used.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from rich.table import Table

from buildtool import bake, build, lock
from buildtool.bootstrap import bootstrap_rootfs
from buildtool.cmd import run
from buildtool.config import copy_fleet, load_fleet
from buildtool.console import console
from buildtool.errors import CommandError
from buildtool.output import owned_dir
from buildtool.plan import make_plan

SERVICES = ["ServiceRegistry", "MemoryFusionHub", "CacheManager", "SelfHealingSupervisor"]


def _copy_fleet(src: Path, dest: Path) -> None:
    owned_dir(dest, repo=src, what="bench fleet copy", clear=True)
    copy_fleet(src, dest)
    shutil.copytree(dest / "agents" / "reference_agent", dest / "agents" / "bench_agent")
    svc = dest / "services" / f"{SERVICES[0]}.toml"
    svc.write_text(svc.read_text() + 'source = "agents/bench_agent"\n')


def _timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def _baseline(bake_file: Path) -> tuple[str, float]:
    """Build every target of the bake file: with bake where it can, else target by target."""
    start = time.monotonic()
    try:
        run(["docker", "buildx", "bake", "-f", str(bake_file)])
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
        run(argv)
    return "docker buildx build per bake target", time.monotonic() - start


def run_bench(repo: Path, state: Path, *, lock_all: bool = False) -> list[tuple[str, float, str, float]]:
    """Run the measurements in a copy of the fleet under its own registry org (sets FLEET_* env)."""
    from buildtool.__main__ import main  # the same entry point users run

    root = state / "fleet"
    _copy_fleet(repo, root)
    org = f"bench-{int(time.time())}"
    os.environ.update({"FLEET_ORG": org, "FLEET_STATE_DIR": str(state / "state")})
    env = os.environ
    args = ["--root", str(root), "build", *SERVICES]

    def tool() -> None:
        if main(args) != 0:
            raise SystemExit("the toolkit's build failed; see above")

    def bake_file() -> Path:
        fleet = load_fleet(root, env)
        plan = make_plan(fleet, services=SERVICES)
        options = build.Options(registry=fleet.settings.registry, org=fleet.settings.org, state_dir=state / "state",
                                ca_bundle=Path("/etc/ssl/certs/ca-certificates.crt"), source_date_epoch=fleet.settings.source_date_epoch)
        return bake.write(plan, options, state / "bake", bootstrap=lambda step: build.rootfs(step, options, bootstrap_rootfs))

    rows = []
    console.print("[bold]bench:[/] first build (not measured)")
    tool()
    noop = _timed(tool)
    kind, base = _baseline(bake_file())
    rows.append(("no-op rebuild", noop, kind, base))

    agent = root / "agents" / "bench_agent" / "agent.py"
    agent.write_text(agent.read_text() + "\n# bench change 1\n")
    change = _timed(tool)
    agent.write_text(agent.read_text() + "\n# bench change 2\n")
    kind, base = _baseline(bake_file())
    rows.append(("one-service code change", change, kind, base))

    fleet = load_fleet(root, env)
    targets = [t for t in lock.targets(fleet) if t.python == "3.11" and (lock_all or not fleet.families.get(t.name, None) or not fleet.families[t.name].gpu)]
    uv = sum(lock.compile_target(t, engine="uv") for t in targets)
    pipc = sum(lock.compile_target(t, engine="pip-compile") for t in targets)
    rows.append((f"lock {len(targets)} targets (uv)", uv, "pip-compile", pipc))
    return rows


def show(rows: list[tuple[str, float, str, float]]) -> None:
    table = Table(title="bench (same run, same machine)")
    for col in ("measurement", "toolkit s", "baseline", "baseline s", "speed-up"):
        table.add_column(col, justify="right" if col.endswith("s") or col == "speed-up" else "left")
    for name, ours, kind, base in rows:
        table.add_row(name, f"{ours:.2f}", kind, f"{base:.2f}", f"{base / ours:.1f}x" if ours else "-")
    console.print(table)
