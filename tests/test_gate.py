"""The supply-chain gate without an engine: verdicts, the allowlist, and a whole run with a fake scanner."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from buildtool import pipeline
from buildtool import settings as run_settings
from buildtool.adapters.scanner import Database
from buildtool.cli.main import main
from buildtool.core.errors import BuildError, SecurityError
from buildtool.execute.gate import judge
from buildtool.execute.security import CREATED_ANNOTATION, DB_ANNOTATION, REPORT_TYPE, SCANNERS_ANNOTATION
from buildtool.model.allowlist import Allowlist, Entry
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from buildtool.publish.release import Revision
from tests.fakes import FakeEngine, FakeRegistry, QuietProgress, ServedApt

TODAY = dt.date(2026, 11, 23)
COMMIT = Revision(sha="abc1234", date=TODAY, dirty=False)
STARLETTE = {"VulnerabilityID": "CVE-2024-47874", "PkgName": "starlette", "InstalledVersion": "0.38.6", "FixedVersion": "0.40.0",
             "Severity": "HIGH", "Title": "Starlette DoS via multipart/form-data"}  # fmt: skip
TORCH = {"VulnerabilityID": "CVE-2025-32434", "PkgName": "torch", "InstalledVersion": "2.2.2", "FixedVersion": "2.6.0", "Severity": "CRITICAL"}
UNFIXED = {"VulnerabilityID": "CVE-2026-0001", "PkgName": "libc6", "InstalledVersion": "2.36", "FixedVersion": "", "Severity": "HIGH"}
KEY = {"RuleID": "aws-access-key-id", "Severity": "CRITICAL", "Title": "AWS Access Key ID"}


def report(*vulns: dict, secrets: tuple[tuple[str, dict], ...] = ()) -> dict:
    results = [{"Target": "image (debian 12.15)", "Vulnerabilities": list(vulns)}]
    results += [{"Target": path, "Class": "secret", "Secrets": [secret]} for path, secret in secrets]
    return {"Results": results}


def entry(**kw: object) -> Entry:
    base = {"kind": "vulnerability", "index": 0, "id": "CVE-2024-47874", "target": "starlette", "scope": "family", "value": "web",
            "reason": "r", "owner": "o", "expires": TODAY + dt.timedelta(days=30)}  # fmt: skip
    return Entry(**{**base, **kw})  # type: ignore[arg-type]


def verdict(rep: dict, *entries: Entry, policy: str = "enforce", db: str = "v2-test", repo: str = "web", lineage=("base", "web")):
    return judge(rep, repository=repo, digest="sha256:" + "1" * 64, lineage=lineage, allowlist=Allowlist(entries=entries), policy=policy,
                 db_version=db, today=TODAY)  # fmt: skip


def test_a_fixed_high_finding_fails_enforce_and_warns_under_warn() -> None:
    v = verdict(report(STARLETTE))
    assert v.status == "FAILED" and [f.id for f in v.blocking] == ["CVE-2024-47874"] and v.counts == {"HIGH": 1}
    assert "CVE-2024-47874 HIGH starlette 0.38.6 (fixed in 0.40.0)" in v.blocking[0].line()
    assert verdict(report(STARLETTE), policy="warn").status == "WARN"


def test_an_unfixed_finding_is_counted_but_does_not_block() -> None:
    v = verdict(report(UNFIXED))
    assert v.status == "PASSED" and v.counts == {"HIGH": 1} and v.blocking == []


def test_an_allowlist_entry_in_scope_accepts_the_finding() -> None:
    v = verdict(report(STARLETTE), entry())
    assert v.status == "PASSED" and len(v.allowlisted) == 1 and v.used == ["vulnerability[0]"] and v.counts == {}


@pytest.mark.parametrize(
    ("changes", "accepted"),
    [
        ({"scope": "family", "value": "base"}, True),  # a family covers everything built on it
        ({"scope": "family", "value": "other"}, False),
        ({"scope": "image", "value": "web"}, True),
        ({"scope": "image", "value": "web-pc2"}, False),
        ({"scope": "digest", "value": "sha256:" + "1" * 64}, True),
        ({"scope": "digest", "value": "sha256:" + "2" * 64}, False),
        ({"target": "Starlette"}, True),  # package names compare as indexes do
        ({"target": "fastapi"}, False),
        ({"id": "CVE-2024-0001"}, False),
        ({"expires": TODAY - dt.timedelta(days=1)}, False),  # expired entries accept nothing
    ],
)
def test_allowlist_scope_and_match(changes: dict, accepted: bool) -> None:
    assert (verdict(report(STARLETTE), entry(**changes)).status == "PASSED") is accepted


def test_secrets_fail_even_under_warn_and_without_a_database() -> None:
    rep = report(secrets=(("app/settings.py", KEY),))
    for policy, db in (("warn", "v2-test"), ("enforce", "")):
        v = verdict(rep, policy=policy, db=db)
        assert v.status == "FAILED" and v.secrets[0].target == "app/settings.py"
    allowed = entry(kind="secret", id="aws-access-key-id", target="/app/settings.py")
    assert verdict(rep, allowed).status == "PASSED"


def test_without_a_database_an_image_is_not_scanned_never_clean() -> None:
    v = verdict(report(STARLETTE), db="")
    assert v.status == "NOT SCANNED" and v.policy == "secrets-only"
    assert "NOT SCANNED" in v.summary()


# --- the allowlist file -----------------------------------------------------------------------------

ALLOW = """\
[[vulnerability]]
id = "CVE-2025-32434"
package = "torch"
family = "family-torch-cu121"
reason = "the blueprint pins torch 2.2.2"
owner = "platform"
expires = {expires}
"""


def write_allowlist(root: Path, text: str) -> None:
    (root / "security").mkdir(exist_ok=True)
    (root / "security" / "allowlist.toml").write_text(text)


def test_allowlist_entries_load(fleet_dir: Path) -> None:
    write_allowlist(fleet_dir, ALLOW.format(expires="2027-01-15"))
    (e,) = load_fleet(fleet_dir, today=TODAY).allowlist.entries
    assert (e.id, e.target, e.scope, e.value, e.expires) == ("CVE-2025-32434", "torch", "family", "family-torch-cu121", dt.date(2027, 1, 15))


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (ALLOW.format(expires="2027-06-01"), "vulnerability[0].expires", "more than 90 days ahead"),
        (ALLOW.format(expires='"2027-01-01"'), "vulnerability[0].expires", "must be a date"),
        (ALLOW.format(expires="2027-01-01").replace('family = "family-torch-cu121"\n', ""), "vulnerability[0]", "exactly one scope"),
        (ALLOW.format(expires="2027-01-01").replace('family = "family-torch-cu121"', 'family = "family-torch-cu121"\nimage = "x"'), "vulnerability[0]",
         "exactly one scope"),
        (ALLOW.format(expires="2027-01-01").replace('"family-torch-cu121"', '"family-tourch"'), "vulnerability[0].family", "unknown family"),
        (ALLOW.format(expires="2027-01-01").replace('reason = "the blueprint pins torch 2.2.2"\n', ""), "vulnerability[0].reason", "required"),
        (ALLOW.format(expires="2027-01-01").replace('owner = "platform"', 'owner = " "'), "vulnerability[0].owner", "must not be empty"),
        (ALLOW.format(expires="2027-01-01").replace('"CVE-2025-32434"', '"cve 2025"'), "vulnerability[0].id", "advisory id"),
        (ALLOW.format(expires="2027-01-01").replace('"torch"', '"torch\\nRUN id"'), "vulnerability[0].package", "package name"),
        ('[[secret]]\nrule = "aws-access-key-id"\nimage = "web"\nreason = "r"\nowner = "o"\nexpires = 2027-01-01\n', "secret[0].path", "required"),
        ("[[vulnerabilty]]\n", "vulnerabilty", "unknown table"),
    ],
)
def test_bad_allowlist_entries_name_the_key(fleet_dir: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, fragment: str) -> None:
    write_allowlist(fleet_dir, text)
    assert main(["--root", str(fleet_dir), "validate"]) == 2
    err = capsys.readouterr().err
    assert f"security/allowlist.toml: {key}: " in err and fragment in err, err


# --- a whole run with a fake scanner ----------------------------------------------------------------


class FakeScanner:
    """Reports ``findings`` for images whose reference contains a key; records what it scanned."""

    def __init__(self, findings: dict[str, dict] | None = None, db: str = "v2-test") -> None:
        self.findings = findings or {}
        self.db = db
        self.scanned: list[str] = []

    def database(self, *, folder, repository, now) -> Database:
        return Database(version=self.db, source="fake")

    def scan(self, image, out: Path, *, vulnerabilities: bool) -> dict:
        name = image.read_text() if isinstance(image, Path) else image
        self.scanned.append(name)
        return next((rep for key, rep in self.findings.items() if f"/{key}:" in name or f"/{key}@" in name), {"Results": []})

    def sbom(self, image, out: Path) -> bytes:
        return json.dumps({"bomFormat": "CycloneDX", "components": [{"name": "numpy"}, {"name": "starlette"}]}).encode()


def gate_run(fleet_dir: Path, tmp_path: Path, scanner: FakeScanner, registry: FakeRegistry | None = None, **settings_changes):
    fleet = load_fleet(fleet_dir, today=TODAY)
    s = run_settings.from_sources(fleet, {"FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_PIP_CA": "/ca.crt"})
    s = dataclasses.replace(s, today=TODAY, **settings_changes)
    registry = registry or FakeRegistry()
    plan = make_plan(fleet, services=["ServiceRegistry"])
    write_rootfs = lambda *, out, **kw: (out.write_bytes(b"rootfs"), out)[1]  # noqa: E731
    run = pipeline.build(s, fleet, plan, progress=QuietProgress(), engine=FakeEngine(registry), registry=registry, bootstrap=write_rootfs, resolver=ServedApt(),
                         scanner=scanner, tag="r1", commit=COMMIT)  # fmt: skip
    return run, registry


def test_a_failing_image_moves_no_tag_and_blocks_its_descendants(fleet_dir: Path, tmp_path: Path) -> None:
    scanner = FakeScanner({"base-cpu-pydeps": report(STARLETTE)})
    with pytest.raises(BuildError, match="failed the supply-chain gate") as exc:
        gate_run(fleet_dir, tmp_path, scanner)
    assert "CVE-2024-47874 HIGH starlette" in exc.value.message
    record = json.loads((tmp_path / "state" / "reports" / "last-run.json").read_text())
    statuses = {r["repository"]: r["status"] for r in record["results"]}
    assert statuses == {"base-python": "built", "base-utils": "built", "base-cpu-pydeps": "failed", "family-web": "blocked",
                        "service-registry-mainpc": "blocked"}  # fmt: skip


def test_a_passing_run_attaches_sboms_and_a_no_op_scans_nothing_again(fleet_dir: Path, tmp_path: Path) -> None:
    scanner = FakeScanner()
    run, registry = gate_run(fleet_dir, tmp_path, scanner)
    assert all(r.verdict and r.verdict.status == "PASSED" for r in run.results)
    assert all(r.sbom and r.sbom["components"] == 2 for r in run.results)
    assert len(scanner.scanned) == 5
    assert all(registry.referrers(f"fleet/{r.repository}", r.digest, "application/vnd.cyclonedx+json") for r in run.results)
    again, _ = gate_run(fleet_dir, tmp_path, scanner, registry)
    assert [r.status for r in again.results] == ["cached"] * 5 and len(scanner.scanned) == 5  # kept reports, no new scans
    assert all(r.verdict and r.verdict.status == "PASSED" for r in again.results)


def test_a_cached_image_is_judged_again_under_a_new_database(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    gate_run(fleet_dir, tmp_path, FakeScanner(), registry)
    newer = FakeScanner({"base-cpu-pydeps": report(STARLETTE)}, db="v2-newer")
    with pytest.raises(BuildError, match="base-cpu-pydeps: failed the supply-chain gate"):
        gate_run(fleet_dir, tmp_path, newer, registry)
    assert any("/base-cpu-pydeps@" in s for s in newer.scanned)  # scanned in the registry, by digest


def test_warn_mode_passes_and_says_warn(fleet_dir: Path, tmp_path: Path) -> None:
    run, _ = gate_run(fleet_dir, tmp_path, FakeScanner({"base-cpu-pydeps": report(STARLETTE)}), vuln_policy="warn")
    assert any(n.startswith("WARN base-cpu-pydeps: WARN") for n in run.notes)
    assert next(r for r in run.results if r.repository == "base-cpu-pydeps").verdict.status == "WARN"


def test_an_allowlisted_finding_passes_an_expired_entry_fails_the_run_and_unused_ones_are_stale(fleet_dir: Path, tmp_path: Path) -> None:
    entry_text = ('[[vulnerability]]\nid = "CVE-2024-47874"\npackage = "starlette"\nfamily = "base-cpu-pydeps"\nreason = "test"\n'
                  'owner = "tests"\nexpires = {expires}\n')  # fmt: skip
    stale = '[[vulnerability]]\nid = "CVE-2020-0001"\npackage = "numpy"\nimage = "family-web"\nreason = "old"\nowner = "tests"\nexpires = 2026-12-31\n'
    write_allowlist(fleet_dir, entry_text.format(expires="2026-12-01") + stale)
    scanner = FakeScanner({"base-cpu-pydeps": report(STARLETTE)})
    run, _ = gate_run(fleet_dir, tmp_path, scanner)
    assert next(r for r in run.results if r.repository == "base-cpu-pydeps").verdict.allowlisted
    assert any("vulnerability[1]" in n and "stale" in n for n in run.notes)
    assert any("vulnerability[0]" in n and "expires on 2026-12-01" in n for n in run.notes)  # within 14 days
    write_allowlist(fleet_dir, entry_text.format(expires="2026-11-22"))
    with pytest.raises(SecurityError, match=r"vulnerability\[0\]: CVE-2024-47874 \(starlette\) expired on 2026-11-22"):
        gate_run(fleet_dir, tmp_path / "2", scanner)


def test_enforce_without_a_database_says_how_to_provide_one(fleet_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="FLEET_TRIVY_DB"):
        gate_run(fleet_dir, tmp_path, FakeScanner(db=""), vuln_policy="enforce")
    run, _ = gate_run(fleet_dir, tmp_path / "auto", FakeScanner(db=""))  # auto: builds, marked NOT SCANNED
    assert {r.verdict.status for r in run.results} == {"NOT SCANNED"}
    assert any("NOT SCANNED" in n for n in run.notes)


# -- the publish job: only a passed gate publishes -------------------------------------------------


def pushed(fleet_dir: Path, tmp_path: Path, scanner: FakeScanner, **settings_changes):
    """What CI's build jobs leave: the images of ServiceRegistry pushed by identity, reports attached; no tag moved."""
    fleet = load_fleet(fleet_dir, today=TODAY)
    s = dataclasses.replace(run_settings.from_sources(fleet, {"FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_PIP_CA": "/ca.crt"}), today=TODAY,
                            **settings_changes)  # fmt: skip
    registry = FakeRegistry()
    plan = make_plan(fleet, services=["ServiceRegistry"])
    write_rootfs = lambda *, out, **kw: (out.write_bytes(b"rootfs"), out)[1]  # noqa: E731
    pipeline.build(s, fleet, plan, progress=QuietProgress(), engine=FakeEngine(registry), registry=registry, bootstrap=write_rootfs, resolver=ServedApt(),
                   scanner=scanner, tag="r1", commit=COMMIT, publish_tags=False)  # fmt: skip
    return fleet, s, plan, registry


def publish(fleet, s, plan, registry, **changes):
    return pipeline.release(dataclasses.replace(s, **changes), fleet, plan, registry=registry, tag="r1", commit=COMMIT)


def test_an_image_without_a_scan_report_is_not_released(fleet_dir: Path, tmp_path: Path) -> None:
    fleet, s, plan, registry = pushed(fleet_dir, tmp_path, FakeScanner())
    target = next(key for key in registry.referrer_list if key[0] == "fleet/family-web")
    registry.referrer_list[target] = [r for r in registry.referrer_list[target] if r["artifactType"] != REPORT_TYPE]
    with pytest.raises(BuildError, match=r"family-web@sha256:[0-9a-f]+ has no scan report.*not scanned, so not released"):
        publish(fleet, s, plan, registry)
    assert not any(tag in ("latest", "r1") for _, tag in registry.entries)


def test_a_secrets_only_report_does_not_release_under_enforce(fleet_dir: Path, tmp_path: Path) -> None:
    fleet, s, plan, registry = pushed(fleet_dir, tmp_path, FakeScanner(db=""))  # auto without a database: secrets only
    with pytest.raises(BuildError, match="has no scan report for secrets and, with an advisory database, vulnerabilities"):
        publish(fleet, s, plan, registry, vuln_policy="enforce")
    with pytest.raises(BuildError, match="no scan report"):
        publish(fleet, s, plan, registry, trivy_db_repository="127.0.0.1:5000/db/trivy-db:2")  # auto, with a database configured
    assert not any(tag in ("latest", "r1") for _, tag in registry.entries)
    run = publish(fleet, s, plan, registry)  # auto with no database anywhere: released, marked NOT SCANNED
    assert {r.verdict.status for r in run.results} == {"NOT SCANNED"}


@pytest.mark.parametrize("order, released", [(("fails", "passes"), True), (("passes", "fails"), False)])
def test_the_newest_report_decides(fleet_dir: Path, tmp_path: Path, order: tuple[str, str], released: bool) -> None:
    fleet, s, plan, registry = pushed(fleet_dir, tmp_path, FakeScanner())
    repo = "fleet/family-web"
    subject = registry.manifest(repo, registry.digest(repo, plan.steps[3].id_tag))
    registry.referrer_list[(repo, subject.digest)] = [r for r in registry.referrer_list[(repo, subject.digest)] if r["artifactType"] != REPORT_TYPE]
    reports = {"fails": report(STARLETTE), "passes": report()}
    for when, name in zip(("2026-12-01T10:00:00.000000Z", "2026-12-02T10:00:00.000000Z"), order, strict=True):
        registry.attach(repo, subject, artifact_type=REPORT_TYPE, data=json.dumps(reports[name]).encode(),
                        annotations={DB_ANNOTATION: "v2-test", SCANNERS_ANNOTATION: "vuln,secret", CREATED_ANNOTATION: when})  # fmt: skip
    registry.referrer_list[(repo, subject.digest)].reverse()  # the order the registry lists them in decides nothing
    if released:
        assert publish(fleet, s, plan, registry, vuln_policy="enforce").moves
    else:
        with pytest.raises(BuildError, match="family-web: FAILED"):
            publish(fleet, s, plan, registry, vuln_policy="enforce")
        assert not any(tag in ("latest", "r1") for _, tag in registry.entries)


def test_undated_reports_of_an_older_toolkit_all_decide(fleet_dir: Path, tmp_path: Path) -> None:
    fleet, s, plan, registry = pushed(fleet_dir, tmp_path, FakeScanner())
    repo = "fleet/family-web"
    subject = registry.manifest(repo, registry.digest(repo, plan.steps[3].id_tag))
    registry.referrer_list[(repo, subject.digest)] = [r for r in registry.referrer_list[(repo, subject.digest)] if r["artifactType"] != REPORT_TYPE]
    for rep in (report(STARLETTE), report()):  # a failing report, then a passing one: the last read used to win
        registry.attach(repo, subject, artifact_type=REPORT_TYPE, data=json.dumps(rep).encode(), annotations={DB_ANNOTATION: "v2-test"})
    with pytest.raises(BuildError, match="family-web: FAILED"):
        publish(fleet, s, plan, registry, vuln_policy="enforce")
