"""Engine bring-up decisions, with the command runner faked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildtool.adapters import setup as engine
from buildtool.core.errors import CommandError, EngineError


def test_no_engine_off_debian_gives_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine, "_engine_ok", lambda: None)
    monkeypatch.setattr(engine, "is_debian", lambda: False)
    with pytest.raises(EngineError, match="containerd-snapshotter") as info:
        engine.ensure_engine(state_dir=tmp_path)
    assert info.value.exit_code == 7


def test_engine_without_containerd_store_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fake_run(argv, **kwargs):
        if "{{json .DriverStatus}}" in argv:
            return subprocess.CompletedProcess(argv, 0, '[["Backing Filesystem","extfs"]]', "")
        return subprocess.CompletedProcess(argv, 0, "26.1.5", "")

    monkeypatch.setattr(engine.host, "run", fake_run)
    with pytest.raises(EngineError, match="containerd image store"):
        engine.ensure_engine(state_dir=tmp_path)


def test_missing_packages_as_non_root_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_installed", lambda p: p == "docker.io")
    monkeypatch.setattr(engine, "can_install", lambda: False)
    with pytest.raises(EngineError, match="apt-get install mmdebstrap"):
        engine.ensure_host_packages(["docker.io", "mmdebstrap"])


def test_registry_only_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="only loopback"):
        engine.ensure_registry("10.0.0.5:5000", storage_dir=tmp_path, state_dir=tmp_path)


def test_failed_engine_check_counts_as_no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(argv, **kwargs):
        raise CommandError(list(argv), 1, "Cannot connect to the Docker daemon")

    monkeypatch.setattr(engine.host, "run", failing)
    assert engine._engine_ok() is None


def test_root_commands_go_through_sudo_for_a_runner_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hosted CI runner's user is not root but has passwordless sudo: mmdebstrap and apt run through it."""
    from buildtool.adapters import host

    monkeypatch.setattr(host.os, "geteuid", lambda: 1001)
    assert host.as_root(["mmdebstrap", "jammy"], {"SOURCE_DATE_EPOCH": "1"}) == ["sudo", "-n", "env", "SOURCE_DATE_EPOCH=1", "mmdebstrap", "jammy"]
    monkeypatch.setattr(host.os, "geteuid", lambda: 0)
    assert host.as_root(["apt-get", "update"]) == ["apt-get", "update"]


def test_a_failed_engine_call_names_the_engine_or_the_registry_when_they_are_gone() -> None:
    from python_on_whales.exceptions import DockerException

    from buildtool.adapters.engine import _failed
    from buildtool.core.errors import BuildError

    def exc(stderr: str) -> DockerException:
        return DockerException(["docker", "buildx", "build"], 1, stdout=b"", stderr=stderr.encode())

    gone = _failed("build of r/x:id-1", exc("ERROR: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"))
    assert isinstance(gone, EngineError) and gone.message.startswith("the Docker engine stopped answering during build of r/x:id-1")
    assert "The next run starts it again" in gone.message
    registry = _failed("push of r/x:id-1", exc("Put http://127.0.0.1:5000/v2/: dial tcp 127.0.0.1:5000: connect: connection refused"))
    assert isinstance(registry, EngineError) and registry.message.startswith("the registry stopped answering during push of r/x:id-1")
    own = _failed("build of r/x:id-1", exc("RUN false: exit code 1"), " (log: /l)")
    assert type(own) is BuildError and own.message == "build of r/x:id-1 failed (log: /l):\nRUN false: exit code 1"
