"""The supply-chain gate against the real engine, registry and Trivy.

Without an advisory database (as on a fresh machine): secrets are scanned, the SBOM is attached
to each image by digest, and vulnerabilities are NOT SCANNED. With the test database
(tests/trivydb, built here from tests/trivydb/advisories.json): the gate enforces.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest

from buildtool.adapters.files import copy_fleet
from buildtool.adapters.registry import Registry
from buildtool.core.errors import BuildError
from tests.conftest import REPO
from tests.engine.helpers import run_build, settings_for

pytestmark = pytest.mark.engine

ADDRESS = "127.0.0.1:5000"
SBOM = "application/vnd.cyclonedx+json"
FAKE_KEY = "AKIA" + "Z7Q2W4E5R6T8Y9U3"  # matches Trivy's aws-access-key-id rule (not the documented example key)


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gate-fleet")
    copy_fleet(REPO, root)
    org = f"gate-{int(time.time())}-{os.getpid()}"
    return {"root": root, "org": org, "settings": settings_for(root, org)}


def last_run(settings) -> dict:
    return json.loads((settings.state_dir / "reports" / "last-run.json").read_text())


def test_without_a_database_secrets_are_scanned_sboms_attached_and_vulnerabilities_not_scanned(gate) -> None:
    assert run_build(gate["settings"], "ServiceRegistry", tag="gate-1") == 0
    run = last_run(gate["settings"])
    assert {r["verdict"]["status"] for r in run["results"]} == {"NOT SCANNED"}
    assert any("NOT SCANNED for vulnerabilities" in n for n in run["notes"])
    # The SBOM is in the registry, found by the image digest alone.
    svc = next(r for r in run["results"] if r["repository"] == "service-registry-mainpc")
    registry = Registry(ADDRESS)
    repo = f"{gate['org']}/service-registry-mainpc"
    (ref,) = registry.referrers(repo, svc["digest"], SBOM)
    artifact = registry.manifest(repo, ref["digest"])
    assert artifact.data["subject"]["digest"] == svc["digest"]
    sbom = json.loads(registry.blob(repo, artifact.data["layers"][0]["digest"]))
    python = {c["name"]: c.get("version") for c in sbom["components"] if "pkg:pypi/" in c.get("purl", "")}
    assert python["fastapi"] == "0.120.4" and python["starlette"] == "0.49.3" and python["numpy"] == "1.26.4"
    assert any("pkg:deb/debian/" in c.get("purl", "") for c in sbom["components"])  # OS packages too
    assert svc["sbom"] == {"digest": ref["digest"], "components": len(sbom["components"])}
    sizes = json.loads((gate["settings"].state_dir / "reports" / "sizes.json").read_text())
    assert all(s["security"]["status"] == "NOT SCANNED" and s["security"]["sbom"]["components"] > 50 for s in sizes)


def test_a_planted_cloud_key_fails_the_run_naming_the_file_and_moves_no_tag(gate) -> None:
    agent = gate["root"] / "agents" / "keyed_agent"
    agent.mkdir()
    (agent / "agent.py").write_bytes((REPO / "agents" / "reference_agent" / "agent.py").read_bytes())
    (agent / "settings.py").write_text(f'AWS_ACCESS_KEY_ID = "{FAKE_KEY}"\n')
    svc = gate["root"] / "services" / "CacheManager.toml"
    svc.write_text(svc.read_text() + 'source = "agents/keyed_agent"\n')
    registry = Registry(ADDRESS)
    assert run_build(gate["settings"], "CacheManager", tag="gate-2") == BuildError.exit_code
    run = last_run(gate["settings"])
    failed = next(r for r in run["results"] if r["repository"] == "cache-manager-pc2")
    assert failed["status"] == "failed"
    assert "secret aws-access-key-id in /app/settings.py" in failed["message"]
    assert registry.digest(f"{gate['org']}/cache-manager-pc2", "gate-2") is None
    assert registry.digest(f"{gate['org']}/cache-manager-pc2", "latest") is None
    ids = [r["repository"] for r in run["results"] if r["status"] == "built"]
    assert "cache-manager-pc2" not in ids


def test_warn_policy_does_not_excuse_a_secret(gate) -> None:
    warned = dataclasses.replace(gate["settings"], vuln_policy="warn")
    assert run_build(warned, "CacheManager", tag="gate-3") == BuildError.exit_code
