"""The CUDA families, built for real (several GB; run with --run-gpu-families).

Builds the four CUDA families (family-llm-cu121 compiled for each machine) with a vision service
and ModelOpsCoordinator into a fresh registry org. Verification runs every smoke check of each
family's lineage (CUDA and cuDNN load, torch is the CUDA 12.1 build and works with numpy,
onnxruntime's CUDA provider resolves its libraries, llama.cpp is a CUDA build for the machine's
architecture) and each service must reach healthy; the report must find the CUDA libraries
exactly once per image. About 25 minutes on 2 cores from a cold cache, 3 minutes warm.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from buildtool.adapters.registry import Registry
from tests.conftest import REPO
from tests.engine.helpers import run_build, settings_for

pytestmark = [pytest.mark.engine, pytest.mark.gpu_families]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    org = f"gpu-test-{int(time.time())}"
    run_settings = settings_for(REPO, org)
    code = run_build(run_settings, "VisionProcessingAgent", "ModelOpsCoordinator", tag="gpu-1", groups=["gpu"])
    return code, run_settings.state_dir, org


GPU_IMAGES = (
    "base-gpu-cu121",
    "family-torch-cu121",
    "family-vision-cu121",
    "family-llm-cu121-mainpc",
    "family-llm-cu121-pc2",
)


def test_gpu_families_and_services_build_and_verify(run) -> None:
    code, state, _ = run
    assert code == 0
    results = {r["repository"]: r["status"] for r in json.loads((state / "reports" / "last-run.json").read_text())["results"]}
    for repo in (*GPU_IMAGES, "vision-processing-agent-cu121-pc2", "model-ops-coordinator-cu121-mainpc"):
        assert results[repo] in ("built", "cached"), results


# Lists the (kind, architecture) of every CUDA image in llama.cpp's libraries, from their fatbins.
FATBIN_ARCHS = """
import glob, json, os, struct, llama_cpp
magic, found = struct.pack('<I', 0xBA55ED50), set()
for lib in glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib*.so')):
    data = open(lib, 'rb').read()
    at = data.find(magic)
    while at != -1:
        _, _, header, size = struct.unpack_from('<IHHQ', data, at)
        entry, end = at + header, at + header + size
        while entry < end:
            kind, _, entry_header, payload = struct.unpack_from('<HHIQ', data, entry)
            found.add((kind, struct.unpack_from('<I', data, entry + 28)[0]))
            entry += entry_header + payload
        at = data.find(magic, end)
print(json.dumps(sorted(found)))
"""


@pytest.mark.parametrize(("machine", "arch"), [("mainpc", 89), ("pc2", 86)])
def test_llama_cpp_is_compiled_for_each_machine(run, machine: str, arch: int) -> None:
    code, _, org = run
    assert code == 0
    ref = f"127.0.0.1:5000/{org}/family-llm-cu121-{machine}:gpu-1"
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network=none", ref, "python", "-c", FATBIN_ARCHS],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[1, arch], [2, arch]]  # PTX and cubin, this machine's only


def test_machine_images_differ_only_in_compiled_code_and_profile(run) -> None:
    code, _, org = run
    assert code == 0
    registry = Registry("127.0.0.1:5000")

    def layers(repo: str) -> list[str]:
        manifest = registry.image_manifest(f"{org}/{repo}", "gpu-1")
        assert manifest is not None, repo
        return [layer["digest"] for layer in manifest.data["layers"]]

    parent = layers("family-torch-cu121")
    mainpc, pc2 = layers("family-llm-cu121-mainpc"), layers("family-llm-cu121-pc2")
    assert mainpc[: len(parent)] == pc2[: len(parent)] == parent
    # Above the shared parent: the venv additions (llama.cpp compiled per machine) and the profile.
    assert len(mainpc) == len(pc2) == len(parent) + 2
    assert all(a != b for a, b in zip(mainpc[len(parent) :], pc2[len(parent) :], strict=True))


def test_cuda_libraries_are_present_once(run) -> None:
    _, state, _ = run
    sizes = {d["repository"]: d for d in json.loads((state / "reports" / "sizes.json").read_text())}
    for repo in GPU_IMAGES:
        assert sizes[repo]["cuda_bytes"] > 1_000_000_000, sizes[repo]
        assert sizes[repo]["cuda_duplicates"] == {}, sizes[repo]["cuda_duplicates"]
