"""The gate's side of a step: scan an image, judge it, keep the result, attach its SBOM.

Scan results are kept in the state dir per image digest and advisory database version
(``security/<digest>.json``): an image is scanned once per database, so a no-op run scans nothing
again, and a changed allowlist is applied to the kept reports without scanning.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from buildtool.adapters.files import atomic_write
from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import Manifest
from buildtool.adapters.scanner import Database, Trivy
from buildtool.core.errors import SecurityError
from buildtool.execute.gate import Verdict, judge
from buildtool.model.allowlist import FILE, Allowlist, Entry
from buildtool.model.types import Fleet
from buildtool.plan.plan import Plan
from buildtool.settings import Settings

SBOM_TYPE = "application/vnd.cyclonedx+json"
REPORT_TYPE = "application/vnd.fleet.trivy-report+json"
DB_ANNOTATION = "fleet.scan.db-version"
SCANNERS_ANNOTATION = "fleet.scan.scanners"  # what the scan looked for: "vuln,secret" or "secret"
CREATED_ANNOTATION = "org.opencontainers.image.created"  # when the report was attached: the newest decides
NO_DB = "none"


def needs_database(settings: Settings) -> bool:
    """Whether the run's policy judges vulnerabilities, so that only a report scanned with an
    advisory database can pass: enforce, or auto with a database configured."""
    configured = settings.trivy_db is not None or bool(settings.trivy_db_repository)
    return settings.vuln_policy == "enforce" or (settings.vuln_policy == "auto" and configured)


def deciding_reports(referrers: list[dict], *, needs_db: bool) -> list[dict]:
    """The scan reports (referrer descriptors) that decide an image's gate: of those that scanned
    for secrets, and with an advisory database when ``needs_db``, the newest by its attach time.
    Reports of older toolkits carry no time: when no report does, all of them decide, and the
    worst verdict wins. [] when none qualifies: the image counts as not scanned."""

    def usable(ref: dict) -> bool:
        notes = ref.get("annotations") or {}
        scanners = notes.get(SCANNERS_ANNOTATION, "vuln,secret" if notes.get(DB_ANNOTATION, NO_DB) != NO_DB else "secret").split(",")
        with_db = notes.get(DB_ANNOTATION, NO_DB) != NO_DB and "vuln" in scanners
        return "secret" in scanners and (with_db or not needs_db)

    candidates = [r for r in referrers if usable(r)]
    dated = [r for r in candidates if (r.get("annotations") or {}).get(CREATED_ANNOTATION)]
    if dated:
        return [max(dated, key=lambda r: r["annotations"][CREATED_ANNOTATION])]
    return candidates


class Scanner(Protocol):
    """What the gate needs of a scanner (:class:`buildtool.adapters.scanner.Trivy`)."""

    def database(self, *, folder: Path | None, repository: str, now: dt.datetime) -> Database: ...

    def scan(self, image: Path | str, out: Path, *, vulnerabilities: bool) -> dict: ...

    def sbom(self, image: Path | str, out: Path) -> bytes: ...


@dataclass(frozen=True, kw_only=True)
class Security:
    """What the gate needs for a run: the scanner, the database in use, the allowlist and policies."""

    scanner: Scanner
    db_version: str  # "" when there is no advisory database: secrets only
    allowlist: Allowlist
    policy: str  # the run's: enforce or warn
    warn_families: frozenset[str] = field(default_factory=frozenset)  # families that downgrade to warn
    today: dt.date
    state_dir: Path
    _records: dict[str, dict] = field(default_factory=dict, compare=False, repr=False)  # read once per run

    def policy_for(self, lineage: tuple[str, ...]) -> str:
        return "warn" if self.policy == "warn" or self.warn_families & set(lineage) else "enforce"

    def _record_path(self, digest: str) -> Path:
        return self.state_dir / "security" / f"{digest.replace(':', '-')}.json"

    def record(self, digest: str) -> dict:
        if digest not in self._records:
            try:
                self._records[digest] = json.loads(self._record_path(digest).read_text())
            except (OSError, ValueError):
                self._records[digest] = {}
        return self._records[digest]

    def keep(self, digest: str, **fields: object) -> None:
        record = dict(self.record(digest))
        for key, value in fields.items():
            if key == "report":
                record.setdefault("reports", {})[self.db_version or NO_DB] = value
            else:
                record[key] = value
        atomic_write(self._record_path(digest), json.dumps(record, sort_keys=True))
        self._records[digest] = record

    def report(self, digest: str) -> dict | None:
        """The kept scan report of ``digest`` for this run's database, if any."""
        return self.record(digest).get("reports", {}).get(self.db_version or NO_DB)

    def judge(self, report: dict, *, repository: str, digest: str, lineage: tuple[str, ...]) -> Verdict:
        return judge(
            report,
            repository=repository,
            digest=digest,
            lineage=lineage,
            allowlist=self.allowlist,
            policy=self.policy_for(lineage),
            db_version=self.db_version,
            today=self.today,
        )

    def scan(self, image: Path | str, work: Path) -> dict:
        return self.scanner.scan(image, work / "scan.json", vulnerabilities=bool(self.db_version))

    def attach_report(self, registry: Registry, repo: str, subject: Manifest, report: dict) -> None:
        """Keep the scan report in the registry too, beside the image: other machines (CI's later
        jobs, the publish job) read it instead of scanning again."""
        data = json.dumps(report, sort_keys=True).encode()
        annotations = {
            DB_ANNOTATION: self.db_version or NO_DB,
            SCANNERS_ANNOTATION: "vuln,secret" if self.db_version else "secret",
            CREATED_ANNOTATION: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        registry.attach(repo, subject, artifact_type=REPORT_TYPE, data=data, annotations=annotations)

    def registry_report(self, registry: Registry, repo: str, digest: str) -> dict | None:
        """The scan report kept in the registry for ``digest`` and this run's database, if any."""
        for ref in registry.referrers(repo, digest, REPORT_TYPE):
            if ref.get("annotations", {}).get(DB_ANNOTATION) == (self.db_version or NO_DB):
                manifest = registry.manifest(repo, ref["digest"])
                data = registry.blob(repo, manifest.data["layers"][0]["digest"]) if manifest else None
                if data:
                    return json.loads(data)
        return None

    def attach_sbom(self, registry: Registry, repo: str, subject: Manifest, sbom: bytes) -> dict[str, object]:
        """Attach the SBOM to the image by digest; what the report shows of it."""
        artifact = registry.attach(repo, subject, artifact_type=SBOM_TYPE, data=sbom, annotations={"org.opencontainers.image.title": "sbom.cdx.json"})
        components = len(json.loads(sbom).get("components", []))
        return {"digest": artifact.digest, "components": components}


def expired_in_scope(allowlist: Allowlist, today: dt.date, plan_images: list[tuple[str, tuple[str, ...]]]) -> list[Entry]:
    """Expired entries that could apply to this run's images (digest-scoped ones always could)."""
    return [e for e in allowlist.expired(today) if e.scope == "digest" or any(e.covers(repo, "", lineage) for repo, lineage in plan_images)]


def prepare(settings: Settings, fleet: Fleet, plan: Plan, *, scanner: Scanner | None = None) -> tuple[Security, list[str]]:
    """The gate of a run, and notes for the user. Raises SecurityError when the gate cannot run as
    configured: an expired allowlist entry in scope, or no advisory database under ``enforce``."""
    images = [(s.repository, s.lineage) for s in plan.steps]
    expired = expired_in_scope(fleet.allowlist, settings.today, images)
    if expired:
        lines = "\n".join(f"  - {FILE}: {e.where}: {e.id} ({e.target}) expired on {e.expires} (owner: {e.owner})" for e in expired)
        raise SecurityError(f"allowlist entries in scope of this run have expired; fix the finding or renew the entry with a new date:\n{lines}")
    scanner = scanner or Trivy(settings.state_dir / "trivy")
    notes: list[str] = []
    try:
        db = scanner.database(folder=settings.trivy_db, repository=settings.trivy_db_repository, now=dt.datetime.now(dt.UTC))
    except SecurityError as exc:
        if settings.vuln_policy == "enforce":
            raise
        db = Database(version="", source="")
        notes.append(f"the advisory database could not be obtained ({exc.message.splitlines()[0]}); images are scanned for secrets only")
    if not db.version:
        if settings.vuln_policy == "enforce":
            raise SecurityError(
                "--vuln-policy enforce needs an advisory database, and none is configured: set FLEET_TRIVY_DB to a prepared Trivy "
                "database folder (db/trivy.db and db/metadata.json), or FLEET_TRIVY_DB_REPOSITORY to a repository to download it "
                "from (Trivy's is ghcr.io/aquasecurity/trivy-db:2), or use --vuln-policy auto to build without one"
            )
        notes.append("NOT SCANNED for vulnerabilities: no advisory database is configured (FLEET_TRIVY_DB or FLEET_TRIVY_DB_REPOSITORY); secrets are scanned")
    for e in fleet.allowlist.expiring(settings.today):
        notes.append(f"{FILE}: {e.where}: {e.id} ({e.target}) expires on {e.expires}; review it (owner: {e.owner})")
    security = Security(
        scanner=scanner,
        db_version=db.version,
        allowlist=fleet.allowlist,
        policy="warn" if settings.vuln_policy == "warn" else "enforce",
        warn_families=frozenset(f.name for f in fleet.families.values() if f.vuln_policy == "warn"),
        today=settings.today,
        state_dir=settings.state_dir,
    )
    return security, notes


def stale_entries(allowlist: Allowlist, verdicts: list[Verdict], plan_images: list[tuple[str, tuple[str, ...]]]) -> list[Entry]:
    """Entries in scope of this run's scanned images that matched none of their findings."""
    used = {u for v in verdicts for u in v.used}
    scanned = {v.repository for v in verdicts}
    in_scope = [e for e in allowlist.entries if any(e.covers(repo, "", lineage) for repo, lineage in plan_images if repo in scanned)]
    return [e for e in in_scope if e.where not in used and (e.kind == "secret" or all(v.db_version for v in verdicts))]


def registry_sbom_data(registry: Registry, repo: str, digest: str) -> tuple[str, bytes] | None:
    """The artifact digest and the bytes of the SBOM attached to ``digest``, if one is."""
    for ref in registry.referrers(repo, digest, SBOM_TYPE):
        manifest = registry.manifest(repo, ref["digest"])
        data = registry.blob(repo, manifest.data["layers"][0]["digest"]) if manifest else None
        if data:
            return ref["digest"], data
    return None


def registry_sbom(registry: Registry, repo: str, digest: str) -> dict[str, object] | None:
    """Digest and component count of the SBOM attached to ``digest``, if one is."""
    found = registry_sbom_data(registry, repo, digest)
    return {"digest": found[0], "components": len(json.loads(found[1]).get("components", []))} if found else None
