"""A build's archive check, with the registry and apt faked: it reads the OS locks of the images it
builds, before the first step, and nothing when every image is in the registry; --locked refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from buildtool import pipeline
from buildtool.core.errors import LockError
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from tests.fakes import FakeEngine, FakeRegistry, QuietProgress, ServedApt
from tests.test_executor import settings_for, write_rootfs
from tests.test_release import COMMIT


class Replaced(ServedApt):
    """An archive that replaced one version of every lock that pins ``package``."""

    def __init__(self, package: str) -> None:
        super().__init__()
        self.package = package

    def unserved(self, *, pins, cache, **source) -> list[tuple[str, str]]:
        self.asked.append(dict(pins))
        return [(self.package, pins[self.package])] if self.package in pins else []


def build(fleet_dir: Path, tmp_path: Path, registry: FakeRegistry, apt: ServedApt, **kw):
    fleet = load_fleet(fleet_dir)
    engine = FakeEngine(registry)
    plan = make_plan(fleet, services=["NLUAgent"])
    settings = dataclasses.replace(settings_for(fleet, tmp_path / "state"), scan=False)
    pipeline.build(settings, fleet, plan, progress=QuietProgress(), engine=engine, registry=registry, bootstrap=write_rootfs, resolver=apt,
                   commit=COMMIT, **kw)  # fmt: skip
    return engine


def test_locked_refuses_before_the_first_step_naming_each_package_and_the_refresh(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    apt = Replaced("ca-certificates")
    with pytest.raises(LockError) as exc:
        build(fleet_dir, tmp_path, registry, apt, locked=True)
    message = exc.value.message
    assert message.startswith("--locked: the archive no longer serves versions the OS locks of these images name; nothing was built")
    version = dict(load_fleet(fleet_dir).os_lock("legacy-py310-cpu").pins("root-builder"))["ca-certificates"]
    assert f"lockfiles/os/legacy-py310-cpu.txt: ca-certificates {version} no longer served by the jammy archive" in message
    assert "`nox -s refresh`" in message and "--upgrade-package ca-certificates" in message
    assert registry.entries == {}  # nothing built, pushed or tagged


def test_the_archive_is_read_only_for_what_is_built(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    build(fleet_dir, tmp_path, registry, ServedApt(), tag="r1")  # the first build: legacy's root and NLUAgent
    apt = Replaced("ca-certificates")
    engine = build(fleet_dir, tmp_path, registry, apt, locked=True, tag="r2")  # everything in the registry: no-op
    assert apt.asked == [] and engine.builds == []
    # The service's code changes: it builds, and installs no OS package: still nothing is read.
    agent = fleet_dir / "agents" / "legacy_agent"
    agent.mkdir()
    (agent / "agent.py").write_text("print('hello')\n")
    svc = fleet_dir / "services" / "NLUAgent.toml"
    svc.write_text(svc.read_text() + 'source = "agents/legacy_agent"\n')
    engine = build(fleet_dir, tmp_path, registry, apt, locked=True, tag="r3")
    assert apt.asked == [] and [b[0].rsplit("/", 1)[1].split(":")[0] for b in engine.builds] == ["nlu-agent-mainpc"]
