"""Bringing up the engine, the local registry and a bootstrapped root filesystem.

The tests marked ``engine`` do it for real (installing from Debian where needed, as root); the
others check the decisions with the command runner faked.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

from buildtool.adapters import bootstrap
from buildtool.adapters import setup as engine
from buildtool.core.dpkg import versions
from buildtool.core.errors import BuildError, CommandError, EngineError, LockError, MissingToolError
from buildtool.model.load import load_fleet
from tests.conftest import REPO
from tests.engine.helpers import state_dir

ADDRESS = "127.0.0.1:5000"
BASE_PACKAGES = ["python3-minimal", "libpython3.11-stdlib", "tini", "ca-certificates"]
EPOCH = 1735689600


def _state() -> Path:
    return state_dir()


def _done(argv, stdout: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(list(argv), 0, stdout, "")


# --- real -----------------------------------------------------------------------------------


@pytest.mark.engine
def test_engine_is_up_with_buildx() -> None:
    version = engine.ensure_engine(state_dir=_state())
    assert version
    assert "buildx" in engine.host.run(["docker", "buildx", "version"], timeout=30).stdout


@pytest.mark.engine
def test_registry_serves_v2_on_loopback() -> None:
    storage = Path(os.environ.get("FLEET_REGISTRY_STORAGE", "/var/lib/fleet-registry"))
    assert engine.ensure_registry(ADDRESS, storage_dir=storage, state_dir=_state()) == ADDRESS
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{ADDRESS}/v2/", timeout=5) as resp:
        assert resp.status == 200


def _tar_names(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {name.removeprefix("./") for name in tar.getnames()}


@pytest.mark.engine
def test_locked_roots_install_exactly_the_lock_and_the_runtime_root_is_lean() -> None:
    """Both roots of base-python from its committed OS lock: every package at its locked version
    (the bootstrap's check hook compares dpkg's database with the lock), the runtime trimmed."""
    fleet = load_fleet(REPO)
    base = fleet.families["base-python"]
    assert base.root is not None
    lock = fleet.os_lock("base-python")
    paths = {}
    for variant in ("runtime", "builder"):
        out = _state() / "rootfs" / f"test-bookworm-{variant}.tar"
        paths[variant] = bootstrap.bootstrap_rootfs(suite="bookworm", variant=variant, packages=base.root.packages,
                                                    builder_packages=base.root.builder_packages, pins=lock.pins(f"root-{variant}"),
                                                    out=out, source_date_epoch=EPOCH)  # fmt: skip
        assert Path(f"{out}.sha256").is_file()
    runtime, builder = _tar_names(paths["runtime"]), _tar_names(paths["builder"])
    for names in (runtime, builder):
        assert {"usr/bin/python3.11", "usr/bin/tini", "opt/venv/bin/python", "etc/os-release"} <= names
        assert not {"etc/resolv.conf", "etc/hostname", "var/cache/ldconfig/aux-cache", "var/log/dpkg.log"} & names
        assert "bin" not in {n.split("/")[0] for n in names if "/" in n}  # merged /usr: /bin is a link
    assert {"opt/venv/bin/pip", "usr/bin/apt-get", "usr/bin/dpkg"} <= builder
    assert not {"opt/venv/bin/pip", "usr/bin/apt-get", "usr/bin/dpkg", "usr/bin/perl", "usr/bin/bash", "usr/bin/su"} & runtime
    assert not [n for n in runtime if n.startswith("usr/share/man/") or n.startswith("usr/lib/x86_64-linux-gnu/perl")]
    # The status database stays, trimmed to what is there: what scanners read.
    with tarfile.open(paths["runtime"]) as tar:
        status = tar.extractfile("./var/lib/dpkg/status").read().decode()
    installed = versions(status)
    locked = lock.pins("root-runtime")
    assert {"python3.11-minimal", "libc6", "tini", "ca-certificates", "libssl3"} <= set(installed)
    assert not {"perl-base", "dpkg", "apt", "debconf", "bash", "login"} & set(installed)
    assert all(locked[name] == version for name, version in installed.items())
    assert all(f"var/lib/dpkg/info/{name}.list" in runtime or f"var/lib/dpkg/info/{name}:amd64.list" in runtime for name in installed)


# --- decisions, runner faked ----------------------------------------------------------------


def test_no_engine_off_debian_raises_with_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_docker(argv, **kwargs):
        raise MissingToolError(f"'{argv[0]}' is not installed")

    monkeypatch.setattr(engine.host, "run", no_docker)
    monkeypatch.setattr(engine, "is_debian", lambda: False)
    monkeypatch.setattr(engine, "start_detached", lambda *a: pytest.fail("must not start anything"))
    with pytest.raises(EngineError) as info:
        engine.ensure_engine(state_dir=tmp_path)
    assert info.value.exit_code == 7
    for hint in ("buildx", "containerd-snapshotter", "docker.io/trixie", "Pin-Priority 100"):
        assert hint in info.value.message


def test_running_engine_is_used_as_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake(argv, **kwargs):
        calls.append(list(argv))
        if "{{json .DriverStatus}}" in argv:
            return _done(argv, '[["driver-type","io.containerd.snapshotter.v1"]]')
        return _done(argv, "26.1.5\n")

    monkeypatch.setattr(engine.host, "run", fake)
    monkeypatch.setattr(engine, "install_engine", lambda: pytest.fail("must not install"))
    assert engine.ensure_engine(state_dir=tmp_path) == "26.1.5"
    assert all(argv[0] == "docker" for argv in calls)


def test_only_engine_packages_come_from_trixie(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(engine, "_installed", lambda p: p == "docker-cli")
    monkeypatch.setattr(engine, "can_install", lambda: True)
    monkeypatch.setattr(engine, "_apt_updated", False)
    monkeypatch.setattr(engine.host, "run", lambda argv, **kw: calls.append(list(argv)) or _done(argv))
    engine.ensure_host_packages(["docker.io", "docker-buildx", "docker-cli"], apt_target_release="trixie")
    engine.ensure_host_packages(["mmdebstrap"])
    updates = [c for c in calls if "update" in c]
    installs = [c for c in calls if "install" in c]
    assert len(updates) == 1, "apt-get update runs once per process"
    assert installs[0][-2:] == ["docker.io/trixie", "docker-buildx/trixie"]
    assert "-t" not in installs[0], "-t would move every dependency (libc6, python3) to trixie"
    assert installs[1][-1] == "mmdebstrap"


def test_missing_packages_as_non_root_name_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_installed", lambda p: False)
    monkeypatch.setattr(engine, "can_install", lambda: False)
    with pytest.raises(EngineError, match=r"apt-get install docker.io/trixie"):
        engine.ensure_host_packages(["docker.io"], apt_target_release="trixie")


def test_trixie_source_and_daemon_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine, "TRIXIE_SOURCE", tmp_path / "trixie.sources")
    monkeypatch.setattr(engine, "TRIXIE_PIN", tmp_path / "trixie.pref")
    monkeypatch.setattr(engine, "DAEMON_JSON", tmp_path / "docker" / "daemon.json")
    engine.add_trixie_source()
    engine.add_trixie_source()
    assert "Suites: trixie" in engine.TRIXIE_SOURCE.read_text()
    assert "Pin-Priority: 100" in engine.TRIXIE_PIN.read_text()
    engine.DAEMON_JSON.parent.mkdir()
    engine.DAEMON_JSON.write_text(json.dumps({"features": {"other": True}, "bridge": "docker0", "log-level": "warn"}))
    engine.write_daemon_json()
    assert json.loads(engine.DAEMON_JSON.read_text()) == {
        "features": {"other": True, "containerd-snapshotter": True},
        "bridge": "none",
        "iptables": False,
        "log-level": "warn",
    }


def test_registry_is_never_started_off_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine, "start_detached", lambda *a: pytest.fail("must not start anything"))
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", lambda *a, **k: pytest.fail("must not probe"))
    with pytest.raises(EngineError) as info:
        engine.ensure_registry("registry.example.com:5000", storage_dir=tmp_path, state_dir=tmp_path)
    assert "registry.example.com:5000" in info.value.message
    assert "FLEET_REGISTRY" in info.value.message


def test_registry_config_keeps_data_outside_state(tmp_path: Path) -> None:
    text = engine.registry_config("127.0.0.1:5000", tmp_path / "store")
    assert "addr: 127.0.0.1:5000" in text
    assert f"rootdirectory: {tmp_path / 'store'}" in text
    assert "delete:\n    enabled: true" in text


def test_bootstrap_is_skipped_when_inputs_match(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake(argv, **kwargs):
        calls.append(list(argv))
        if argv[0] == "mmdebstrap":
            assert set(kwargs["env"]) == {"SOURCE_DATE_EPOCH"}
            _root_tar(Path(argv[argv.index("bookworm") + 1]), mtime=EPOCH)
        return _done(argv, "install ok installed")

    monkeypatch.setattr(engine.host, "run", fake)
    out = tmp_path / "rootfs.tar"
    args = {"suite": "bookworm", "variant": "runtime", "packages": BASE_PACKAGES, "pins": PINS, "out": out, "source_date_epoch": EPOCH}
    assert bootstrap.bootstrap_rootfs(**args) == out
    assert bootstrap.bootstrap_rootfs(**args) == out
    assert sum(c[0] == "mmdebstrap" for c in calls) == 1
    bootstrap.bootstrap_rootfs(**{**args, "source_date_epoch": EPOCH + 1})
    bootstrap.bootstrap_rootfs(**{**args, "pins": {**PINS, "tini": "0.19.0-2"}})
    assert sum(c[0] == "mmdebstrap" for c in calls) == 3
    argv = next(c for c in calls if c[0] == "mmdebstrap")
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in argv
    assert any(a.startswith("deb ") and a.endswith(" bookworm-security main") for a in argv)


def _root_tar(path: Path, *, mtime: int) -> None:
    with tarfile.open(path, "w") as tar:
        member = tarfile.TarInfo("etc/os-release")
        member.mtime = mtime
        tar.addfile(member, io.BytesIO(b""))


def test_a_root_with_times_after_the_epoch_is_refused_and_not_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Roots are exported without a timestamp rewrite: an unclamped tarball would break reproducible digests."""

    def late(argv, **kwargs):
        if argv[0] == "mmdebstrap":
            _root_tar(Path(argv[argv.index("bookworm") + 1]), mtime=EPOCH + 1)
        return _done(argv, "install ok installed")

    monkeypatch.setattr(engine.host, "run", late)
    out = tmp_path / "rootfs.tar"
    with pytest.raises(BuildError, match="etc/os-release"):
        bootstrap.bootstrap_rootfs(suite="bookworm", variant="runtime", packages=BASE_PACKAGES, pins=PINS, out=out, source_date_epoch=EPOCH)
    assert not out.exists() and not (tmp_path / "rootfs.tar.partial.tar").exists()


PINS = {"libc6": "2.36-9+deb12u13", "python3-minimal": "3.11.2-1+b1", "tini": "0.19.0-1"}


def test_locked_bootstrap_asks_for_every_version_and_checks_what_dpkg_installed(tmp_path: Path) -> None:
    argv = bootstrap.mmdebstrap_argv(suite="bookworm", variant="runtime", packages=[f"{n}={v}" for n, v in PINS.items()], keep=["tini"],
                                     pins=tmp_path / "pins", prefs=tmp_path / "prefs", out=tmp_path / "r.tar")  # fmt: skip
    assert "--include=libc6=2.36-9+deb12u13,python3-minimal=3.11.2-1+b1,tini=0.19.0-1" in argv
    assert f"--hook-dir={bootstrap.MERGED_USR_HOOKS}" in argv  # Debian: no usrmerge, so no perl
    hooks = [a.split("=", 1)[1] for a in argv if a.startswith("--customize-hook=")]
    # The lock check runs before the runtime is trimmed; the host's resolv.conf is removed last.
    assert "dpkg.py check" in hooks[0] and str(tmp_path / "pins") in hooks[0]
    assert "venv-user.sh" in hooks[1] and "--with-pip" not in hooks[1]
    assert "runtime-strip.sh" in hooks[2] and hooks[2].endswith(" tini")
    assert "etc/resolv.conf" in hooks[3]
    assert "--skip=cleanup/apt" in argv
    assert any(a.startswith("--setup-hook=") and str(tmp_path / "prefs") in a for a in argv)
    builder = bootstrap.mmdebstrap_argv(suite="bookworm", variant="builder", packages=["tini"], keep=[], pins=None, prefs=None,
                                        out=tmp_path / "b.tar")  # fmt: skip
    assert not any("runtime-strip.sh" in a or "dpkg.py check" in a for a in builder)
    assert any("venv-user.sh" in a and a.endswith("--with-pip") for a in builder)
    assert bootstrap.includes("jammy", "builder", ["tini"], ["python3-venv"]) == ["apt", "python3-venv", "tini"]  # jammy's minbase has no apt


def test_unserved_locked_versions_name_the_packages_and_the_relock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake(argv, **kwargs):
        if "--variant=minbase" in argv:  # the mmdebstrap run (through sudo when not root)
            raise CommandError(argv, 25, "E: Version '2.36-9+deb12u1' for 'libc6' was not found\nE: setup failed\n")
        return _done(argv, "install ok installed")

    monkeypatch.setattr(engine.host, "run", fake)
    with pytest.raises(LockError) as info:
        bootstrap.bootstrap_rootfs(suite="bookworm", variant="runtime", packages=["tini"], pins=PINS, out=tmp_path / "r.tar", source_date_epoch=EPOCH)
    assert "no longer serves the locked libc6 2.36-9+deb12u1" in info.value.message
    assert "nox -s lock -- --upgrade-package libc6" in info.value.message
    assert info.value.exit_code == 4
    assert not (tmp_path / "r.tar").exists()


def test_ubuntu_suite_uses_its_archive_keyring_and_universe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap, "host_mirror", lambda archive="debian": None)
    common = {"keep": [], "pins": None, "prefs": None, "out": Path("/tmp/r.tar"), "variant": "builder"}
    argv = bootstrap.mmdebstrap_argv(suite="jammy", packages=["python3-minimal", "tini"], **common)
    assert f"--keyring={bootstrap.UBUNTU_KEYRING}" in argv
    # Ubuntu's keys ship with the toolkit: no host package to install (bookworm 12.15 no longer carries ubuntu-keyring).
    assert Path(bootstrap.UBUNTU_KEYRING).is_relative_to(Path(bootstrap.__file__).parent)
    assert Path(bootstrap.UBUNTU_KEYRING).stat().st_size > 0
    assert not any(a.startswith("--hook-dir") for a in argv)  # jammy has no usr-is-merged to swap in
    assert argv[-3:] == [f"deb {bootstrap.UBUNTU_MIRROR} jammy{pocket} main universe" for pocket in ("", "-updates", "-security")]
    debian = bootstrap.mmdebstrap_argv(suite="bookworm", packages=["tini"], **common)
    assert not any(a.startswith("--keyring") for a in debian)
    assert not any("ubuntu" in a for a in debian)
