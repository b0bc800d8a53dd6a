"""Deploys through real compose: a release of four pc2 services in four startup layers, built and
published by the toolkit (which stores its stack), deployed from the registry by digest until all
are healthy; deployed again, which changes nothing; then a release in which one service never
becomes healthy, which ends with every service back on the digests it ran before.

Every container runs with ``network_mode: none`` (an override file, as an operator's would be):
no port is published and no Docker network is created. The health checks run inside each
container, on its own loopback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from buildtool.adapters import setup
from buildtool.adapters.files import copy_fleet
from buildtool.cli.main import main
from tests.conftest import REPO
from tests.engine.helpers import commit_all, run_build, settings_for, state_dir

pytestmark = pytest.mark.engine

# pc2: infra-core, memory-stack, async-pipeline, web-interface
SERVICES = ["ResourceManager", "CacheManager", "AsyncProcessor", "UnifiedWebAgent"]
SLUGS = ["resource-manager", "cache-manager", "async-processor", "unified-web-agent"]
OVERRIDE = "services:\n" + "".join(f"  {s}:\n    network_mode: none\n    ports: !reset []\n" for s in SLUGS)


def networks() -> list[str]:
    return sorted(subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, check=True).stdout.split())


def running(folder: Path) -> dict[str, tuple[str, str, str]]:
    """Service → (container id, image, health) of the stack's running containers."""
    out = subprocess.run(["docker", "compose", "--project-directory", str(folder), "-f", str(folder / "deployed.yaml"), "ps", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["Service"]: (r["ID"], r["Image"], r["Health"]) for r in rows}


def stack_images(folder: Path, name: str) -> dict[str, str]:
    return {s: e["image"] for s, e in YAML(typ="safe").load((folder / name).read_text())["services"].items()}


@pytest.fixture
def fleet(tmp_path: Path):
    root = tmp_path / "fleet"
    copy_fleet(REPO, root)
    for path in (root / "services").glob("*.toml"):
        if path.stem not in SERVICES:
            path.unlink()
    commit_all(root)
    org = f"test-deploy-{int(time.time())}-{os.getpid()}"
    folder = tmp_path / "deploy"
    override = tmp_path / "override.yaml"
    override.write_text(OVERRIDE)
    yield root, org, folder, override
    if (folder / "deployed.yaml").is_file():
        subprocess.run(["docker", "compose", "--project-directory", str(folder), "-f", str(folder / "deployed.yaml"), "-f", str(override),
                        "down", "--remove-orphans"], capture_output=True, check=False)  # fmt: skip


def deploy(root: Path, org: str, folder: Path, override: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["--root", str(root), "--org", org, "deploy", "--machine", "pc2", "--dir", str(folder), "--override", str(override), "--timeout", "90",
                 *extra])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_release_deploys_healthy_redeploys_unchanged_and_a_broken_one_rolls_back(fleet, capsys, monkeypatch) -> None:
    root, org, folder, override = fleet
    setup.ensure_compose()
    monkeypatch.setenv("FLEET_STATE_DIR", str(state_dir()))
    before_networks = networks()
    assert run_build(settings_for(root, org), *SERVICES, tag="20261204-1111111", machines=["pc2"]) == 0

    code, out = deploy(root, org, folder, override, capsys)
    assert code == 0, out
    timings = re.search(r"pull ([0-9.]+)s, up until all healthy ([0-9.]+)s", out)
    assert timings, out
    with capsys.disabled():
        print(f"\ndeploy of 4 services in 4 layers: pull {timings.group(1)} s, up until all healthy {timings.group(2)} s")
    first = running(folder)
    assert sorted(first) == sorted(SLUGS) and all(h == "healthy" for _, _, h in first.values())
    assert {s: image for s, (_, image, _) in first.items()} == stack_images(folder, "deployed.yaml")  # by digest, from the registry

    code, out = deploy(root, org, folder, override, capsys)  # the same release again
    assert code == 0 and "0 started or recreated, 4 unchanged" in out, out
    assert running(folder) == first

    # The next release: one service's image changes (healthy), and CacheManager gets a memory
    # limit it cannot start in: it never becomes healthy.
    web = root / "services" / "UnifiedWebAgent.toml"
    web.write_text(web.read_text() + '\n[env]\nWEB_BANNER = "release 2"\n')
    cache = root / "services" / "CacheManager.toml"
    cache.write_text(cache.read_text().replace('layer = "memory-stack"\n', 'layer = "memory-stack"\nmemory_mb = 16\n'))
    commit_all(root, "release 2")
    assert run_build(settings_for(root, org), *SERVICES, tag="20261204-2222222", machines=["pc2"]) == 0
    code, out = deploy(root, org, folder, override, capsys)
    with capsys.disabled():
        print(f"\nthe broken release (exit {code}):\n{out}")
    assert code == 16, out
    assert "cache-manager:" in out and "did not come up healthy" in out and "runs the stack that ran before again" in out
    after = running(folder)
    assert {s: image for s, (_, image, _) in after.items()} == {s: image for s, (_, image, _) in first.items()}  # every service on its previous digest
    assert all(h == "healthy" for _, _, h in after.values())
    assert stack_images(folder, "compose.yaml")["unified-web-agent"] != first["unified-web-agent"][1]  # the failed release had a new image
    assert networks() == before_networks  # no network was created
