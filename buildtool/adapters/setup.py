"""Make sure a container engine with buildx and a registry are there, starting them if needed.

On a Debian host (as root) a missing engine is installed from Debian trixie (Docker 26 with
buildx; bookworm's docker.io has no buildx) and started with the containerd image store, which
the registry cache needs. Only the engine packages come from trixie (``docker.io/trixie``): the
rest of the host stays on its own release. A missing loopback registry is Debian's
docker-registry, storing its data outside the checkout so it survives restarts. Elsewhere the
user gets instructions. Nothing here sends traffic to, or listens on, a non-loopback address.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from buildtool.adapters import host
from buildtool.adapters.files import is_owned
from buildtool.adapters.host import Daemon, start_detached
from buildtool.adapters.registry import is_loopback, probe
from buildtool.core.errors import CommandError, EngineError, MissingToolError

log = logging.getLogger("buildtool.engine")

T = TypeVar("T")

TRIXIE_SOURCE = Path("/etc/apt/sources.list.d/fleet-trixie.sources")
TRIXIE_PIN = Path("/etc/apt/preferences.d/fleet-trixie.pref")
DAEMON_JSON = Path("/etc/docker/daemon.json")
DAEMON_SETTINGS = {"features": {"containerd-snapshotter": True}, "bridge": "none", "iptables": False}
ENGINE_PACKAGES = ["docker.io", "docker-buildx", "docker-cli", "docker-compose"]  # docker-compose: compose v2, for deploy
ENGINE_START_TIMEOUT = 60.0
REGISTRY_START_TIMEOUT = 30.0
DEFAULT_MIRROR = "http://deb.debian.org/debian"

ENGINE_HELP = (
    "no Docker engine with buildx is running, and this host cannot set one up by itself "
    "(that needs Debian and root). Install Docker Engine >= 24 with the buildx plugin "
    "(on Debian: add the trixie suite with Pin-Priority 100, then "
    "'apt-get install --no-install-recommends docker.io/trixie docker-buildx/trixie docker-cli/trixie'), "
    'enable the containerd image store in /etc/docker/daemon.json: {"features": {"containerd-snapshotter": true}}, '
    "start the engine and run again"
)

_apt_updated = False


# --- host packages -------------------------------------------------------------------------


def is_debian() -> bool:
    """True on Debian and its derivatives (apt and dpkg are there)."""
    return Path("/etc/debian_version").is_file()


def can_install() -> bool:
    """True where this process may install packages itself: Debian, as root or with passwordless sudo."""
    return is_debian() and host.can_be_root()


def _installed(package: str) -> bool:
    try:
        out = host.run(["dpkg-query", "-W", "-f=${Status}", package], check=False).stdout
    except MissingToolError:
        return False
    return "install ok installed" in out


def _apt_names(packages: list[str], release: str | None) -> list[str]:
    # "pkg/release" takes just these packages (and dependencies they cannot get otherwise) from
    # `release`. "-t release" would prefer `release` for every dependency and so upgrade libc6,
    # python3, systemd... on the host.
    return [f"{p}/{release}" for p in packages] if release else list(packages)


def ensure_host_packages(packages: list[str], *, apt_target_release: str | None = None) -> None:
    """Install the Debian packages of ``packages`` that are missing.

    ``apt_target_release`` takes them from that suite (its apt source must be configured).
    Runs ``apt-get update`` once per process. Off Debian or as non-root, raises
    :class:`EngineError` naming the command to run.
    """
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    names = _apt_names(missing, apt_target_release)
    if not can_install():
        raise EngineError(
            f"missing host packages: {', '.join(missing)}. Install them as root "
            f"(apt-get install {' '.join(names)}) or with your system's package manager, then run again"
        )
    _apt_update()
    log.info("installing %s", " ".join(names))
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", "--no-install-recommends", *names]
    host.run(host.as_root(argv, env), env=env, timeout=1800)


def _apt_update() -> None:
    global _apt_updated
    if not _apt_updated:
        log.info("apt-get update")
        host.run(host.as_root(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"]), timeout=900)
        _apt_updated = True


def host_mirror(archive: str = "debian") -> str | None:
    """The URI the host's apt sources use for ``archive`` ("debian" or "debian-security"), if any."""
    sources = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list")), *sorted(sources.glob("*.sources"))]
    for path in files:
        if path == TRIXIE_SOURCE or not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] not in (["deb"], ["URIs:"]):
                continue
            for uri in (w.rstrip("/") for w in words if "://" in w):
                if uri.endswith("/" + archive):
                    return uri
    return None


def add_trixie_source() -> None:
    """Add Debian trixie as an apt source pinned to priority 100 (idempotent).

    With priority 100 nothing on the host moves to trixie unless asked for by name.
    """
    source = (
        f"Types: deb\nURIs: {host_mirror() or DEFAULT_MIRROR}\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    pin = "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"
    global _apt_updated
    if _write_if_changed(TRIXIE_SOURCE, source):
        _apt_updated = False
    _write_if_changed(TRIXIE_PIN, pin)


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    log.info("writing %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


# --- engine --------------------------------------------------------------------------------


def _engine_ok() -> str | None:
    """The engine's version when both ``docker info`` and ``docker buildx version`` answer."""
    try:
        version = host.run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30).stdout.strip()
        host.run(["docker", "buildx", "version"], timeout=30)
    except (CommandError, MissingToolError):
        return None
    return version or None


def write_daemon_json() -> None:
    """Merge the engine settings this toolkit needs into /etc/docker/daemon.json."""
    current = json.loads(DAEMON_JSON.read_text()) if DAEMON_JSON.is_file() else {}
    features = {**current.get("features", {}), **DAEMON_SETTINGS["features"]}
    merged = {**current, **DAEMON_SETTINGS, "features": features}
    if merged != current:
        _write_if_changed(DAEMON_JSON, json.dumps(merged, indent=2) + "\n")


def install_engine() -> None:
    """Install Docker Engine and buildx from Debian trixie; the daemon settings go in first."""
    # daemon.json before the packages: where an init system starts dockerd on install, it
    # starts with the containerd image store already.
    write_daemon_json()
    if all(_installed(p) for p in ENGINE_PACKAGES):
        return
    add_trixie_source()
    started = time.monotonic()
    ensure_host_packages(ENGINE_PACKAGES, apt_target_release="trixie")
    log.info("engine packages installed in %.0fs", time.monotonic() - started)


def start_engine(state_dir: Path) -> str:
    """Start ``dockerd`` detached (log: ``state_dir/dockerd.log``); return its version once it answers."""
    logfile = state_dir / "dockerd.log"
    started = time.monotonic()
    proc = start_detached(["dockerd"], logfile)
    version = _wait(_engine_ok, "the Docker engine", ENGINE_START_TIMEOUT, logfile, proc)
    log.info("Docker engine %s up in %.1fs", version, time.monotonic() - started)
    return version


def engine_is_ours(proc_root: Path = Path("/proc")) -> bool:
    """Whether the running dockerd is one this toolkit started (:func:`start_engine`): its output
    goes to ``dockerd.log`` in a folder the toolkit owns. Only then is its build cache all the
    toolkit's to prune; another engine's cache holds other people's builds."""
    for proc in proc_root.glob("[0-9]*"):
        try:
            if Path((proc / "cmdline").read_bytes().split(b"\0")[0].decode()).name != "dockerd":
                continue
            log_path = Path(os.readlink(proc / "fd" / "1"))
        except (OSError, UnicodeDecodeError):
            continue
        if log_path.name == "dockerd.log" and is_owned(log_path.parent):
            return True
    return False


def check_image_store() -> None:
    """Raise unless the engine keeps images in containerd (needed to export a registry cache)."""
    status = host.run(["docker", "info", "--format", "{{json .DriverStatus}}"], timeout=30).stdout
    if "io.containerd.snapshotter" not in status:
        raise EngineError(
            "the Docker engine does not use the containerd image store, so its default builder cannot "
            f'export a registry cache (--cache-to type=registry); add {{"features": {{"containerd-snapshotter": true}}}} '
            f"to {DAEMON_JSON} and restart dockerd"
        )


COMPOSE_PACKAGE = "docker-compose"  # compose v2 (trixie: 2.26), the `docker compose` CLI plugin
COMPOSE_HELP = (
    "`docker compose` (compose v2) is missing, and this host cannot install it by itself (that needs Debian and root). "
    "Install it (on Debian: 'apt-get install --no-install-recommends docker-compose/trixie') and run again"
)


def _compose_ok() -> str | None:
    try:
        return host.run(["docker", "compose", "version", "--short"], timeout=30).stdout.strip() or None
    except (CommandError, MissingToolError):
        return None


def ensure_compose() -> str:
    """Return compose's version, installing trixie's compose v2 where it is missing (like the engine)."""
    version = _compose_ok()
    if version is None:
        if not can_install():
            raise EngineError(COMPOSE_HELP)
        add_trixie_source()
        ensure_host_packages([COMPOSE_PACKAGE], apt_target_release="trixie")
        version = _compose_ok()
        if version is None:
            raise EngineError(f"{COMPOSE_PACKAGE} was installed but `docker compose version` does not answer; {COMPOSE_HELP}")
    return version


def ensure_engine(*, state_dir: Path) -> str:
    """Return the engine version, installing and starting Docker with buildx first where needed.

    Installs only on Debian as root; elsewhere a missing engine raises :class:`EngineError`
    with what to install. Raises too when the engine cannot export a registry cache.
    """
    version = _engine_ok()
    if version is None:
        if not can_install():
            raise EngineError(ENGINE_HELP)
        install_engine()
        # An init system may have started it on install; otherwise start it here.
        version = _engine_ok() or start_engine(state_dir)
    check_image_store()
    return version


# --- registry ------------------------------------------------------------------------------


def _registry_up(address: str) -> bool:
    """True when a loopback registry answers at ``address`` (never probed through a proxy)."""
    return is_loopback(address) and probe(address)


def registry_config(address: str, storage_dir: Path) -> str:
    """The docker-registry config: listen on ``address``, keep blobs in ``storage_dir``, allow deletes."""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage_dir}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n"
    )


def ensure_registry(address: str = "127.0.0.1:5000", *, storage_dir: Path, state_dir: Path) -> str:
    """Make sure a registry answers at the loopback ``address``; return the address.

    When none answers, Debian's docker-registry is installed and started there, storing its data
    in ``storage_dir`` (kept across restarts). Non-loopback addresses are never probed nor
    started: they raise :class:`EngineError` (set FLEET_REGISTRY to a running registry).
    """
    if not is_loopback(address):
        raise EngineError(
            f"refusing to start a registry on {address}: only loopback addresses (127.0.0.1, localhost) are started here. "
            f"Start the registry at {address} yourself, or set FLEET_REGISTRY to a loopback address such as 127.0.0.1:5000"
        )
    if _registry_up(address):
        return address
    ensure_host_packages(["docker-registry"])
    storage_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "registry.yml"
    _write_if_changed(config, registry_config(address, storage_dir))
    logfile = state_dir / "registry.log"
    proc = start_detached(["docker-registry", "serve", str(config)], logfile)
    _wait(lambda: _registry_up(address), f"the registry on {address}", REGISTRY_START_TIMEOUT, logfile, proc)
    log.info("registry up on %s (storage: %s)", address, storage_dir)
    return address


def _serving(address: str) -> tuple[int, Path] | None:
    """The pid and config file of the docker-registry serving ``address`` on this host, if any."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 3 and argv[0].endswith(b"docker-registry") and argv[1] == b"serve":
            config = Path(argv[2].decode())
            if config.is_file() and f"addr: {address}" in config.read_text():
                return int(proc.name), config
    return None


def collect_garbage(address: str) -> str:
    """Free the blobs no manifest references in the loopback registry at ``address``: it is stopped,
    collected (``docker-registry garbage-collect``, untagged manifests kept: they are attached
    SBOMs and scan reports) and started again. Returns what happened, in a line."""
    found = _serving(address) if is_loopback(address) else None
    if found is None or not is_owned(found[1].parent):
        return f"no registry the toolkit started serves {address}: its storage is collected by whoever runs it"
    pid, config = found
    os.kill(pid, 15)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or not _registry_up(address):
            break
        time.sleep(0.1)
    out = host.run(["docker-registry", "garbage-collect", str(config)], timeout=3600).stdout
    logfile = config.with_suffix(".log")
    proc = start_detached(["docker-registry", "serve", str(config)], logfile)
    _wait(lambda: _registry_up(address), f"the registry on {address}", REGISTRY_START_TIMEOUT, logfile, proc)
    deleted = sum(1 for line in out.splitlines() if "blob eligible for deletion" in line)
    return f"registry {address} collected: {deleted} unreferenced blob(s) deleted"


# --- daemons -------------------------------------------------------------------------------


def _wait(check: Callable[[], T | None], what: str, timeout: float, logfile: Path, proc: Daemon | None = None) -> T:
    """Poll ``check`` until it returns a true value; fail early if ``proc`` exits, late after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise EngineError(f"{what} exited with code {proc.returncode} while starting (log: {logfile})\n{_tail(logfile)}")
        time.sleep(0.5)
    raise EngineError(f"{what} did not come up within {timeout:.0f}s (log: {logfile})\n{_tail(logfile)}")


def _tail(logfile: Path, lines: int = 15) -> str:
    return "\n".join(logfile.read_text(errors="replace").splitlines()[-lines:]) if logfile.is_file() else ""
