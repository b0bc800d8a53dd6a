"""A release's compose stacks through the real registry and the real compose: a publish stores
them beside the release, `compose` writes them back, and `docker compose config` accepts both."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from buildtool import pipeline
from buildtool.adapters import setup
from buildtool.cli.main import main
from buildtool.deploy import compose
from buildtool.model.load import load_fleet
from buildtool.publish.release import publish
from tests.conftest import REPO
from tests.engine.helpers import settings_for, small_manifest, state_dir

pytestmark = pytest.mark.engine


def test_a_publish_stores_both_stacks_and_compose_accepts_what_compose_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.ensure_compose()
    org = f"test-compose-{int(time.time())}"
    run_settings = settings_for(REPO, org)
    registry = pipeline.bring_up(run_settings, engine=False)
    fleet = load_fleet(REPO)
    repos = sorted({s.repository for m in fleet.machines for s in compose.machine_plan(fleet, m).steps if s.kind == "service"})
    digests = {}
    for repo in repos:
        m = small_manifest(registry, f"{org}/{repo}", repo.encode())  # stands in for the service's image: a stack names it by digest only
        registry.put_manifest(f"{org}/{repo}", "id-1", m)
        digests[repo] = m.digest
    tag = "20261204-0123456"
    moves = publish(registry, org, dict.fromkeys(repos, "id-1"), tag)
    assert pipeline.store_stacks(run_settings, fleet, registry, moves, tag) == [f"compose stacks of mainpc, pc2 stored as {org}/releases:{tag}.stacks"]

    monkeypatch.setenv("FLEET_STATE_DIR", str(state_dir()))
    out = tmp_path / "deploy"
    assert main(["--root", str(REPO), "--org", org, "compose", "--out", str(out)]) == 0  # the release the org's state was published by
    for machine in ("mainpc", "pc2"):
        file = out / machine / "compose.yaml"
        (file.parent / "secrets").mkdir(exist_ok=True)
        for name in ("openai_api_key", "grafana_admin_pwd"):
            (file.parent / "secrets" / name).write_text("not a real key\n")
        proc = subprocess.run(["docker", "compose", "-f", str(file), "config", "--format", "json"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        config = json.loads(proc.stdout)
        written = YAML(typ="safe").load(file.read_text())
        assert set(config["services"]) == set(written["services"])
        for name, entry in config["services"].items():
            repo, digest = entry["image"].removeprefix(f"{run_settings.registry}/{org}/").split("@")
            assert digests[repo] == digest, name
            assert entry["read_only"] and entry["cap_drop"] == ["ALL"] and entry["user"] == "10001:10001"
    assert main(["--root", str(REPO), "--org", org, "compose", "--out", str(out), "--release", "20261204-fffffff"]) == 13  # never published
