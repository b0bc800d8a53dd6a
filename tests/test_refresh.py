"""The refresh: what it reads of an advisory report, and, for real, a planted advisory moving
exactly the one lock that pins the package, to its lowest fixed version, named in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildtool import refresh
from buildtool.cli.main import main
from buildtool.model.locks import parse_lock
from tests.engine.helpers import state_dir
from tests.test_lock import read_lock
from tests.trivydb.build import ADVISORIES, build_db


def vuln(pkg: str, installed: str, fixed: str, severity: str = "HIGH", vid: str = "CVE-1", path: str = "") -> dict:
    return {"PkgName": pkg, "InstalledVersion": installed, "FixedVersion": fixed, "Severity": severity, "VulnerabilityID": vid, "PkgPath": path}


def test_the_lowest_fix_above_the_installed_version_of_each_advisory_and_the_highest_of_those() -> None:
    report = {"Results": [{"Vulnerabilities": [
        vuln("idna", "3.4", "2.9, 3.7, 3.10", vid="CVE-A", path="family-web/lib/python3.11/site-packages/idna-3.4.dist-info/METADATA"),
        vuln("idna", "3.4", "3.6", severity="CRITICAL", vid="CVE-B", path="family-web/lib/x"),
        vuln("anyio", "4.0", "4.4", severity="MEDIUM", path="family-web/lib/x"),  # not blocking: left alone
        vuln("h11", "0.14", "", path="family-web/lib/x"),  # no fix: nothing to move to
        vuln("idna", "3.4", "3.7", path="elsewhere/lib/x"),  # no lock of ours
    ]}]}  # fmt: skip
    locks = {"family-web": "lockfiles/family-web.txt"}
    found = refresh._read(report, lambda v: locks.get(v["PkgPath"].split("/", 1)[0], ""), os=False)
    assert found == [refresh.Advisory(lock="lockfiles/family-web.txt", package="idna", installed="3.4", fixed="3.7", ids=("CVE-A", "CVE-B"),
                                      severity="CRITICAL", os=False)]  # fmt: skip
    # OS advisories name one fixed version; two different ones take what the archive serves.
    libc = [vuln("libc6", "2.36-9+deb12u13", "2.36-9+deb12u14"), vuln("libc6", "2.36-9+deb12u13", "2.36-9+deb12u15", vid="CVE-2")]
    os_report = {"Results": [{"Vulnerabilities": [*libc, vuln("curl", "7.88.1-10+deb12u14", "7.88.1-10+deb12u15", severity="CRITICAL")]}]}
    found = {a.package: a.fixed for a in refresh._read(os_report, lambda v: "lockfiles/os/base-python.txt", os=True)}
    assert found == {"libc6": "", "curl": "7.88.1-10+deb12u15"}


def test_the_summary_names_each_move_why_and_the_images_it_rebuilds() -> None:
    result = refresh.Refresh(
        changes=[refresh.Change(lock="lockfiles/os/legacy-py310-cpu.txt", package="libexpat1", old="2.4.7-1ubuntu0.9", new="2.4.7-1ubuntu0.11",
                                why="no longer served by the archive (jammy-security)")],
        held=["`lockfiles/family-torch-cu121.txt`: torch 2.2.2: CVE-2025-32434 (CRITICAL, fixed in 2.6.0): pinned as 'torch==2.2.2'"],
        rebuilt=["legacy-py310-cpu", "nlu-agent-mainpc"],
        database="v2-2025-06-01T00:00:00Z",
    )
    text = result.markdown()
    row = "| `lockfiles/os/legacy-py310-cpu.txt` | libexpat1 | 2.4.7-1ubuntu0.9 | 2.4.7-1ubuntu0.11 | no longer served by the archive (jammy-security) |"
    assert row in text
    assert "Images rebuilt (2): `legacy-py310-cpu`, `nlu-agent-mainpc`" in text
    assert "- `lockfiles/family-torch-cu121.txt`: torch 2.2.2: CVE-2025-32434" in text
    assert "Nothing moved" in refresh.Refresh(changes=[]).markdown()


def python_locks(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted((root / "lockfiles").rglob("*.txt")) if "/os/" not in p.as_posix()}


@pytest.mark.network
def test_a_planted_advisory_moves_only_the_lock_that_pins_it_to_its_lowest_fix(fleet_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """exceptiongroup is pinned by legacy-py310-cpu's lock alone. Held at 1.2.2, with an advisory
    fixed in 1.3.0 (1.3.1 exists too), the refresh moves it to 1.3.0 there and nowhere else."""
    legacy = fleet_dir / "lockfiles" / "legacy-py310-cpu.txt"
    assert main(["--root", str(fleet_dir), "lock", "--upgrade-package", "exceptiongroup==1.2.2"]) == 0, capsys.readouterr().err
    assert read_lock(legacy).pins["exceptiongroup"].version == "1.2.2"
    advisories = json.loads(ADVISORIES.read_text())
    advisories["advisories"].append({"id": "FLEET-TEST-0002", "ecosystem": "pip", "package": "exceptiongroup", "vulnerable": ["<1.3.0"],
                                     "patched": ["1.3.0"], "severity": "HIGH", "title": "SYNTHETIC TEST ADVISORY for the refresh"})  # fmt: skip
    db = build_db(tmp_path / "db", work_dir=state_dir() / "trivydb-work", advisories=advisories)
    monkeypatch.setenv("FLEET_TRIVY_DB", str(db))
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    before = python_locks(fleet_dir)
    summary = tmp_path / "refresh.md"
    assert main(["--root", str(fleet_dir), "refresh", "--summary", str(summary), "--vuln-policy", "enforce"]) == 0, capsys.readouterr().err
    after = python_locks(fleet_dir)
    assert {p for p in after if after[p] != before[p]} == {"lockfiles/legacy-py310-cpu.txt"}
    assert read_lock(legacy).pins["exceptiongroup"].version == "1.3.0"  # the lowest fix, not the newest release
    held = parse_lock("lockfiles/legacy-py310-cpu.txt", before["lockfiles/legacy-py310-cpu.txt"])
    assert {n: p.version for n, p in read_lock(legacy).pins.items() if n != "exceptiongroup"} == {
        n: p.version for n, p in held.pins.items() if n != "exceptiongroup"
    }  # nothing else of that lock moved
    text = summary.read_text()
    assert "| `lockfiles/legacy-py310-cpu.txt` | exceptiongroup | 1.2.2 | 1.3.0 | FLEET-TEST-0002 (HIGH, fixed in 1.3.0) |" in text
    assert "`legacy-py310-cpu`" in text and "`nlu-agent-mainpc`" in text  # the images it rebuilds
    assert "torch 2.2.2: CVE-2025-32434" in text  # a fix the refresh cannot apply: the family pins torch itself
    data = json.loads(summary.with_suffix(".json").read_text())
    assert {"lock": "lockfiles/legacy-py310-cpu.txt", "package": "exceptiongroup", "old": "1.2.2", "new": "1.3.0",
            "why": "FLEET-TEST-0002 (HIGH, fixed in 1.3.0)"} in data["changes"]  # fmt: skip
