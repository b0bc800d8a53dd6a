"""Make sure a container engine with buildx and a registry are there, starting them if needed.

On a Debian host (as root) a missing engine is installed from Debian trixie (Docker 26 with
buildx; bookworm's docker.io has no buildx) and started with the containerd image store, which
the registry cache needs. A missing loopback registry is Debian's docker-registry, storing its
data outside the checkout so it survives restarts. Elsewhere the user gets instructions.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from buildtool import cmd
from buildtool.errors import CommandError, EngineError, MissingToolError
from buildtool.registry import is_loopback

log = logging.getLogger("buildtool.engine")

TRIXIE_SOURCE = Path("/etc/apt/sources.list.d/fleet-trixie.sources")
TRIXIE_PIN = Path("/etc/apt/preferences.d/fleet-trixie.pref")
DAEMON_JSON = Path("/etc/docker/daemon.json")
DAEMON_SETTINGS = {"features": {"containerd-snapshotter": True}, "bridge": "none", "iptables": False}

ENGINE_HELP = (
    "no Docker engine with buildx is running. Install Docker Engine >= 24 with the buildx plugin, "
    "enable the containerd image store (daemon.json: {\"features\": {\"containerd-snapshotter\": true}}), "
    "start it, and run again"
)

_apt_updated = False
# Daemons started by this process. They outlive it on purpose; holding the handles keeps
# Popen from warning that they still run when the handle is collected.
_daemons: list[subprocess.Popen[bytes]] = []


def is_debian() -> bool:
    return Path("/etc/debian_version").is_file()


def can_install() -> bool:
    return is_debian() and os.geteuid() == 0


def _installed(package: str) -> bool:
    try:
        out = cmd.run(["dpkg-query", "-W", "-f=${Status}", package], check=False).stdout
    except MissingToolError:
        return False
    return "install ok installed" in out


def ensure_host_packages(packages: list[str], *, release: str | None = None) -> None:
    """Install the Debian packages that are missing (``release``: take them from that suite)."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    if not can_install():
        raise EngineError(f"missing host packages {', '.join(missing)}; install them (as root: apt-get install {' '.join(missing)})")
    global _apt_updated
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    if not _apt_updated:
        cmd.run(["apt-get", *lock, "update", "-qq"], timeout=900)
        _apt_updated = True
    target = ["-t", release] if release else []
    log.info("installing %s", " ".join(missing))
    cmd.run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *target, *missing], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=1800)


def _engine_ok() -> str | None:
    try:
        version = cmd.run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30).stdout.strip()
        cmd.run(["docker", "buildx", "version"], timeout=30)
    except (CommandError, MissingToolError):
        return None
    return version or None


def _add_trixie() -> None:
    if not TRIXIE_SOURCE.exists():
        TRIXIE_SOURCE.write_text(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        global _apt_updated
        _apt_updated = False
    if not TRIXIE_PIN.exists():
        # Priority 100: nothing else on the host moves to trixie unless asked for by name.
        TRIXIE_PIN.write_text("Package: *\nPin: release n=trixie\nPin-Priority: 100\n")


def _write_daemon_json() -> None:
    current = json.loads(DAEMON_JSON.read_text()) if DAEMON_JSON.is_file() else {}
    merged = {**current, **DAEMON_SETTINGS, "features": {**current.get("features", {}), **DAEMON_SETTINGS["features"]}}
    if merged != current:
        DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
        DAEMON_JSON.write_text(json.dumps(merged, indent=2) + "\n")


def start_detached(argv: list[str], logfile: Path) -> None:
    """Start a long-running daemon in its own session, logging to ``logfile``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting %s (log: %s)", " ".join(argv), logfile)
    with logfile.open("ab") as out:
        _daemons.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))


def _wait(check, what: str, timeout: float, logfile: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-15:]) if logfile.is_file() else ""
    raise EngineError(f"{what} did not come up within {timeout:.0f}s (log: {logfile})\n{tail}")


def ensure_engine(*, state_dir: Path) -> str:
    """Return the engine version, installing and starting the engine first where needed."""
    version = _engine_ok()
    if version:
        _check_image_store()
        return version
    if not can_install():
        raise EngineError(ENGINE_HELP)
    if not (_installed("docker.io") and _installed("docker-buildx")):
        _add_trixie()
        ensure_host_packages(["docker.io", "docker-buildx"], release="trixie")
    _write_daemon_json()
    logfile = state_dir / "dockerd.log"
    start_detached(["dockerd"], logfile)
    version = _wait(_engine_ok, "the Docker engine", 90, logfile)
    _check_image_store()
    return version


def _check_image_store() -> None:
    status = cmd.run(["docker", "info", "--format", "{{json .DriverStatus}}"], timeout=30).stdout
    if "io.containerd.snapshotter" not in status:
        raise EngineError(
            "the Docker engine does not use the containerd image store, so its default builder cannot "
            f'export a registry cache; add {{"features": {{"containerd-snapshotter": true}}}} to {DAEMON_JSON} and restart dockerd'
        )


def _registry_up(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
            return True
    except OSError:
        return False


def ensure_registry(address: str, *, storage_dir: Path, state_dir: Path) -> None:
    """Make sure a loopback registry answers at ``address``, starting Debian's docker-registry if not."""
    if not is_loopback(address):
        raise EngineError(f"refusing to start a registry on {address}: only loopback addresses; set FLEET_REGISTRY to a running registry")
    if _registry_up(address):
        return
    ensure_host_packages(["docker-registry"])
    storage_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "registry.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage_dir}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n"
    )
    logfile = state_dir / "registry.log"
    start_detached(["docker-registry", "serve", str(config)], logfile)
    _wait(lambda: _registry_up(address), f"the registry on {address}", 30, logfile)
