"""Room on disk before a build: the toolkit frees its own leftovers on the engine's disk, then
refuses (exit code 17, nothing built) when a disk is still short, and a full disk met anywhere
else is a clear error, not an internal one."""

from __future__ import annotations

import dataclasses
import errno
import threading
from pathlib import Path

import pytest

from buildtool import pipeline
from buildtool import settings as run_settings
from buildtool.adapters import engine, setup
from buildtool.cli import commands
from buildtool.cli.main import main
from buildtool.core.errors import DiskFull, EngineError
from buildtool.execute import space
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from tests.fakes import FakeRegistry, QuietProgress, ServedApt
from tests.test_executor import settings_for, write_rootfs
from tests.test_release import COMMIT

GB = space.GB


class Disk:
    """Free bytes per device, which the fake engine's prunes and removals raise."""

    def __init__(self, free: float) -> None:
        self.free = int(free * GB)

    def bytes(self, path: Path) -> int:
        return self.free


class Engine:
    """The engine as freeing space sees it: each prune or removal frees what the test says."""

    def __init__(self, disk: Disk, root: Path, *, cache: float = 0, deep: float = 0, images: float = 0) -> None:
        self.disk, self.root, self.calls = disk, root, []
        self.frees = {"cache": cache, "deep": deep, "images": images}

    def root_dir(self) -> Path:
        return self.root

    def prune_build_cache(self, keep: str) -> str:
        what = "cache" if keep else "deep"
        self.calls.append(f"prune {keep or 'all'}")
        self.disk.free += int(self.frees[what] * GB)
        return f"Total: {self.frees[what]}GB"

    def remove_images(self, prefix: str, keep_org: str, current=None) -> list[str]:
        self.calls.append(f"remove images of orgs but {keep_org}")
        self.disk.free += int(self.frees["images"] * GB)
        return ["127.0.0.1:5000/other/base-python:id-1"] if self.frees["images"] else []


@pytest.fixture
def settings(fleet_dir: Path, tmp_path: Path) -> run_settings.Settings:
    env = {"FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_PIP_CA": "/ca.crt", "FLEET_REGISTRY_STORAGE": str(tmp_path / "registry")}
    return run_settings.from_sources(load_fleet(fleet_dir), env)


def guard(monkeypatch: pytest.MonkeyPatch, free: float, *, ours: bool = True) -> Disk:
    disk = Disk(free)
    monkeypatch.setattr(space, "free_bytes", disk.bytes)
    monkeypatch.setattr(setup, "engine_is_ours", lambda: ours)
    return disk


def test_the_default_floor_is_ten_gb_and_the_environment_sets_it(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    assert run_settings.from_sources(fleet, {}).min_free_gb == 10
    assert run_settings.from_sources(fleet, {"FLEET_MIN_FREE_GB": "0"}).min_free_gb == 0
    with pytest.raises(run_settings.ConfigError, match="FLEET_MIN_FREE_GB: '10; rm -rf /' is not a number of GB"):
        run_settings.from_sources(fleet, {"FLEET_MIN_FREE_GB": "10; rm -rf /"})


def test_enough_room_frees_nothing(settings, monkeypatch, tmp_path) -> None:
    guard(monkeypatch, free=50)
    docker = Engine(Disk(0), tmp_path)
    assert space.ensure_space(settings, docker) == []
    assert docker.calls == []


def test_short_on_the_engines_disk_frees_cache_beyond_its_limit_and_other_orgs_images(settings, monkeypatch, tmp_path) -> None:
    disk = guard(monkeypatch, free=4)
    docker = Engine(disk, tmp_path, cache=3, images=4)
    lines = space.ensure_space(settings, docker)
    assert docker.calls == ["prune 20gb", "remove images of orgs but fleet"]  # enough: the cache under its limit stays
    assert lines == ["build cache: Total: 3GB (kept up to 20gb)", "local images the toolkit built for other orgs: 1 removed"]


def test_still_short_then_all_the_cache_goes_before_a_refusal(settings, monkeypatch, tmp_path) -> None:
    disk = guard(monkeypatch, free=1)
    docker = Engine(disk, tmp_path, cache=1, deep=2, images=1)
    with pytest.raises(DiskFull) as refused:
        space.ensure_space(settings, docker)
    assert docker.calls == ["prune 20gb", "remove images of orgs but fleet", "prune all"]
    message = refused.value.message
    assert f"{tmp_path}: 5.0 GB free" in message and "needs 10 GB free" in message
    assert "FLEET_MIN_FREE_GB" in message and "nothing was built" in message and "Total: 2GB (all of it that no build holds)" in message
    assert refused.value.exit_code == 17


def test_a_foreign_engines_cache_is_never_pruned(settings, monkeypatch, tmp_path) -> None:
    disk = guard(monkeypatch, free=1, ours=False)
    docker = Engine(disk, tmp_path, cache=50, deep=50)
    with pytest.raises(DiskFull, match="left alone"):
        space.ensure_space(settings, docker)
    assert docker.calls == ["remove images of orgs but fleet"]


def test_a_short_disk_the_engine_does_not_use_frees_nothing_and_refuses(settings, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(setup, "engine_is_ours", lambda: True)
    monkeypatch.setattr(space, "device", lambda path: 2 if Path(path) == settings.state_dir else 1)  # the state dir on a disk of its own
    monkeypatch.setattr(space, "free_bytes", lambda path: GB if Path(path) == settings.state_dir else 100 * GB)
    docker = Engine(Disk(0), tmp_path, cache=50)
    with pytest.raises(DiskFull, match=f"{settings.state_dir}: 1.0 GB free") as refused:
        space.ensure_space(settings, docker)
    assert docker.calls == []  # freeing the engine's disk would not help the state dir's
    assert "freed" not in refused.value.message


def test_the_check_is_off_at_zero(settings, monkeypatch, tmp_path) -> None:
    guard(monkeypatch, free=0)
    docker = Engine(Disk(0), tmp_path)
    assert space.ensure_space(dataclasses.replace(settings, min_free_gb=0), docker) == []
    assert docker.calls == []


def test_an_engine_that_cannot_be_brought_up_refuses_every_step_for_one_reason(settings, monkeypatch) -> None:
    calls = []

    def refuse(settings, docker):
        calls.append(1)
        raise DiskFull("not enough free disk")

    monkeypatch.setattr(setup, "ensure_engine", lambda state_dir: "26.1")
    monkeypatch.setattr(engine, "Docker", lambda: object())
    monkeypatch.setattr(space, "ensure_space", refuse)
    on_demand = space.EngineOnDemand(settings)
    assert on_demand.remove_containers() == 0  # never up: nothing to remove
    errors = []

    def step() -> None:
        try:
            _ = on_demand.build
        except DiskFull as exc:
            errors.append(exc)

    threads = [threading.Thread(target=step) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and len({id(e) for e in errors}) == 1 and calls == [1]  # asked once; every step got the one reason
    assert on_demand.refused is errors[0]


def test_a_run_refused_its_engine_ends_with_that_error_and_its_code(fleet_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(setup, "ensure_engine", lambda state_dir: (_ for _ in ()).throw(EngineError("no engine here")))
    fleet = load_fleet(fleet_dir)
    registry = FakeRegistry()
    with pytest.raises(EngineError, match="no engine here"):  # not "n images did not build" (exit 8): the reason, with its code
        pipeline.build(settings_for(fleet, tmp_path / "state"), fleet, make_plan(fleet, families=["base-python"]), progress=QuietProgress(),
                       registry=registry, bootstrap=write_rootfs, resolver=ServedApt(), publish_tags=False, commit=COMMIT)  # fmt: skip
    assert registry.entries == {}  # nothing pushed


def test_a_full_disk_outside_a_build_step_is_a_clear_error(fleet_dir, monkeypatch, capsys) -> None:
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(fleet_dir / "build" / "reports"))

    monkeypatch.setattr(commands, "validate", full)
    code = main(["--root", str(fleet_dir), "validate"])
    err = capsys.readouterr().err
    assert code == DiskFull.exit_code == 17
    assert f"the disk holding {fleet_dir / 'build' / 'reports'} is full" in err and "Traceback" not in err and "internal error" not in err
