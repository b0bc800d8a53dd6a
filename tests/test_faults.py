"""Faults with the fake engine: a step past its time limit, a stop signal in the middle of a run,
two runs on one state dir. The engine tests (tests/engine/test_faults.py) do the same with real
builds, containers and signals sent from outside."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from buildtool.adapters.files import held
from buildtool.core import stopping
from buildtool.core.errors import BuildError, Interrupted
from buildtool.execute.executor import Executor
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from tests.fakes import FakeEngine, FakeRegistry, QuietProgress
from tests.test_executor import settings_for, write_rootfs


class HangingEngine(FakeEngine):
    """Builds of ``hang`` never end by themselves: only removing the run's containers (what
    cancelling does, along with ending processes) lets them fail, as a killed build would."""

    def __init__(self, registry: FakeRegistry, hang: str) -> None:
        super().__init__(registry)
        self.hang = hang
        self.released = threading.Event()
        self.hanging = threading.Event()

    def build(self, **kwargs):
        if f"/{self.hang}:" in kwargs["tag"]:
            self.hanging.set()
            if not self.released.wait(30):
                raise AssertionError("nothing ended the hanging build")
            raise BuildError(f"build of {kwargs['tag']} failed: killed")
        return super().build(**kwargs)

    def remove_containers(self, image: str = "") -> int:
        self.released.set()
        return 0


def executor(fleet_dir: Path, tmp_path: Path, engine: FakeEngine, registry: FakeRegistry, **env: str) -> Executor:
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, services=["ServiceRegistry"])
    settings = settings_for(fleet, tmp_path / "state", **env)
    return Executor(plan, settings=settings, engine=engine, registry=registry, progress=QuietProgress(), bootstrap=write_rootfs)


def test_a_step_past_its_time_limit_is_ended_and_named(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    engine = HangingEngine(registry, "base-cpu-pydeps")
    results = {r.repository: r for r in executor(fleet_dir, tmp_path, engine, registry, FLEET_STEP_TIME_LIMIT="1").run()}
    failed = results["base-cpu-pydeps"]
    assert failed.status == "failed" and failed.message.startswith("base-cpu-pydeps: stopped after its time limit of 1s")
    assert "time_limit_minutes in families/base-cpu-pydeps.toml" in failed.message
    assert results["family-web"].status == "blocked" and results["base-utils"].status == "built"


def test_the_family_time_limit_applies_without_the_override(fleet_dir: Path, tmp_path: Path) -> None:
    run = executor(fleet_dir, tmp_path, FakeEngine(FakeRegistry()), FakeRegistry())
    assert {run._limit(s) for s in run.plan.steps} == {3600.0}  # time_limit_minutes defaults to 60


def test_a_stop_signal_cancels_the_running_steps_and_says_what_finished(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    engine = HangingEngine(registry, "base-cpu-pydeps")
    run = executor(fleet_dir, tmp_path, engine, registry)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stopping.install()
    try:
        threading.Thread(target=lambda: engine.hanging.wait(10) and os.kill(os.getpid(), signal.SIGTERM), daemon=True).start()
        with pytest.raises(Interrupted) as caught:
            run.run()
    finally:
        stopping.reset()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert caught.value.exit_code == 143 and engine.released.is_set()
    message = caught.value.message
    # base-cpu-pydeps started once base-utils was in the engine: its ancestors may still be on their way to the registry.
    said = re.fullmatch(r"stopped by SIGTERM: cancelled (\d) image\(s\) \(([^)]*)\); (\d) finished and pushed by identity, which the next run "
                        r"reuses; no release tag was moved", message)  # fmt: skip
    assert said, message
    cancelled = said.group(2).split(", ")
    assert cancelled[-3:] == ["base-cpu-pydeps", "family-web", "service-registry-mainpc"]
    assert int(said.group(1)) == len(cancelled) and len(cancelled) + int(said.group(3)) == 5
    pushed = {repo.split("/")[1] for repo, _ in registry.entries if not repo.endswith("-builder")}
    assert {"base-python", "base-utils"} - set(cancelled) <= pushed <= {"base-python", "base-utils"}  # what finished is in the registry, their children are not


def test_an_image_waiting_for_a_build_slot_starts_nothing_once_the_run_was_stopped(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    engine = HangingEngine(registry, "service-registry-mainpc")
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, services=["ServiceRegistry", "CloudTranslationService"], machines=["mainpc"])
    settings = dataclasses.replace(settings_for(fleet, tmp_path / "state"), jobs=1)  # the other service waits for the one build slot
    run = Executor(plan, settings=settings, engine=engine, registry=registry, progress=QuietProgress(), bootstrap=write_rootfs)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stopping.install()
    try:
        builds_at_stop: list[int] = []
        threading.Thread(target=lambda: engine.hanging.wait(10) and (builds_at_stop.append(len(engine.builds)), os.kill(os.getpid(), signal.SIGTERM)),
                         daemon=True).start()  # fmt: skip
        with pytest.raises(Interrupted):
            run.run()
        time.sleep(1.0)  # what a worker would start after the stop, it starts now
    finally:
        stopping.reset()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert len(engine.builds) == builds_at_stop[0]  # the other service, had it waited for the slot, never started


def test_a_signal_inside_a_deferred_block_waits_for_its_end() -> None:
    previous = signal.getsignal(signal.SIGINT)
    stopping.install()
    done = []
    try:
        with pytest.raises(Interrupted) as caught, stopping.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block ran to its end")
    finally:
        stopping.reset()
        signal.signal(signal.SIGINT, previous)
    assert done and caught.value.exit_code == 130


def test_a_second_holder_of_the_state_dir_waits_and_is_told_who_holds_it(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    told: list[str] = []
    entered = threading.Event()

    def second_run() -> None:
        with held(lock, waiting=told.append):
            entered.set()

    with held(lock, waiting=told.append):
        second = threading.Thread(target=second_run)
        second.start()
        second.join(0.5)
        assert not entered.is_set() and told and told[0].startswith(f"pid {os.getpid()}: ")
    second.join(5)
    assert entered.is_set()


def test_a_full_disk_leaves_the_old_file_whole_and_says_where_and_how_much(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from buildtool.adapters import files
    from buildtool.core.errors import OutputError

    report = tmp_path / "reports" / "sizes.json"
    files.atomic_write(report, "old")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OutputError) as caught:
        files.atomic_write(report, "x" * 3 * 2**20)
    assert report.read_text() == "old" and [p.name for p in report.parent.iterdir()] == ["sizes.json"]  # no temporary file left
    assert caught.value.message.startswith(f"{report} was not written (it keeps its old content): the disk holding {report.parent} is full (")
    assert "3.0 MB needed" in caught.value.message and "nox -s prune" in caught.value.message


def test_a_build_on_a_full_disk_names_the_engine_s_disk() -> None:
    from python_on_whales.exceptions import DockerException

    from buildtool.adapters.engine import _failed
    from buildtool.core.errors import EngineError

    exc = DockerException(["docker", "buildx", "build"], 1, stdout=b"", stderr=b"ERROR: failed to copy: write /var/lib/docker/x: no space left on device")
    failed = _failed("build of r/x:id-1", exc)
    assert isinstance(failed, EngineError) and failed.message.startswith("build of r/x:id-1 failed: the disk holding /var/lib/docker is full (")
