"""The supply-chain gate against the real engine, registry and Trivy.

Without an advisory database (as on a fresh machine): secrets are scanned, the SBOM is attached
to each image by digest, and vulnerabilities are NOT SCANNED. With the test database
(tests/trivydb, built here from tests/trivydb/advisories.json): the gate enforces.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time

import pytest

from buildtool.adapters.files import copy_fleet
from buildtool.adapters.registry import Registry
from buildtool.adapters.scanner import OFFLINE as OFFLINE_ARGS
from buildtool.core.errors import BuildError, SecurityError
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
    assert all(s["security"]["status"] == "NOT SCANNED" for s in sizes)
    # Every SBOM lists the image's contents: base-python's 44 Debian packages and more down the chain.
    components = [s["security"]["sbom"]["components"] for s in sizes]
    assert components[0] >= 40 and components == sorted(components), components


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


# --- with an advisory database: the test one, built here -------------------------------------------

TORCH_LINEAGE = ("base-python", "base-utils", "base-gpu-cu121", "family-torch-cu121")


@pytest.fixture(scope="module")
def testdb(tmp_path_factory: pytest.TempPathFactory):
    from tests.trivydb.build import build_db

    work = tmp_path_factory.mktemp("trivydb")
    return build_db(work / "db", work_dir=REPO / "build" / "trivydb-work")


@pytest.fixture(scope="module")
def old_starlette(tmp_path_factory: pytest.TempPathFactory):
    """The fleet as it was: fastapi 0.115.0, which pins starlette 0.38.6 (CVE-2024-47874)."""
    from buildtool.locking.lock import lock
    from buildtool.model.load import load_fleet

    root = tmp_path_factory.mktemp("old-fleet")
    copy_fleet(REPO, root)
    fam = root / "families" / "base-cpu-pydeps.toml"
    fam.write_text(fam.read_text().replace('"fastapi==0.120.4"', '"fastapi==0.115.0"'))
    lock(load_fleet(root))
    assert "starlette==0.38.6" in (root / "lockfiles" / "base-cpu-pydeps.txt").read_text()
    return {"root": root, "org": f"gate-old-{int(time.time())}-{os.getpid()}"}


def allow(root, expires: str) -> None:
    (root / "security" / "allowlist.toml").write_text(
        '[[vulnerability]]\nid = "CVE-2024-47874"\npackage = "starlette"\nfamily = "base-cpu-pydeps"\n'
        f'reason = "test: accepted while the upgrade is reviewed"\nowner = "tests"\nexpires = {expires}\n'
    )


def test_the_fleet_passes_enforce_with_the_test_database(gate, testdb) -> None:
    enforced = dataclasses.replace(gate["settings"], vuln_policy="enforce", trivy_db=testdb)
    assert run_build(enforced, "ServiceRegistry", tag="gate-db-1") == 0
    run = last_run(enforced)
    verdicts = {r["repository"]: r["verdict"] for r in run["results"]}
    assert {v["status"] for v in verdicts.values()} == {"PASSED"}
    assert all(v["db_version"] == "v2-2025-06-01T00:00:00Z" for v in verdicts.values())
    assert verdicts["base-python"]["counts"] == {"MEDIUM": 2}  # the synthetic glibc advisory: reported, not blocking


def test_the_real_advisory_fails_until_allowlisted_an_expired_entry_fails_warn_passes(old_starlette, testdb) -> None:
    import datetime as dt

    root = old_starlette["root"]
    base = dataclasses.replace(settings_for(root, old_starlette["org"]), vuln_policy="enforce", trivy_db=testdb)
    registry = Registry(ADDRESS)
    assert run_build(base, "ServiceRegistry", tag="old-1") == BuildError.exit_code
    failed = next(r for r in last_run(base)["results"] if r["repository"] == "base-cpu-pydeps")
    assert "CVE-2024-47874 HIGH starlette 0.38.6 (fixed in 0.40.0)" in failed["message"]
    assert registry.digest(f"{old_starlette['org']}/base-cpu-pydeps", "latest") is None
    # Accepted for 30 days: the same images pass, with the finding counted as allowlisted.
    allow(root, (base.today + dt.timedelta(days=30)).isoformat())
    assert run_build(base, "ServiceRegistry", tag="old-2") == 0
    verdict = next(r["verdict"] for r in last_run(base)["results"] if r["repository"] == "base-cpu-pydeps")
    assert verdict["status"] == "PASSED" and [f["id"] for f in verdict["allowlisted"]] == ["CVE-2024-47874"]
    # The same entry, expired: the run fails before it starts, naming the entry.
    allow(root, (base.today - dt.timedelta(days=1)).isoformat())
    latest = registry.digest(f"{old_starlette['org']}/family-web", "latest")
    assert run_build(base, "ServiceRegistry", tag="old-3") == SecurityError.exit_code
    assert registry.digest(f"{old_starlette['org']}/family-web", "latest") == latest
    # Warn (R4's temporary downgrade): reported as WARN, nothing fails.
    (root / "security" / "allowlist.toml").write_text("")
    assert run_build(dataclasses.replace(base, vuln_policy="warn"), "ServiceRegistry", tag="old-4") == 0
    run = last_run(base)
    assert any(n.startswith("WARN base-cpu-pydeps") for n in run["notes"])


def test_the_torch_entry_covers_the_torch_families_only(testdb, tmp_path) -> None:
    """CVE-2025-32434 in the torch family's lock, judged against the shipped allowlist."""
    from buildtool.adapters.scanner import Trivy
    from buildtool.execute.gate import judge
    from buildtool.model.load import load_fleet

    fleet = load_fleet(REPO)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "requirements.txt").write_text((REPO / "lockfiles" / "family-torch-cu121.txt").read_text())
    trivy = Trivy(tmp_path / "cache")
    trivy.database(folder=testdb, repository="", now=dt.datetime.now(dt.UTC))
    trivy._run(["fs", *OFFLINE_ARGS, "--scanners", "vuln", "--format", "json", "--output", str(tmp_path / "r.json"), str(tmp_path / "src")], what="scan")
    report = json.loads((tmp_path / "r.json").read_text())
    kw = {"repository": "family-torch-cu121", "digest": "", "allowlist": fleet.allowlist, "policy": "enforce", "db_version": "x",
          "today": fleet.allowlist.entries[0].expires}  # fmt: skip
    covered = judge(report, lineage=TORCH_LINEAGE, **kw)
    assert covered.status == "PASSED" and [f.id for f in covered.allowlisted] == ["CVE-2025-32434"]
    assert judge(report, lineage=TORCH_LINEAGE[:3], **kw).status == "FAILED"  # base-gpu-cu121 is out of its scope


def test_the_database_repository_is_downloaded_and_refreshed_daily(gate, testdb) -> None:
    """Production's path against a stand-in on the local registry: Trivy's artifact format, downloaded
    by Trivy into the state dir, then used from there."""
    from tests.trivydb.build import publish_db

    repo = f"{gate['org']}/trivy-db"
    publish_db(testdb, Registry(ADDRESS), repo)
    fetched = dataclasses.replace(gate["settings"], vuln_policy="enforce", trivy_db_repository=f"{ADDRESS}/{repo}:2")
    assert run_build(fetched, "ServiceRegistry", tag="gate-repo-1") == 0
    meta = json.loads((fetched.state_dir / "trivy" / "db" / "metadata.json").read_text())
    assert meta["UpdatedAt"] == "2025-06-01T00:00:00Z" and meta["DownloadedAt"].startswith(str(fetched.today.year))
    assert {r["verdict"]["status"] for r in last_run(fetched)["results"]} == {"PASSED"}
