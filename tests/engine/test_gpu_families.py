"""The CUDA families, built for real (several GB; run with --run-gpu-families).

Builds base-gpu-cu121, family-torch-cu121 and family-vision-cu121 with a vision service into a
fresh registry org. Verification runs every smoke check of each family's lineage (CUDA and cuDNN
load, torch is the CUDA 12.1 build and works with numpy, onnxruntime's CUDA provider resolves
its libraries); the report must find the CUDA libraries exactly once per image.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from buildtool.__main__ import main
from tests.conftest import REPO

pytestmark = [pytest.mark.engine, pytest.mark.gpu_families]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    state = Path(os.environ.get("FLEET_TEST_STATE_DIR", REPO / "build" / "test-state"))
    saved = {k: os.environ.get(k) for k in ("FLEET_ORG", "FLEET_STATE_DIR", "FORCE_IMAGE_TAG")}
    os.environ.update({"FLEET_ORG": f"gpu-test-{int(time.time())}", "FLEET_STATE_DIR": str(state), "FORCE_IMAGE_TAG": "gpu-1"})
    code = main(["--root", str(REPO), "build", "--family", "family-torch-cu121", "--family", "family-vision-cu121", "VisionProcessingAgent"])
    yield code, state
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_gpu_families_and_a_vision_service_build_and_verify(run) -> None:
    code, state = run
    assert code == 0
    results = {r["repository"]: r["status"] for r in json.loads((state / "reports" / "last-run.json").read_text())["results"]}
    for repo in ("base-gpu-cu121", "family-torch-cu121", "family-vision-cu121", "vision-processing-agent-cu121-pc2"):
        assert results[repo] in ("built", "cached"), results


def test_cuda_libraries_are_present_once(run) -> None:
    _, state = run
    sizes = {d["repository"]: d for d in json.loads((state / "reports" / "sizes.json").read_text())}
    for repo in ("base-gpu-cu121", "family-torch-cu121", "family-vision-cu121"):
        assert sizes[repo]["cuda_bytes"] > 1_000_000_000, sizes[repo]
        assert sizes[repo]["cuda_duplicates"] == {}, sizes[repo]["cuda_duplicates"]
