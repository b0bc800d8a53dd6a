"""A small fleet built in memory, for plan and render tests that read no files.

Its root points at a folder that does not exist: anything that tried to read the disk would fail.
Families: base (bootstrapped root) -> utils (curl) -> pydeps (locked) -> web (locked); gpu (root,
GPU) -> llm (compiled per machine, with build tools and a setup script). Machines: big (sm_89),
small (sm_86), edge (no GPU). Services: Api (web, big), Worker (pydeps + its own lock, big and
small), Chat (llm, big).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from buildtool.locking.oslock import Resolved, os_targets
from buildtool.locking.oslock import render as render_os_lock
from buildtool.locking.targets import targets
from buildtool.model.locks import Lock, parse_lock, stamp
from buildtool.model.oslocks import OsLock, parse_os_lock
from buildtool.model.sources import SourceTree
from buildtool.model.types import Builder, Family, Fleet, Machine, Root, Service, Settings, SmokeCheck

NOWHERE = Path("/nonexistent/fleet-in-memory")
AGENT = b"print('serving')\n"


def _family(name: str, **kw: object) -> Family:
    base = {
        "name": name, "file": f"families/{name}.toml", "description": f"the {name} family", "parent": None, "root": None,
        "python": "3.11", "gpu": False, "cuda": "", "machine_specific": False, "os_packages": (), "requirements": (), "env": (),
        "smoke": (SmokeCheck(name=f"{name} works", run=("python", "-c", "pass")),), "budget_mb": 100, "vram_gb": 0, "group": "cpu",
    }  # fmt: skip
    return Family(**{**base, **kw})  # type: ignore[arg-type]


def _pins(*pins: tuple[str, str]) -> str:
    return "".join(f"{n}=={v} \\\n    --hash=sha256:{(n + v).encode().hex()[:64].ljust(64, '0')}\n" for n, v in pins)


PINS = {
    "pydeps": _pins(("numpy", "1.26.4"), ("pydantic", "2.9.2")),
    "web": _pins(("numpy", "1.26.4"), ("pydantic", "2.9.2"), ("gunicorn", "23.0.0")),
    "llm": _pins(("llama-cpp-python", "0.2.77")),
    "llm.build": _pins(("cmake", "4.4.4")),
    "Worker": _pins(("numpy", "1.26.4"), ("pydantic", "2.9.2"), ("httpx", "0.27.0")),
}


def fleet(**changes: object) -> Fleet:
    """The in-memory fleet; ``changes`` replace fields of the Fleet (families, machines, locks...)."""
    machines = {
        "big": Machine(name="big", file="machines/big.toml", description="big", gpu="RTX 4090", vram_gb=24, cuda_arch="8.9",
                       profile=(("OMP_NUM_THREADS", "16"),)),
        "small": Machine(name="small", file="machines/small.toml", description="small", gpu="RTX 3060", vram_gb=12, cuda_arch="8.6",
                         profile=(("OMP_NUM_THREADS", "4"),)),
        "edge": Machine(name="edge", file="machines/edge.toml", description="no GPU", gpu="", vram_gb=0, cuda_arch="", profile=()),
    }  # fmt: skip
    families = {
        "base": _family("base", root=Root(source="bootstrap", suite="bookworm", packages=("python3-minimal", "tini"))),
        "utils": _family("utils", parent="base", os_packages=("curl",), env=(("TZ", "Etc/UTC"),)),
        "pydeps": _family("pydeps", parent="utils", requirements=("numpy==1.26.4", "pydantic==2.9.2")),
        "gpu": _family("gpu", root=Root(source="bootstrap", suite="bookworm", packages=("python3-minimal",)), gpu=True, cuda="12.1", group="gpu"),
        "llm": _family("llm", parent="gpu", gpu=True, cuda="12.1", machine_specific=True, group="gpu", requirements=("llama-cpp-python==0.2.77",),
                       builder=Builder(os_packages=("clang-19",), requirements=("cmake==4.4.4",), setup="families/setup.sh",
                                       env=(("CMAKE_ARGS", "-DARCH=${CMAKE_CUDA_ARCHITECTURES}"),))),
        "web": _family("web", parent="pydeps", requirements=("gunicorn==23.0.0",)),
    }  # fmt: skip
    services = {
        "Api": Service(name="Api", file="services/Api.toml", family="web", machines=("big",), port=7000, health_port=8000, needs="CPU/Web",
                       vram_gb=0, source="agents/ref", entrypoint=("python", "/app/agent.py"), requirements=(), env=()),
        "Chat": Service(name="Chat", file="services/Chat.toml", family="llm", machines=("big",), port=7001, health_port=8001, needs="GPU/LLM",
                        vram_gb=8, source="agents/ref", entrypoint=("python", "/app/agent.py"), requirements=(), env=()),
        "Worker": Service(name="Worker", file="services/Worker.toml", family="pydeps", machines=("big", "small"), port=7002, health_port=8002,
                          needs="CPU", vram_gb=0, source="agents/ref", entrypoint=("python", "/app/agent.py"), requirements=("httpx==0.27.0",),
                          env=()),
    }  # fmt: skip
    settings = Settings(registry="127.0.0.1:5000", org="fleet", suite_python=(("bookworm", "3.11"),), ignore=("__pycache__/",), source_date_epoch=0)
    base = Fleet(
        root=NOWHERE,
        settings=settings,
        machines=machines,
        families=families,
        services=services,
        sources={"agents/ref": SourceTree(path="agents/ref", files=(("agent.py", AGENT),))},
        scripts={"families/setup.sh": b"echo set up\n"},
    )
    base = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
    base = with_locks(base) if "locks" not in changes else base
    return with_os_locks(base) if "os_locks" not in changes else base


DEBS = {
    "root-builder": (("apt", "2.6.1"), ("libc6", "2.36-9+deb12u13"), ("python3-minimal", "3.11.2-1+b1"), ("python3-venv", "3.11.2-1+b1")),
    "root-runtime": (("libc6", "2.36-9+deb12u13"), ("python3-minimal", "3.11.2-1+b1")),
    "runtime": (("curl", "7.88.1-10+deb12u15"), ("libcurl4", "7.88.1-10+deb12u15")),
    "builder": (("clang-19", "1:19.1.7-3~deb12u1"), ("libclang-cpp19", "1:19.1.7-3~deb12u1")),
}


def with_os_locks(f: Fleet, debs: dict[str, tuple[tuple[str, str], ...]] | None = None) -> Fleet:
    """``f`` with a consistent OS lock for every family that needs one (each stamped against its root's)."""
    debs = {**DEBS, **(debs or {})}
    locks: dict[str, OsLock] = {}
    for t in os_targets(f):
        resolved = Resolved(sections={s: debs[s] for s in t.sections}, archives={"bookworm": "20261121T005302Z"}, apt="2.6.1")
        locks[t.path] = parse_os_lock(t.path, render_os_lock(f, t, locks, resolved))
    return dataclasses.replace(f, os_locks=locks)


def with_locks(f: Fleet, pins: dict[str, str] | None = None) -> Fleet:
    """``f`` with a consistent lock for every target (each stamped against its parent's)."""
    pins = {**PINS, **(pins or {})}
    locks: dict[str, Lock] = {}
    for t in targets(dataclasses.replace(f, locks={})):
        parent = locks.get(t.constraints) if t.constraints else None
        text = stamp("# generated in memory\n" + pins[t.name], t.inputs_hash(parent), "uv")
        locks[t.path] = parse_lock(t.path, text)
    return dataclasses.replace(f, locks=locks)
