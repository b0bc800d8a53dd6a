"""`deploy`: one machine's stack up, health-gated, and back to what ran before when it fails.

The folder of a machine (``deploy/MACHINE/``, the toolkit's) holds:

  compose.yaml    the stack being deployed (a release's, as its publish stored it)
  deployed.yaml   the stack that last came up healthy: what runs
  previous.yaml   the one that ran before it: what ``--rollback`` deploys
  secrets/NAME    the operator's secret files (compose reads them; the toolkit never writes them)

A deploy pulls the images by digest, runs ``docker compose up --wait`` (compose starts each
startup layer once the layers before it are healthy, and waits for every service's own health
check), and on any failure names the services that did not become healthy, with their last
health log, and brings back ``deployed.yaml`` (compose recreates only what differs; services new
in the failed stack go), or, on a first deploy, removes the containers it started. An unchanged
stack recreates nothing: compose keeps a container whose configuration did not change.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.files import atomic_write, owned_dir
from buildtool.core.errors import CommandError, DeployError, MissingToolError
from buildtool.model.types import Fleet

START_PERIOD = 60  # seconds: the services' HEALTHCHECK --start-period (render/templates/service.Dockerfile.j2)
MIN_DRIVER = 535  # blueprint R1: CUDA 12.1 needs an NVIDIA driver of at least 535
CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")


@dataclass
class Outcome:
    """What a deploy did: its steps' seconds, and which containers it kept and which it (re)created."""

    release: str
    seconds: dict[str, float] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Compose:
    """``docker compose`` with the stack's files, in the machine's folder (secrets resolve there)."""

    def __init__(self, folder: Path, stack: Path, overrides: Sequence[Path]) -> None:
        self.folder = folder
        self.files = [stack, *overrides]

    def run(self, *args: str, timeout: float = 600) -> tuple[int, str]:
        argv = ["docker", "compose", "--project-directory", str(self.folder), *(a for f in self.files for a in ("-f", str(f))), *args]
        proc = host.run(argv, check=False, timeout=timeout)
        return proc.returncode, (proc.stdout + proc.stderr).strip()

    def up(self, services: Sequence[str], timeout: float) -> tuple[int, str]:
        """Start (or keep) the stack's services in their order and wait until all are healthy;
        services no longer in the stack go."""
        return self.run("up", "--detach", "--wait", "--wait-timeout", str(int(timeout)), "--remove-orphans", *services, timeout=timeout + 120)

    def containers(self) -> dict[str, dict]:
        """The stack's containers by service (``ps --all``), as compose reports them."""
        code, out = self.run("ps", "--all", "--format", "json", timeout=60)
        if code != 0:
            raise DeployError(f"docker compose ps failed:\n{out[-2000:]}")
        rows: list = []
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("["):
                rows += json.loads(line)
            elif line.startswith("{"):
                rows.append(json.loads(line))
        return {r["Service"]: r for r in rows if isinstance(r, dict) and isinstance(r.get("Service"), str)}


def driver_major(query: Callable[[], str]) -> int | None:
    """The NVIDIA driver's major version (None: no driver on this host)."""
    try:
        text = query()
    except (CommandError, MissingToolError):
        return None
    match = re.match(r"\s*([0-9]{2,4})\.", text)
    if match is None:
        raise DeployError(f"nvidia-smi answered {text[:80]!r}, not a driver version")
    return int(match.group(1))


def preflight(fleet: Fleet, machine: str, services: Sequence[str]) -> list[str]:
    """The engine and compose answer; with GPU services on a GPU machine, the driver (R1) and the
    NVIDIA container runtime. Notes on what was skipped, and why."""
    try:
        host.run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
        host.run(["docker", "compose", "version", "--short"], timeout=30)
    except (CommandError, MissingToolError) as exc:
        raise DeployError(f"preflight: the Docker engine or compose does not answer: {exc}") from exc
    gpu = [s for s in services if fleet.families[fleet.services[s].family].gpu]
    if not (gpu and fleet.machines[machine].has_gpu):
        return ["preflight: GPU checks skipped: no GPU service in this deploy"]
    major = driver_major(lambda: host.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=30).stdout)
    if major is None:
        return [f"preflight: GPU checks skipped: this host has no NVIDIA driver (nvidia-smi); {', '.join(gpu)} cannot start here"]
    if major < MIN_DRIVER:
        raise DeployError(f"preflight: the NVIDIA driver is {major}.x; CUDA 12.1 needs {MIN_DRIVER} or newer (blueprint R1): update the driver")
    runtimes = host.run(["docker", "info", "--format", "{{json .Runtimes}}"], timeout=30).stdout
    if "nvidia" not in runtimes:
        raise DeployError("preflight: the engine has no NVIDIA container runtime; install nvidia-container-toolkit and configure it for Docker")
    return [f"preflight: NVIDIA driver {major}.x and the nvidia runtime are there"]


def _health_log(container: str) -> str:
    if not CONTAINER_ID.fullmatch(container):
        return ""
    proc = host.run(["docker", "inspect", "--format", "{{json .State.Health}}", container], check=False, timeout=30)
    try:
        logs = (json.loads(proc.stdout) or {}).get("Log") or []
    except ValueError:
        return ""
    return str(logs[-1].get("Output", "")).strip()[-500:] if logs else ""


def failing(compose: Compose, services: Sequence[str]) -> list[str]:
    """Each service that is not running healthy, with its state and last health log."""
    rows = compose.containers()
    out = []
    for name in services:
        row = rows.get(name)
        if row is None:
            out.append(f"{name}: not started")
        elif row.get("State") != "running":
            state = row.get("State")
            exit_code = f", exit code {row.get('ExitCode')}"  # restarting: the code of its last exit (137: out of memory or killed)
            why = {"exited": exit_code, "restarting": exit_code, "created": " (not started: what it depends on did not become healthy)"}.get(str(state), "")
            out.append(f"{name}: {state}{why}")
        elif row.get("Health") != "healthy":
            log = _health_log(str(row.get("ID", "")))
            out.append(f"{name}: running, {row.get('Health') or 'no health check'}" + (f"; last health check: {log}" if log else ""))
    return out


def deploy(folder: Path, stack: str, release: str, *, services: Sequence[str], overrides: Sequence[Path], timeout: float,
           say: Callable[[str], None] = lambda line: None) -> Outcome:  # fmt: skip
    """Bring ``stack`` up in ``folder``: pull, up until every service (or those named, with what
    they depend on) is healthy; on failure, back to ``deployed.yaml`` and DeployError."""
    folder = owned_dir(folder, what="deploy folder")
    target = folder / "compose.yaml"
    atomic_write(target, stack)
    compose = Compose(folder, target, overrides)
    outcome = Outcome(release=release)
    code, out = compose.run("config", "--quiet", timeout=60)
    if code != 0:
        raise DeployError(f"compose refuses {target}:\n{out[-2000:]}")
    before = {s: str(r.get("ID", "")) for s, r in compose.containers().items() if r.get("State") == "running"}
    start = time.monotonic()
    code, out = compose.run("pull", "--quiet", *services, timeout=3600)
    outcome.seconds["pull"] = time.monotonic() - start
    if code != 0:
        raise DeployError(f"pulling the images of {release} failed; nothing was started or stopped:\n{out[-2000:]}")
    say(f"pulled in {outcome.seconds['pull']:.1f}s; starting the layers in order")
    start = time.monotonic()
    code, out = compose.up(services, timeout)
    outcome.seconds["up"] = time.monotonic() - start
    rows = compose.containers()
    names = list(services) or sorted(rows)
    bad = failing(compose, names) if code == 0 else failing(compose, sorted(rows) or names)
    if code != 0 or bad:
        reasons = "\n".join(f"  - {b}" for b in bad) or f"  compose: {out[-1500:]}"
        back = _restore(folder, overrides, services, timeout)
        raise DeployError(f"release {release} did not come up healthy on this machine:\n{reasons}\n{back}")
    for name, row in sorted(rows.items()):
        (outcome.kept if before.get(name) == str(row.get("ID", "")) else outcome.started).append(name)
    deployed = folder / "deployed.yaml"
    if deployed.is_file() and deployed.read_text() != stack:
        shutil.copyfile(deployed, folder / "previous.yaml")
    atomic_write(deployed, stack)
    return outcome


def _restore(folder: Path, overrides: Sequence[Path], services: Sequence[str], timeout: float) -> str:
    """What ran before runs again: ``deployed.yaml``, or nothing of the stack on a first deploy."""
    deployed = folder / "deployed.yaml"
    if not deployed.is_file():
        code, out = Compose(folder, folder / "compose.yaml", overrides).run("down", "--remove-orphans", timeout=600)  # containers only, never volumes
        return "no stack ran here before: its containers were removed" if code == 0 else f"removing its containers failed too:\n{out[-1500:]}"
    code, out = Compose(folder, deployed, overrides).up(services, timeout)
    if code != 0:
        return f"bringing back the stack that ran before ({deployed}) failed too:\n{out[-1500:]}"
    return f"every service runs the stack that ran before again ({deployed})"
