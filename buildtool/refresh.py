"""A refresh of the locks, by itself: what the outside world moved since they were made.

* OS versions the archive no longer serves (Debian and Ubuntu replace a security update in place)
  move to what the same suite serves now, as a forwarding build moves them;
* packages, Python and OS, with a HIGH or CRITICAL advisory that has a fix in the configured
  advisory database move: a Python pin to the lowest fixed version, an OS package to the fixed
  version where the archive serves it, else to what it serves now; a scan afterwards proves it.

Nothing else moves. The advisories are read by scanning the locks as a root filesystem would hold
their packages (a dpkg status made of the archive's stanzas, Python distributions' metadata), with
the Trivy and database the gate uses, without building an image. The outcome is one change: the
rewritten locks and a Markdown summary (:meth:`Refresh.markdown`) of each move, why, and the
images it rebuilds, which the refresh workflow proposes as one pull request.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from buildtool import pipeline
from buildtool.adapters.scanner import Database, Trivy
from buildtool.core.errors import LockError, SecurityError
from buildtool.core.names import canonical
from buildtool.execute.gate import BLOCKING
from buildtool.locking import apt, aptsource, oslock
from buildtool.locking import lock as pylock
from buildtool.locking.targets import Target, targets
from buildtool.model.load import load_fleet
from buildtool.model.types import UBUNTU_SUITES, Fleet
from buildtool.plan.plan import make_plan
from buildtool.settings import Settings

ARCHIVE_MOVED = "no longer served by the archive"


class Scanner(Protocol):
    """What the refresh needs of Trivy (:class:`buildtool.adapters.scanner.Trivy`)."""

    def database(self, *, folder: Path | None, repository: str, now: dt.datetime) -> Database: ...

    def scan_rootfs(self, folder: Path, out: Path) -> dict: ...


@dataclass(frozen=True, kw_only=True)
class Advisory:
    """A HIGH or CRITICAL advisory with a fix, on a locked version."""

    lock: str
    package: str
    installed: str
    fixed: str  # the lowest fixed version above the installed one
    ids: tuple[str, ...]
    severity: str
    os: bool

    def why(self) -> str:
        return f"{', '.join(self.ids)} ({self.severity}, fixed in {self.fixed})"


@dataclass(frozen=True, kw_only=True)
class Change:
    lock: str
    package: str
    old: str
    new: str
    why: str


@dataclass(frozen=True, kw_only=True)
class Refresh:
    changes: list[Change]
    held: list[str] = field(default_factory=list)  # advisories the refresh could not fix, and why
    rebuilt: list[str] = field(default_factory=list)  # images whose identity the changes moved
    database: str = ""  # the advisory database read ("" none)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["## Lock refresh", ""]
        if self.changes:
            lines += ["| lock | package | old | new | why |", "|---|---|---|---|---|"]
            lines += [f"| `{c.lock}` | {c.package} | {c.old or '(new)'} | {c.new or '(removed)'} | {c.why} |" for c in self.changes]
        else:
            lines.append("Nothing moved: every locked version is served, and no fixable HIGH or CRITICAL advisory applies.")
        if self.rebuilt:
            lines += ["", f"Images rebuilt ({len(self.rebuilt)}): " + ", ".join(f"`{r}`" for r in self.rebuilt)]
        if self.held:
            lines += ["", "Advisories not fixed by this refresh:", *(f"- {h}" for h in self.held)]
        lines += ["", f"Advisory database: {self.database or 'none configured (archive moves only)'}", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"


def refresh(settings: Settings, fleet: Fleet, *, scanner: Scanner | None = None, resolver: oslock.Apt = apt, resolve: pylock.Resolve | None = None) -> Refresh:
    """Move what the outside world moved (see the module docstring); return what moved and why."""
    problems = pylock.verify(fleet) + oslock.verify(fleet)
    if problems:
        raise LockError("the locks do not match their inputs; lock them first (`nox -s lock`):\n" + "\n".join(f"  - {p}" for p in problems))
    before = {s.key: (s.repository, s.identity) for s in make_plan(fleet, all_families=True, all_services=True).steps}
    changes = archive_moves(settings, fleet, resolver=resolver)
    cache = pipeline.apt_cache(settings)
    fleet = load_fleet(fleet.root)
    scanner = scanner or Trivy(settings.state_dir / "trivy")
    db = _database(settings, scanner)
    held: list[str] = []
    notes: list[str] = []
    if db:
        with tempfile.TemporaryDirectory(prefix="fleet-refresh-") as tmp:
            found = _advisories(fleet, scanner, Path(tmp), cache, resolver, notes)
            changes += _fix(fleet, found, cache=cache, resolver=resolver, resolve=resolve, ca=settings.ca_bundle, held=held)
            fleet = load_fleet(fleet.root)
            left = _advisories(fleet, scanner, Path(tmp) / "after", cache, resolver, [])
        held += [f"`{a.lock}`: {a.package} {a.installed}: {a.why()}; the refresh could not move it" for a in left if not _named(held, a)]
    after = make_plan(fleet, all_families=True, all_services=True).steps
    rebuilt = [s.repository for s in after if before.get(s.key, ("", ""))[1] != s.identity]
    return Refresh(changes=changes, held=held, rebuilt=rebuilt, database=db, notes=notes)


def archive_moves(settings: Settings, fleet: Fleet, *, resolver: oslock.Apt = apt) -> list[Change]:
    """Forward every OS lock's versions the archive no longer serves (all of them, as a build
    forwards those it installs from); what moved. The archive's indexes are read afresh."""
    pipeline.prepare_state(settings)
    cache = pipeline.apt_cache(settings)
    aptsource.new_run()
    gone = oslock.unserved(fleet, {t.path: t.sections for t in oslock.os_targets(fleet)}, cache=cache, resolver=resolver)
    return [_change(m) for m in oslock.forward(fleet, gone, cache=cache, resolver=resolver)] if gone else []


def _named(held: list[str], a: Advisory) -> bool:
    return any(h.startswith(f"`{a.lock}`: {a.package} ") for h in held)


def _change(move: oslock.Move) -> Change:
    where = f" ({move.pocket})" if move.pocket else ""
    return Change(lock=move.path, package=move.package, old=move.old, new=move.new, why=f"{move.reason}{where}")


def _database(settings: Settings, scanner: Scanner) -> str:
    """The configured advisory database's version ("" when there is none and the policy allows it)."""
    db = scanner.database(folder=settings.trivy_db, repository=settings.trivy_db_repository, now=dt.datetime.now(dt.UTC))
    if not db.version and settings.vuln_policy == "enforce":
        raise SecurityError("the refresh reads advisories from the configured database, and none is configured: set FLEET_TRIVY_DB or "
                            "FLEET_TRIVY_DB_REPOSITORY, or run it with --vuln-policy auto for the archive moves only")  # fmt: skip
    return db.version


# -- advisories of the locks -----------------------------------------------------------------------


def _python_targets(fleet: Fleet) -> list[Target]:
    """The Python locks whose packages reach images (build tools stay in builder stages)."""
    return [t for t in targets(fleet) if not t.no_deps]


def _advisories(fleet: Fleet, scanner: Scanner, work: Path, cache: Path, resolver: oslock.Apt, notes: list[str]) -> list[Advisory]:
    out: list[Advisory] = []
    py = work / "python"
    for t in _python_targets(fleet):  # each pin where it is owned: a child holds its parent's pins as they are
        inherited = fleet.locks[t.constraints].pins if t.constraints in fleet.locks else {}
        for pin in (p for n, p in fleet.locks[t.path].pins.items() if n not in inherited):
            meta = py / t.name / f"lib/python{t.python}/site-packages/{pin.name}-{pin.version}.dist-info/METADATA"
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(f"Metadata-Version: 2.1\nName: {pin.name}\nVersion: {pin.version}\n")
    if py.exists():
        by_name = {t.name: t.path for t in _python_targets(fleet)}
        report = scanner.scan_rootfs(py, work / "python.json")
        out += _read(report, lambda v: by_name.get(v.get("PkgPath", "").split("/", 1)[0], ""), os=False)
    for t in oslock.os_targets(fleet):
        root = work / "os" / t.family
        lock = fleet.os_locks[t.path]
        release, stanzas = resolver.stanzas(pins=lock.pins(*t.sections), cache=cache, **t.source())
        if not release:
            notes.append(f"{t.path}: the {t.suite} archive's InRelease names no release number; its OS advisories were not read")
            continue
        _os_root(root, t.suite, release, stanzas)
        out += _read(scanner.scan_rootfs(root, work / f"os-{t.family}.json"), lambda v, path=t.path: path, os=True)
    return out


def _os_root(root: Path, suite: str, release: str, stanzas: Iterable[str]) -> None:
    """A root filesystem as Trivy's OS analyzers read it: the release files and a dpkg status."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    if suite in UBUNTU_SUITES:
        (root / "etc/lsb-release").write_text(f"DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE={release}\nDISTRIB_CODENAME={suite}\n")
        (root / "etc/os-release").write_text(f'ID=ubuntu\nVERSION_ID="{release}"\nVERSION_CODENAME={suite}\n')
    else:
        (root / "etc/debian_version").write_text(release + "\n")
        (root / "etc/os-release").write_text(f'ID=debian\nVERSION_ID="{release.split(".")[0]}"\nVERSION_CODENAME={suite}\n')
    (root / "var/lib/dpkg/status").write_text(apt.status(stanzas))


def _read(report: dict, lock_of, *, os: bool) -> list[Advisory]:
    """The fixable HIGH and CRITICAL advisories of a report, one per (lock, package)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for result in report.get("Results") or []:
        for v in result.get("Vulnerabilities") or []:
            if v.get("Severity") in BLOCKING and v.get("FixedVersion") and (lock := lock_of(v)):
                grouped.setdefault((lock, v.get("PkgName", "")), []).append(v)
    out = []
    for (lock, package), found in sorted(grouped.items()):
        installed = found[0].get("InstalledVersion", "")
        fixed = [_lowest(v["FixedVersion"], installed, os=os) for v in found]
        severity = "CRITICAL" if any(v.get("Severity") == "CRITICAL" for v in found) else "HIGH"
        known = sorted({f for f in fixed if f})
        # OS: one fixed version is pinned; several (or none known) take what the archive serves now.
        # Python: each advisory's lowest fix; the highest of them fixes all.
        target = (known[0] if len(known) == 1 else "") if os else max(known, key=_version) if known else ""
        out.append(Advisory(lock=lock, package=package, installed=installed, fixed=target, ids=tuple(sorted({v["VulnerabilityID"] for v in found})),
                            severity=severity, os=os))  # fmt: skip
    return out


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")


def _lowest(fixed: str, installed: str, *, os: bool) -> str:
    """The lowest of an advisory's fixed versions above ``installed`` (Python); an OS advisory names one."""
    versions = [v.strip() for v in fixed.split(",") if v.strip()]
    if os:
        return versions[0] if versions else ""
    above = sorted((v for v in versions if _version(v) > _version(installed)), key=_version)
    return above[0] if above else ""


# -- moving them -----------------------------------------------------------------------------------


def _fix(fleet: Fleet, found: list[Advisory], *, cache: Path, resolver: oslock.Apt, resolve: pylock.Resolve | None, ca: Path, held: list[str]) -> list[Change]:
    changes: list[Change] = []
    py_targets = {t.path: t for t in _python_targets(fleet)}
    want_py: dict[str, dict[str, str]] = {}
    for a in (a for a in found if not a.os):
        exact = _exact_requirement(py_targets[a.lock], a.package)
        if not a.fixed:
            held.append(f"`{a.lock}`: {a.package} {a.installed}: {', '.join(a.ids)}: no fixed version above it")
        elif exact:
            held.append(f"`{a.lock}`: {a.package} {a.installed}: {a.why()}: pinned as {exact!r} in the family's or service's requirements; change it there")
        else:
            want_py.setdefault(a.lock, {})[a.package] = a.fixed
    why = {(a.lock, a.package): a.why() for a in found if not a.os}
    kw = {"resolve": resolve} if resolve else {}
    for path, names in want_py.items():  # one lock at a time: one that cannot move keeps none of the others from moving
        before = {n: p.version for n, p in fleet.locks[path].pins.items()}
        try:
            pylock.lock(fleet, want={path: names}, ca_bundle=ca, **kw)
        except LockError as exc:
            reason = next((line.strip() for line in reversed(exc.message.splitlines()) if line.strip()), "")[:240]
            held.append(f"`{path}`: {', '.join(f'{n} -> {v}' for n, v in names.items())} could not be resolved: {reason}")
            continue
        fleet = load_fleet(fleet.root)
        after = {n: p.version for n, p in fleet.locks[path].pins.items()}
        changes += [Change(lock=path, package=n, old=before.get(n, ""), new=after.get(n, ""), why=why.get((path, n), "moved with them"))
                    for n in sorted(n for n in {*before, *after} if before.get(n) != after.get(n))]  # fmt: skip
    os_found = [a for a in found if a.os]
    if os_found:
        by_path = {t.path: t for t in oslock.os_targets(fleet)}
        want: dict[str, dict[str, str | None]] = {}
        for a in os_found:  # the fixed version where the archive serves it, else what it serves now
            served = bool(a.fixed) and not resolver.unserved(pins={a.package: a.fixed}, cache=cache, **by_path[a.lock].source())
            want.setdefault(a.lock, {})[a.package] = a.fixed if served else None
        why = {(a.lock, a.package): a.why() for a in os_found}
        for o in oslock.lock(fleet, want=want, cache=cache, resolver=resolver):
            changes += [_change(m) if (m.path, m.package) not in why else Change(lock=m.path, package=m.package, old=m.old, new=m.new,
                        why=why[(m.path, m.package)]) for m in o.moves]  # fmt: skip
    return changes


def _exact_requirement(target: Target, package: str) -> str:
    """The requirement of ``target`` that pins ``package`` exactly ("" when none does)."""
    for line in target.requirements:
        req = Requirement(line)
        if canonical(req.name) == canonical(package) and any(s.operator in ("==", "===") for s in req.specifier):
            return line
    return ""


def write(result: Refresh, path: Path) -> None:
    """Keep the summary as Markdown, and what moved as JSON beside it (refresh.json)."""
    from buildtool.adapters.files import atomic_write

    atomic_write(path, result.markdown())
    atomic_write(path.with_suffix(".json"), json.dumps({"changes": [vars(c) for c in result.changes], "held": result.held,
                                                        "rebuilt": result.rebuilt, "database": result.database}, indent=2))  # fmt: skip
