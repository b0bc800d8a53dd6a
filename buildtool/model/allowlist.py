"""security/allowlist.toml: accepted findings, each with a scope, a reason, an owner and an expiry.

A vulnerability entry names an advisory and a package; a secret entry names a rule and a path in
the image. The scope is exactly one of: a family (that family, everything built on it, and the
services on them), one image (a repository name), or one image digest. An entry expires at most
90 days after it is read; an expired entry in scope fails the run that meets it (the gate), and
entries that matched nothing are reported as stale.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildtool.core.names import canonical
from buildtool.model.schema import NAME_RE, Checker, Collector, single_line

FILE = "security/allowlist.toml"
MAX_DAYS = 90
WARN_DAYS = 14
ADVISORY_RE = re.compile(r"(CVE-[0-9]{4}-[0-9]{4,}|GHSA(-[23456789cfghjmpqrvwx]{4}){3}|[A-Z][A-Z0-9]*(-[A-Za-z0-9]+)+)")
PACKAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
RULE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
PATH_RE = re.compile(r"[^\x00-\x1f\x7f]{1,1024}")


@dataclass(frozen=True, kw_only=True)
class Entry:
    kind: str  # "vulnerability" or "secret"
    index: int  # position in its array, for messages: vulnerability[2]
    id: str  # advisory id, or secret rule id
    target: str  # package (vulnerability) or path in the image (secret)
    scope: str  # "family", "image" or "digest"
    value: str  # the family name, repository name or digest
    reason: str
    owner: str
    expires: dt.date

    @property
    def where(self) -> str:
        return f"{self.kind}[{self.index}]"

    def covers(self, image: str, digest: str, lineage: tuple[str, ...]) -> bool:
        """Whether this entry's scope includes an image (its repository, digest and family lineage)."""
        if self.scope == "family":
            return self.value in lineage
        if self.scope == "image":
            return self.value == image
        return self.value == digest

    def matches(self, kind: str, id: str, target: str) -> bool:
        if kind != self.kind or id != self.id:
            return False
        if kind == "vulnerability":
            return canonical(target) == canonical(self.target)
        return target.lstrip("/") == self.target.lstrip("/")


@dataclass(frozen=True, kw_only=True)
class Allowlist:
    entries: tuple[Entry, ...] = ()

    def expired(self, today: dt.date) -> list[Entry]:
        return [e for e in self.entries if e.expires < today]

    def expiring(self, today: dt.date) -> list[Entry]:
        return [e for e in self.entries if today <= e.expires <= today + dt.timedelta(days=WARN_DAYS)]


def _date(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v, None
    return None, f"must be a date like 2027-01-31 (TOML date, no quotes), got {v!r}"


def _pattern(regex: re.Pattern[str], what: str) -> Checker:
    def check(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, str) or not regex.fullmatch(v):
            return None, f"{v!r} is not {what}"
        return v, None

    return check


COMMON: dict[str, Checker] = {
    "family": _pattern(NAME_RE, "a family name"),
    "image": _pattern(NAME_RE, "an image (repository) name like family-web or service-registry-mainpc"),
    "digest": _pattern(DIGEST_RE, "an image digest sha256:<64 hex>"),
    "reason": single_line,
    "owner": single_line,
    "expires": _date,
}
SCHEMAS: dict[str, dict[str, Checker]] = {
    "vulnerability": {"id": _pattern(ADVISORY_RE, "an advisory id like CVE-2025-32434 or GHSA-xxxx-xxxx-xxxx"),
                      "package": _pattern(PACKAGE_RE, "a package name"), **COMMON},
    "secret": {"rule": _pattern(RULE_RE, "a secret rule id like aws-access-key-id"), "path": _pattern(PATH_RE, "a path in the image"), **COMMON},
}  # fmt: skip
REQUIRED = {"vulnerability": ("id", "package"), "secret": ("rule", "path")}


def read_allowlist(c: Collector, families: set[str], today: dt.date) -> Allowlist:
    """Read the allowlist (absent: empty); every fault is a problem of ``c`` with its key."""
    path: Path = c.root / FILE
    if not (path.exists() or path.is_symlink()):
        return Allowlist()
    data = c.load_toml(path)
    if data is None:
        return Allowlist()
    entries: list[Entry] = []
    for key in data:
        if key not in SCHEMAS:
            c.add(FILE, key, "unknown table; use [[vulnerability]] or [[secret]]")
    for kind, schema in SCHEMAS.items():
        items = data.get(kind, [])
        if not isinstance(items, list):
            c.add(FILE, kind, f"must be an array of tables: [[{kind}]]")
            continue
        for i, item in enumerate(items):
            where = f"{kind}[{i}]"
            v = c.table(FILE, where, item, schema, "allowlist")
            missing = [k for k in (*REQUIRED[kind], "reason", "owner", "expires") if k not in (item if isinstance(item, dict) else {})]
            for k in missing:
                c.add(FILE, f"{where}.{k}", f"is required in a {kind} entry")
            scopes = [k for k in ("family", "image", "digest") if k in (item if isinstance(item, dict) else {})]
            if len(scopes) != 1:
                c.add(FILE, where, f"needs exactly one scope: family, image or digest (has {', '.join(scopes) or 'none'})")
            if "family" in v and v["family"] not in families:
                c.add(FILE, f"{where}.family", f"unknown family {v['family']!r}")
            for k in ("reason", "owner"):
                if k in v and not v[k].strip():
                    c.add(FILE, f"{where}.{k}", "must not be empty: say why the finding is accepted, and who owns it")
            expires = v.get("expires")
            if expires and expires > today + dt.timedelta(days=MAX_DAYS):
                c.add(FILE, f"{where}.expires", f"{expires} is more than {MAX_DAYS} days ahead; accept a finding for at most {MAX_DAYS} days, then review it")
            if missing or len(scopes) != 1 or len(v) != len(item):
                continue
            scope = scopes[0]
            entries.append(
                Entry(
                    kind=kind,
                    index=i,
                    id=v["id"] if kind == "vulnerability" else v["rule"],
                    target=v["package"] if kind == "vulnerability" else v["path"],
                    scope=scope,
                    value=v[scope],
                    reason=v["reason"],
                    owner=v["owner"],
                    expires=v["expires"],
                )
            )
    return Allowlist(entries=tuple(entries))
