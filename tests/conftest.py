"""Test configuration.

Unit tests need no engine and no network: an autouse fixture makes any subprocess call fail
unless the test is marked ``engine`` or ``network`` or asks for ``real_subprocess``. Marked tests
run only when selected (``--run-engine``, ``--run-network``, ``--run-gpu-families``) and sort last.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildtool.adapters.files import copy_fleet

REPO = Path(__file__).resolve().parent.parent

OPTIONS = {
    "engine": "--run-engine",
    "network": "--run-network",
    "gpu_families": "--run-gpu-families",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-engine", action="store_true", help="run tests that need the Docker engine and registry (implies --run-network)")
    parser.addoption("--run-network", action="store_true", help="run tests that need PyPI")
    parser.addoption("--run-gpu-families", action="store_true", help="run the multi-GB CUDA family builds")


def _enabled(config: pytest.Config, marker: str) -> bool:
    if marker == "network" and config.getoption("--run-engine"):
        return True
    return bool(config.getoption(OPTIONS[marker]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, option in OPTIONS.items():
            if item.get_closest_marker(marker) and not _enabled(config, marker):
                item.add_marker(pytest.mark.skip(reason=f"needs {marker}; run with {option}"))
    # Slow, real tests last: a unit-test failure shows up in seconds.
    items.sort(key=lambda it: any(it.get_closest_marker(m) for m in OPTIONS))


@pytest.fixture(autouse=True)
def _outside_github_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs inside GitHub Actions jobs too (under act): its output and the job summary
    must not depend on that, nor on the ref the job runs for (a branch builds into its own org).
    Tests of the Actions extras turn them on themselves."""
    from buildtool.cli import console

    monkeypatch.setattr(console, "IN_GITHUB", False)
    for var in ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "GITHUB_REF"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _no_stray_subprocess(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if any(request.node.get_closest_marker(m) for m in OPTIONS) or "real_subprocess" in request.fixturenames:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"unit test tried to run a subprocess: {args[1] if len(args) > 1 else kwargs.get('args')}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def real_subprocess() -> None:
    """Opt a unit test into running local programs (hadolint), still without engine or network."""


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped fleet definition (with locks and the reference agent)."""
    copy_fleet(REPO, tmp_path)
    return tmp_path
