"""A build short of disk refuses before it writes anything big: the command line against the real
engine and registry, with the state dir on a small disk of its own (a tmpfs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildtool import pipeline, settings
from buildtool.adapters.registry import Registry
from buildtool.model.load import load_fleet
from tests.conftest import REPO
from tests.engine.helpers import state_dir

pytestmark = pytest.mark.engine


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    # The engine and registry up first, from the tests' own state dir: a registry this run started
    # would otherwise keep its config on the tmpfs.
    pipeline.bring_up(settings.from_sources(load_fleet(REPO), {"FLEET_STATE_DIR": str(state_dir())}))
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_build_short_of_disk_refuses_naming_the_disk_and_builds_nothing(small_disk: Path) -> None:
    org = f"space-{int(time.time())}-{os.getpid()}"  # an org of its own: nothing in it is cached, so the engine is needed
    state = small_disk / "state"
    env = {**os.environ, "FLEET_ORG": org, "FLEET_STATE_DIR": str(state), "FLEET_MIN_FREE_GB": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "buildtool", "--root", str(REPO), "build", "--no-publish", "--family", "base-python"],
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 17, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"not enough free disk to build ({state}: 0." in proc.stderr and "needs 1 GB free" in proc.stderr
    assert "FLEET_MIN_FREE_GB" in proc.stderr and "Traceback" not in proc.stderr
    assert "freed" not in proc.stderr  # the engine's disk is not the short one: nothing of it was touched
    assert not (state / "roots").exists() or not any((state / "roots").rglob("*.tar"))  # no root was bootstrapped
    assert Registry("127.0.0.1:5000").tags(f"{org}/base-python") == []  # nothing pushed
