"""Rendering, on a fleet built in memory (no files): blueprint patterns, layers, secrets, profiles."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from buildtool.plan.plan import make_plan
from buildtool.render.dockerfile import HEALTH_PROBE, render_family, render_service
from tests import memory


def test_every_dockerfile_says_how_to_regenerate_and_pulls_no_frontend() -> None:
    for step in make_plan(memory.fleet(), all_families=True, all_services=True).steps:
        head = step.rendered.dockerfile.splitlines()[:2]
        assert "do not edit" in head[0] and "nox -s render" in head[1], step.key
        assert "# syntax=" not in step.rendered.dockerfile


def test_service_dockerfile_follows_the_blueprint() -> None:
    fleet = memory.fleet()
    text = render_service(fleet, fleet.services["Api"], fleet.machines["big"]).dockerfile
    assert text.index("AS builder") < text.index("AS runtime")
    # Layer order in the runtime stage: profile and deps before the app code.
    runtime = text[text.index("AS runtime") :]
    assert runtime.index("COPY machine-profile.json") < runtime.index("COPY --from=builder /app/")
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text
    assert text.rstrip().splitlines()[-1] == 'CMD ["python", "/app/agent.py"]'
    assert re.findall(r"^USER (.+)$", runtime, re.M)[-1] == "10001:10001"
    assert "EXPOSE 7000 8000" in text
    probe = json.loads(re.search(r"^  CMD (\[.*\])$", text, re.M).group(1))
    assert probe == ["python", "-I", "-c", HEALTH_PROBE, "http://127.0.0.1:8000/health"]
    assert 'MACHINE="big"' in text and 'OMP_NUM_THREADS="16"' in text


def test_service_extras_install_only_their_own_pins_with_hashes_and_secret() -> None:
    fleet = memory.fleet()
    rendered = render_service(fleet, fleet.services["Worker"], fleet.machines["small"])
    text = rendered.dockerfile
    assert "--require-hashes" in text and "--no-deps" in text
    assert "--mount=type=secret,id=pip_ca" in text and "PIP_CERT=/run/secrets/pip_ca" in text
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    reqs = dict(rendered.files)["requirements.txt"].decode()
    assert reqs.startswith("httpx==0.27.0 \\\n    --hash=sha256:") and "numpy" not in reqs  # numpy comes with pydeps


@pytest.mark.parametrize("status, body, healthy", [(200, b'{"status": "ok"}', True), (200, b'{"status": "degraded"}', False),
                                                   (200, b"<html>a proxy's page</html>", False), (200, b'["ok"]', False),
                                                   (503, b'{"status": "ok"}', False)])  # fmt: skip
def test_the_health_probe_wants_status_ok(status: int, body: bytes, healthy: bool, real_subprocess: None) -> None:
    """The rendered probe, run as the image runs it, against an answer of each kind (seed 002 §5)."""
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        probe = subprocess.run([sys.executable, "-I", "-c", HEALTH_PROBE, url], capture_output=True, timeout=30, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (probe.returncode == 0) is healthy, probe.stderr


def test_machine_profile_is_baked_per_machine() -> None:
    fleet = memory.fleet()
    big = dict(render_service(fleet, fleet.services["Worker"], fleet.machines["big"]).files)["machine-profile.json"]
    small = dict(render_service(fleet, fleet.services["Worker"], fleet.machines["small"]).files)["machine-profile.json"]
    assert b'"OMP_NUM_THREADS": "16"' in big and b'"OMP_NUM_THREADS": "4"' in small
    assert b'"TORCH_CUDA_ARCH_LIST": "8.9"' in big and b'"TORCH_CUDA_ARCH_LIST": "8.6"' in small


def test_a_machine_without_a_gpu_has_no_cuda_profile() -> None:
    fleet = memory.fleet()
    worker = dataclasses.replace(fleet.services["Worker"], machines=("edge",))
    profile = dict(render_service(fleet, worker, fleet.machines["edge"]).files)["machine-profile.json"]
    assert b'"MACHINE": "edge"' in profile and b"CUDA" not in profile and b"GPU" not in profile


def test_dockerfiles_never_copy_the_ca_bundle() -> None:
    for step in make_plan(memory.fleet(), all_families=True, all_services=True).steps:
        text = step.rendered.dockerfile
        assert "ca-certificates.crt" not in text
        for line in text.splitlines():
            if line.startswith(("COPY", "ADD")):
                assert "pip_ca" not in line and "secret" not in line, line


def test_bootstrap_root_family_has_a_builder_root_and_a_runtime_root() -> None:
    fleet = memory.fleet()
    text = render_family(fleet, fleet.families["base"], None).dockerfile
    builder, runtime = text.split("FROM scratch AS root\n")
    assert "FROM scratch AS builder-root\nADD builder-rootfs.tar /\nENV " in builder
    assert runtime.startswith("ADD rootfs.tar /\n") and "FROM root AS runtime" in runtime
    assert "RUN" not in text  # the venv and the user come with the bootstrapped roots
    assert "lockfiles/os/base.txt" in text
    assert text.rstrip().endswith("USER 10001:10001")


def test_only_targets_made_of_bootstrap_tarballs_skip_the_timestamp_rewrite() -> None:
    fleet = memory.fleet()
    assert render_family(fleet, fleet.families["base"], None).clamped == ("builder-root", "runtime")
    assert render_family(fleet, fleet.families["utils"], None).clamped == ()  # apt's files, written at build time
    # A root family with its own requirements copies pip's files into its runtime.
    base = dataclasses.replace(fleet.families["base"], requirements=("six==1.16.0",))
    with_reqs = memory.with_locks(memory.fleet(families={**fleet.families, "base": base}, locks={}), {"base": memory._pins(("six", "1.16.0"))})
    assert render_family(with_reqs, with_reqs.families["base"], None).clamped == ("builder-root",)


def _apt_requests(text: str) -> list[str]:
    """The package arguments of every `apt-get install` of a Dockerfile."""
    out = []
    for run in re.findall(r"apt-get install -y --no-install-recommends \\\n(.*?) \\\n && rm", text, re.S):
        out += [w.strip("'\\ ") for w in run.split() if w.strip("'\\ ")]
    return out


def test_os_packages_are_installed_at_locked_versions_in_the_builder_root_and_exported() -> None:
    fleet = memory.fleet()
    rendered = render_family(fleet, fleet.families["utils"], None)
    text = rendered.dockerfile
    assert "FROM ${BUILDER_IMAGE} AS os-packages" in text
    assert _apt_requests(text) == ["curl=7.88.1-10+deb12u15", "libcurl4=7.88.1-10+deb12u15"]
    assert "python3 /tmp/dpkg.py export --parent-status /tmp/parent-status --pins /tmp/os-pins.txt --out /staging \\\n      curl" in text
    runtime = text.split("AS runtime")[1]
    assert "COPY --from=os-packages /staging/ /" in runtime and "apt-get" not in runtime
    files = dict(rendered.files)
    # The export holds what it copies to the lock: the builder root's versions and the family's own.
    pins = files["os-pins.txt"].decode().splitlines()
    assert "apt=2.6.1" in pins and "curl=7.88.1-10+deb12u15" in pins
    assert files["dpkg.py"].startswith(b'"""dpkg databases')


def test_a_changed_os_lock_changes_the_context() -> None:
    fleet = memory.fleet()
    before = render_family(fleet, fleet.families["utils"], None).digest()
    moved = memory.with_os_locks(fleet, {"runtime": (("curl", "7.88.1-10+deb12u16"), ("libcurl4", "7.88.1-10+deb12u16"))})
    assert render_family(moved, moved.families["utils"], None).digest() != before


def test_children_build_on_the_builder_root_with_their_parents_packages() -> None:
    fleet = memory.fleet()
    text = render_family(fleet, fleet.families["web"], None).dockerfile
    builder = text.split("AS builder\n")[1].split("AS runtime")[0]
    assert text.count("FROM ${BUILDER_IMAGE} AS builder") == 1
    # The parent's venv is bound, not copied: no layer of the builder holds it.
    assert "COPY --from=parent /opt/venv" not in builder and "ENV PARENT_VENV=/opt/parent" in builder
    mounted = "--mount=type=bind,from=parent,source=/opt/venv,target=/opt/parent"
    install = builder.split("# Hash-locked Python packages")[1].split("pip install")[0]
    assert mounted in install and 'PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/opt/parent/lib/python3.11/site-packages"' in install
    # pip check runs where pip is, over the parent's packages and this family's.
    assert f"RUN --network=none {mounted} \\\n    PYTHONPATH=/install/lib/python3.11/site-packages:/opt/parent/lib/python3.11/site-packages " \
           "/opt/venv/bin/python -m pip check" in builder
    assert "FROM parent AS runtime" in text


def test_service_builder_stage_starts_from_the_builder_root() -> None:
    fleet = memory.fleet()
    worker = render_service(fleet, fleet.services["Worker"], fleet.machines["big"]).dockerfile
    assert "FROM ${BUILDER_IMAGE} AS builder" in worker and "COPY --from=family /opt/venv" not in worker
    assert "--mount=type=bind,from=family,source=/opt/venv,target=/opt/parent \\\n    PYTHONPATH=/install/lib/python3.11/site-packages:/opt/parent/" in worker
    assert "-m pip check" in worker
    api = render_service(fleet, fleet.services["Api"], fleet.machines["big"]).dockerfile
    assert "from=family" not in api.split("FROM family AS runtime")[0]  # nothing to install: the family's packages are not needed to compile the app
    assert "FROM family AS runtime" in api and "/opt/venv/bin/python -m compileall -q /app" in api


def test_child_family_installs_only_its_own_pins() -> None:
    fleet = memory.fleet()
    reqs = dict(render_family(fleet, fleet.families["web"], None).files)["requirements.txt"].decode()
    assert "gunicorn==23.0.0" in reqs and "numpy==" not in reqs  # numpy is installed by pydeps


def test_the_nearest_locked_ancestor_counts_as_the_parent() -> None:
    """A family under a parent without requirements installs only what its grandparent lacks."""
    fleet = memory.fleet()
    middle = memory._family("middle", parent="pydeps")
    web = dataclasses.replace(fleet.families["web"], parent="middle")
    families = {**{k: v for k, v in fleet.families.items() if k != "web"}, "middle": middle, "web": web}
    fleet = memory.with_locks(dataclasses.replace(fleet, families=families, locks={}))
    reqs = dict(render_family(fleet, fleet.families["web"], None).files)["requirements.txt"].decode()
    assert "gunicorn==23.0.0" in reqs and "numpy==" not in reqs


def test_source_builds_get_their_tools_in_the_builder_stage_only() -> None:
    fleet = memory.fleet()
    llm = fleet.families["llm"]
    for machine, arch in (("big", "89"), ("small", "86")):
        rendered = render_family(fleet, llm, fleet.machines[machine])
        builder, runtime = rendered.dockerfile.split("AS runtime")
        assert f"ARG CMAKE_CUDA_ARCHITECTURES={arch}\n" in builder
        assert 'CMAKE_ARGS="-DARCH=${CMAKE_CUDA_ARCHITECTURES}"' in builder
        assert "'clang-19=1:19.1.7-3~deb12u1'" in builder and "clang-19" not in runtime  # at its locked version
        assert "build-requirements.txt" in builder and "builder-setup.sh" in builder
        # Compiled wheels must not come from pip's cache, which ignores CMAKE_ARGS and the architecture.
        assert "--no-build-isolation --no-cache-dir --ignore-installed --prefix=/install -r /tmp/requirements.txt" in builder
        files = dict(rendered.files)
        assert "cmake==4.4.4" in files["build-requirements.txt"].decode()
        assert files["builder-setup.sh"] == b"echo set up\n"
    big, small = (render_family(fleet, llm, fleet.machines[m]) for m in ("big", "small"))
    assert big.digest() != small.digest()
    # A family without [builder] installs with build isolation and pip's cache.
    web = render_family(fleet, fleet.families["web"], None).dockerfile
    assert "--no-build-isolation" not in web and "build-requirements.txt" not in web


def test_dockerignore_follows_the_settings() -> None:
    fleet = memory.fleet()
    ignore = dict(render_family(fleet, fleet.families["utils"], None).files)[".dockerignore"].decode()
    assert "**/__pycache__" in ignore.splitlines()


def test_context_files_are_what_the_digest_covers() -> None:
    fleet = memory.fleet()
    rendered = render_service(fleet, fleet.services["Api"], fleet.machines["big"])
    files = dict(rendered.context_files())
    assert files["app/agent.py"] == memory.AGENT and files["Dockerfile"] == rendered.dockerfile.encode()
    changed = dataclasses.replace(rendered, app_files=(("agent.py", b"print('other')\n"),))
    assert changed.digest() != rendered.digest()
