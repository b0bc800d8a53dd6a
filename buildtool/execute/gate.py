"""The supply-chain gate: a Trivy report of one image, judged against the allowlist and the policy.

Pure: the scan itself is :mod:`buildtool.adapters.scanner`'s. An image fails the gate when it has
a secret, or (policy ``enforce``) a HIGH or CRITICAL vulnerability with a fix available that no
allowlist entry in scope accepts. ``warn`` reports the same findings and fails nothing; with no
advisory database the image is NOT SCANNED for vulnerabilities (never "clean"). Secrets always
enforce.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from buildtool.model.allowlist import Allowlist, Entry

BLOCKING = ("CRITICAL", "HIGH")
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
POLICIES = ("auto", "enforce", "warn")


@dataclass(frozen=True, kw_only=True)
class Finding:
    kind: str  # "vulnerability" or "secret"
    id: str  # advisory id or secret rule id
    target: str  # package name, or the file's path in the image
    severity: str
    installed: str = ""  # installed version (vulnerabilities)
    fixed: str = ""  # first fixed version, "" when no fix is known
    title: str = ""

    def line(self) -> str:
        if self.kind == "secret":
            return f"secret {self.id} in /{self.target.lstrip('/')} ({self.severity}): {self.title}"
        fix = f"fixed in {self.fixed}" if self.fixed else "no fix yet"
        return f"{self.id} {self.severity} {self.target} {self.installed} ({fix}): {self.title}"


@dataclass(frozen=True, kw_only=True)
class Verdict:
    repository: str
    digest: str
    policy: str  # the policy applied: enforce | warn | secrets-only
    db_version: str  # "" when the image was not scanned for vulnerabilities
    status: str  # PASSED | FAILED | WARN | NOT SCANNED (vulnerabilities; secrets always checked)
    counts: dict[str, int] = field(default_factory=dict)  # vulnerabilities by severity, allowlisted ones excluded
    allowlisted: list[Finding] = field(default_factory=list)
    blocking: list[Finding] = field(default_factory=list)  # what fails (or, under warn, would fail) the gate
    secrets: list[Finding] = field(default_factory=list)  # secrets not allowlisted: always blocking
    used: list[str] = field(default_factory=list)  # allowlist entries that matched, as "vulnerability[0]"

    @property
    def failed(self) -> bool:
        return self.status == "FAILED"

    def summary(self) -> str:
        counts = ", ".join(f"{s} {self.counts[s]}" for s in SEVERITIES if self.counts.get(s)) or "none"
        scanned = f"vulnerabilities: {counts}; {len(self.allowlisted)} allowlisted"
        if not self.db_version:
            scanned = "vulnerabilities: NOT SCANNED (no advisory database)"
        return f"{self.status}: {scanned}; secrets: {len(self.secrets)}"


def findings(report: dict) -> list[Finding]:
    """Vulnerabilities and secrets of a Trivy JSON report (``trivy image --format json``)."""
    out: list[Finding] = []
    for result in report.get("Results") or []:
        for v in result.get("Vulnerabilities") or []:
            out.append(
                Finding(
                    kind="vulnerability",
                    id=v.get("VulnerabilityID", ""),
                    target=v.get("PkgName", ""),
                    severity=v.get("Severity", "UNKNOWN"),
                    installed=v.get("InstalledVersion", ""),
                    fixed=v.get("FixedVersion", ""),
                    title=(v.get("Title") or "")[:120],
                )
            )
        for s in result.get("Secrets") or []:
            out.append(Finding(kind="secret", id=s.get("RuleID", ""), target=result.get("Target", ""), severity=s.get("Severity", "UNKNOWN"),
                               title=s.get("Title", "")))  # fmt: skip
    return out


def judge(
    report: dict,
    *,
    repository: str,
    digest: str,
    lineage: tuple[str, ...],
    allowlist: Allowlist,
    policy: str,
    db_version: str,
    today: dt.date,
) -> Verdict:
    """The verdict on one image. ``policy``: enforce or warn; ``db_version`` "" = no vulnerability scan."""
    in_scope = [e for e in allowlist.entries if e.covers(repository, digest, lineage) and e.expires >= today]
    used: set[str] = set()

    def accepted(f: Finding) -> Entry | None:
        entry = next((e for e in in_scope if e.matches(f.kind, f.id, f.target)), None)
        if entry:
            used.add(entry.where)
        return entry

    allowlisted, blocking, secrets, counts = [], [], [], Counter()
    for f in findings(report):
        if accepted(f):
            allowlisted.append(f)
        elif f.kind == "secret":
            secrets.append(f)
        else:
            counts[f.severity] += 1
            if f.severity in BLOCKING and f.fixed:
                blocking.append(f)
    if not db_version:
        status = "FAILED" if secrets else "NOT SCANNED"
    elif secrets or (blocking and policy == "enforce"):
        status = "FAILED"
    else:
        status = "WARN" if blocking else "PASSED"
    return Verdict(
        repository=repository,
        digest=digest,
        policy=policy if db_version else "secrets-only",
        db_version=db_version,
        status=status,
        counts=dict(counts),
        allowlisted=allowlisted,
        blocking=blocking,
        secrets=secrets,
        used=sorted(used),
    )
