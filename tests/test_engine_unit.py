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
