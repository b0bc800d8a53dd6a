"""Bringing up the engine, the local registry and a bootstrapped root filesystem.

The tests marked ``engine`` do it for real (installing from Debian where needed, as root); the
others check the decisions with the command runner faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

from buildtool.adapters import bootstrap
from buildtool.adapters import setup as engine
from buildtool.core.errors import EngineError, MissingToolError
from tests.conftest import REPO

ADDRESS = "127.0.0.1:5000"
BASE_PACKAGES = ["python3-minimal", "libpython3.11-stdlib", "python3-venv", "tini", "ca-certificates"]
EPOCH = 1735689600


def _state() -> Path:
    return Path(os.environ.get("FLEET_TEST_STATE_DIR", REPO / "build" / "test-state"))


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


@pytest.mark.engine
def test_bootstrap_rootfs_has_python_and_tini() -> None:
    out = _state() / "rootfs" / "test-bookworm-base.tar"
    path = bootstrap.bootstrap_rootfs(suite="bookworm", packages=BASE_PACKAGES, out=out, source_date_epoch=EPOCH)
    with tarfile.open(path) as tar:
        names = {name.removeprefix("./") for name in tar.getnames()}
    assert {"usr/bin/python3.11", "usr/bin/tini"} <= names
    assert not {"etc/resolv.conf", "etc/hostname", "var/cache/ldconfig/aux-cache", "var/log/dpkg.log"} & names
    assert Path(f"{path}.sha256").is_file()


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
            Path(argv[argv.index("bookworm") + 1]).write_bytes(b"tar")
        return _done(argv, "install ok installed")

    monkeypatch.setattr(engine.host, "run", fake)
    out = tmp_path / "rootfs.tar"
    args = {"suite": "bookworm", "packages": BASE_PACKAGES, "out": out, "source_date_epoch": EPOCH}
    assert bootstrap.bootstrap_rootfs(**args) == out
    assert bootstrap.bootstrap_rootfs(**args) == out
    assert sum(c[0] == "mmdebstrap" for c in calls) == 1
    bootstrap.bootstrap_rootfs(**{**args, "source_date_epoch": EPOCH + 1})
    assert sum(c[0] == "mmdebstrap" for c in calls) == 2
    argv = next(c for c in calls if c[0] == "mmdebstrap")
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in argv
    assert any(a.startswith("deb ") and a.endswith(" bookworm-security main") for a in argv)


def test_ubuntu_suite_uses_its_archive_keyring_and_universe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap, "host_mirror", lambda archive="debian": None)
    argv = bootstrap.mmdebstrap_argv(suite="jammy", packages=["python3-minimal", "tini"], out=Path("/tmp/r.tar"), variant="minbase")
    assert f"--keyring={bootstrap.UBUNTU_KEYRING}" in argv
    assert argv[-3:] == [f"deb {bootstrap.UBUNTU_MIRROR} jammy{pocket} main universe" for pocket in ("", "-updates", "-security")]
    debian = bootstrap.mmdebstrap_argv(suite="bookworm", packages=["tini"], out=Path("/tmp/r.tar"), variant="minbase")
    assert not any(a.startswith("--keyring") for a in debian)
    assert not any("ubuntu" in a for a in debian)
