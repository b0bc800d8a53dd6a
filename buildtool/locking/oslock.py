"""OS package locks: resolve, stamp, verify and prove the exact Debian/Ubuntu versions of each family.

A bootstrapped root family locks its two roots; a family with ``os_packages`` locks what apt
adds for them on top of the root's builder root (its ancestors' OS packages included, at their
locked versions, so one package has one version down a lineage); ``builder.os_packages`` lock
the same way. Resolution is apt's own, run on the host against the archive
(:mod:`buildtool.locking.apt`), so a lock is what the build installs; the build checks it again.

Like the Python locks: :func:`verify` reads stamps only; :func:`check` re-resolves with the
locked versions and fails when the result differs; :func:`lock` keeps existing versions unless
asked to move them (``upgrade``, ``upgrade_packages``, ``release``: names per lock).

Debian and Ubuntu replace a security update in place, so a locked version goes unserved within
days unless the root reads a snapshot archive. :func:`unserved` finds such versions in the
archive's indexes; a build forwards them (``release``: each moves to what the archive serves
now, nothing else moves) or, with ``--locked``, refuses; ``lock --check`` reports them, and
fails on them only with ``--locked`` (the refresh workflow's mode).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from buildtool.adapters.bootstrap import includes, keyring, merged_usr
from buildtool.adapters.files import atomic_write, inside_repo
from buildtool.core.errors import LockError, UnservedVersion
from buildtool.core.hashing import sha256_json
from buildtool.locking import apt
from buildtool.model.locks import INPUTS_KEY, stamp
from buildtool.model.oslocks import ARCHIVE_KEY, OsLock, Pins, format_os_lock, os_lock_path, parse_os_lock
from buildtool.model.types import Archive, Fleet

COMMAND = "nox -s lock"
REFRESH = "nox -s refresh"
# Bump when what a section means changes (the resolver's rules, the bootstrap's variants).
RULES = "1"


@dataclass(frozen=True, kw_only=True)
class OsTarget:
    family: str
    path: str
    suite: str
    sections: tuple[str, ...]
    archive: Archive = field(default_factory=Archive)  # its root's
    keyring: Path | None = None  # the archive's own keyring (None: the distribution's)

    def source(self) -> dict[str, object]:
        """Where apt reads this lock's archive: the keywords of the resolver's calls."""
        return {"suite": self.suite, "source": self.archive, "keyring": self.keyring}


class Apt(Protocol):
    """What OS locking asks apt (the host's: :mod:`buildtool.locking.apt`; tests fake it). Each
    call names its archive (``suite``, ``source``, ``keyring``) and reads its lists once per run."""

    def resolve_root(self, *, include: Sequence[str], merged_usr: bool, pins: Mapping[str, str], cache: Path, **source: object) -> apt.Resolution: ...

    def resolve_added(self, *, base: Mapping[str, str], install: Sequence[str], pins: Mapping[str, str], cache: Path, **source: object) -> apt.Resolution: ...

    def unserved(self, *, pins: Mapping[str, str], cache: Path, **source: object) -> list[tuple[str, str]]: ...

    def pockets(self, *, packages: Iterable[tuple[str, str]], cache: Path, **source: object) -> dict[tuple[str, str], str]: ...

    def stanzas(self, *, pins: Mapping[str, str], cache: Path, **source: object) -> tuple[str, list[str]]: ...


@dataclass(frozen=True, kw_only=True)
class Move:
    """One package of a lock that moved: ``old`` "" when it is new, ``new`` "" when it went."""

    path: str
    family: str
    package: str
    old: str
    new: str
    pocket: str = ""  # where the archive serves ``new``
    reason: str = ""  # why it moved: the archive replaced it, an advisory fixed in ``new``, ...

    def line(self) -> str:
        where = f" ({self.pocket})" if self.pocket else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.package} {self.old or '(new)'} -> {self.new or '(removed)'}{where}{why}"


def os_targets(fleet: Fleet, names: Iterable[str] | None = None) -> list[OsTarget]:
    """Every family with an OS lock, parents first; ``names`` filters by family name."""
    wanted = set(names) if names is not None else None
    out = []
    for family in fleet.families.values():
        sections = fleet.os_lock_sections(family.name)
        if sections and (wanted is None or family.name in wanted):
            root = fleet.root_of(family.name).root
            assert root is not None
            own = keyring(root.suite, root.archive, fleet.root) if root.archive.keyring else None
            out.append(OsTarget(family=family.name, path=os_lock_path(family.name), suite=root.suite, sections=sections, archive=root.archive, keyring=own))
    return out


def _ancestors(fleet: Fleet, family: str) -> list[str]:
    return [f.name for f in fleet.lineage(family)[:-1]]


def _inputs(fleet: Fleet, t: OsTarget, locks: Mapping[str, OsLock]) -> dict[str, object]:
    """Everything a lock's resolution depends on (not the archive's content: that is what it records)."""
    fam = fleet.families[t.family]
    root = fleet.root_of(t.family)
    assert root.root is not None
    data: dict[str, object] = {"rules": RULES, "suite": t.suite, "sections": list(t.sections)}
    if t.archive.declared():  # a mirror or snapshot of the fleet's choosing (the default archive changes nothing)
        data["archive"] = t.archive.declared()
    if fam.root:
        data["includes"] = {v: includes(t.suite, v, fam.root.packages, fam.root.builder_packages) for v in ("builder", "runtime")}
        data["merged_usr"] = merged_usr(t.suite)
        return data
    root_lock = locks.get(os_lock_path(root.name))
    data["root"] = sorted(root_lock.pins("root-builder").items()) if root_lock else None
    if "runtime" in t.sections:
        data["runtime"] = _runtime_request(fleet, t.family)
        data["inherited"] = sorted(_inherited(fleet, t.family, locks).items())
    if "builder" in t.sections:
        assert fam.builder is not None
        data["builder"] = sorted(fam.builder.os_packages)
    return data


def _runtime_request(fleet: Fleet, family: str) -> list[str]:
    """What the export stage's apt installs: the lineage's OS packages, the family's own last."""
    return sorted({p for f in fleet.lineage(family) for p in f.os_packages})


def _inherited(fleet: Fleet, family: str, locks: Mapping[str, OsLock]) -> dict[str, str]:
    """The runtime versions the family's ancestors locked: its own resolution must keep them."""
    out: dict[str, str] = {}
    for name in _ancestors(fleet, family):
        lock = locks.get(os_lock_path(name))
        if lock is not None:
            out.update(lock.pins("runtime"))
    return out


def inputs_hash(fleet: Fleet, t: OsTarget, locks: Mapping[str, OsLock]) -> str:
    return sha256_json(_inputs(fleet, t, locks))


def problem(fleet: Fleet, t: OsTarget, locks: Mapping[str, OsLock], faults: Mapping[str, str]) -> str | None:
    """Why ``t``'s lock cannot be used as it is, found without resolving; None when it can."""
    if t.path in faults:
        return faults[t.path]
    lock = locks.get(t.path)
    if lock is None:
        return f"{t.path}: missing; run `{COMMAND}`"
    if lock.edited():
        return f"{t.path}: was edited by hand (its content no longer matches its content-sha256); run `{COMMAND} -- {t.family}`"
    if lock.header_value(INPUTS_KEY) != inputs_hash(fleet, t, locks):
        return f"{t.path}: stale (its packages, or the versions it builds on, changed since it was locked); run `{COMMAND} -- {t.family}`"
    missing = [s for s in t.sections if not lock.sections.get(s)]
    if missing:
        return f"{t.path}: has no [{'], ['.join(missing)}] section; run `{COMMAND} -- {t.family}`"
    inherited = _inherited(fleet, t.family, locks)
    clash = [f"{n} {v} (inherited {inherited[n]})" for n, v in lock.pins("runtime").items() if n in inherited and inherited[n] != v]
    if clash:
        return f"{t.path}: locks {', '.join(clash)}; run `{COMMAND} -- {t.family}`"
    return None


def verify(fleet: Fleet, names: Iterable[str] | None = None) -> list[str]:
    """Problems with the OS locks found without resolving."""
    return [p for t in os_targets(fleet, names) if (p := problem(fleet, t, fleet.os_locks, fleet.lock_faults))]


@dataclass(frozen=True, kw_only=True)
class Resolved:
    sections: dict[str, Pins]
    archives: dict[str, str]  # pocket -> date
    apt: str


def resolve(fleet: Fleet, t: OsTarget, locks: Mapping[str, OsLock], *, keep: Mapping[str, str], cache: Path, resolver: Apt = apt) -> Resolved:
    """Resolve every section of ``t``; ``keep`` (name -> version) are the versions to hold where they still fit."""
    fam = fleet.families[t.family]
    results: dict[str, apt.Resolution] = {}
    if fam.root:
        for variant in ("builder", "runtime"):
            wanted = includes(t.suite, variant, fam.root.packages, fam.root.builder_packages)
            results[f"root-{variant}"] = resolver.resolve_root(include=wanted, merged_usr=merged_usr(t.suite), pins=keep, cache=cache, **t.source())
    else:
        root_lock = locks[os_lock_path(fleet.root_of(t.family).name)]
        base = root_lock.pins("root-builder")
        if "runtime" in t.sections:
            pins = {**keep, **_inherited(fleet, t.family, locks)}
            results["runtime"] = resolver.resolve_added(base=base, install=_runtime_request(fleet, t.family), pins=pins, cache=cache, **t.source())
        if "builder" in t.sections:
            assert fam.builder is not None
            results["builder"] = resolver.resolve_added(base=base, install=list(fam.builder.os_packages), pins=keep, cache=cache, **t.source())
    archives: dict[str, str] = {}
    for r in results.values():
        archives.update(dict(r.archives))
    return Resolved(sections={s: r.packages for s, r in results.items()}, archives=archives, apt=next(iter(results.values())).apt)


def render(fleet: Fleet, t: OsTarget, locks: Mapping[str, OsLock], resolved: Resolved) -> str:
    fam = fleet.families[t.family]
    header = [
        f"OS packages of family {t.family}, generated by buildtool from {fam.file}; do not edit.",
        f"Relock with: {COMMAND} -- {t.family} (keeps versions that still fit), or --upgrade-package NAME / --upgrade to move them.",
        f"{ARCHIVE_KEY}: " + ", ".join(f"{pocket} {date}" for pocket, date in sorted(resolved.archives.items())),
    ]
    text = format_os_lock(header, resolved.sections)
    return stamp(text, inputs_hash(fleet, t, locks), f"apt {resolved.apt}")


@dataclass(frozen=True, kw_only=True)
class OsOutcome:
    target: OsTarget
    changed: bool
    resolved: bool
    seconds: float
    packages: int
    moves: tuple[Move, ...] = ()  # the packages whose version changed (pocket of the new one)


def lock(
    fleet: Fleet,
    names: Iterable[str] | None = None,
    *,
    cache: Path,
    upgrade: bool = False,
    upgrade_packages: Iterable[str] = (),
    want: Mapping[str, Mapping[str, str | None]] | None = None,
    resolver: Apt = apt,
) -> list[OsOutcome]:
    """Bring every OS lock up to date (parents first), moving only what must move; write those that changed.

    A lock is resolved again when it is missing, stale or edited, named, pins one of
    ``upgrade_packages``, has a ``want`` entry (lock path -> {name: version to hold instead, or
    None: what the archive serves now}), or ``upgrade`` is set. Its versions are kept, except
    those ``upgrade``, ``upgrade_packages`` and ``want`` move, and those the archive no longer
    serves, which move to what the same suite serves now (a child to resolve again reads its
    root's versions: that root is resolved too).
    """
    named = set(names or ())
    released = set(upgrade_packages)
    want = want or {}
    locks = dict(fleet.os_locks)
    faults = dict(fleet.lock_faults)
    targets = os_targets(fleet)

    def due(t: OsTarget) -> bool:
        pins = locks[t.path].pins(*t.sections) if t.path in locks else {}
        return bool(upgrade or t.family in named or released & set(pins) or t.path in want or problem(fleet, t, locks, faults))

    by_path = {t.path: t for t in targets}
    for t in [t for t in targets if due(t) and not fleet.families[t.family].root]:
        root = by_path.get(os_lock_path(fleet.root_of(t.family).name))
        if root is not None and root.path in locks and resolver.unserved(pins=locks[root.path].pins("root-builder"), cache=cache, **root.source()):
            named.add(root.family)
    outcomes = []
    for t in targets:
        current = locks.get(t.path)
        pins = current.pins(*t.sections) if current else {}
        if not due(t):
            outcomes.append(OsOutcome(target=t, changed=False, resolved=False, seconds=0.0, packages=len(pins)))
            continue
        start = time.monotonic()
        asked = want.get(t.path, {})
        keep = {} if upgrade else {n: v for n, v in pins.items() if n not in released and n not in asked}
        gone = {n for n, _ in resolver.unserved(pins=keep, cache=cache, **t.source())}
        keep = {n: v for n, v in keep.items() if n not in gone} | {n: v for n, v in asked.items() if v}
        try:
            resolved = resolve(fleet, t, locks, keep=keep, cache=cache, resolver=resolver)
        except UnservedVersion as exc:  # a version asked for that the archive does not serve
            raise LockError(f"{t.path}: {exc.message}") from exc
        text = render(fleet, t, locks, resolved)
        changed = current is None or _packages(current.text) != _packages(text) or current.edited() or problem(fleet, t, locks, faults) is not None
        moves: tuple[Move, ...] = ()
        if changed:
            atomic_write(inside_repo(fleet.root, t.path), text)
            locks[t.path] = parse_os_lock(t.path, text)
            faults.pop(t.path, None)
            if current is not None:
                why = {**dict.fromkeys(released | set(pins) if upgrade else released, "upgraded"), **dict.fromkeys(want.get(t.path, {}), "asked for"),
                       **dict.fromkeys(gone, "no longer served by the archive")}  # fmt: skip
                moves = _moves(t, pins, locks[t.path].pins(*t.sections), why, cache, resolver)
        outcomes.append(OsOutcome(target=t, changed=changed, resolved=True, seconds=time.monotonic() - start,
                                  packages=len(locks[t.path].pins(*t.sections)), moves=moves))  # fmt: skip
    return outcomes


def _moves(t: OsTarget, old: Mapping[str, str], new: Mapping[str, str], why: Mapping[str, str], cache: Path, resolver: Apt) -> tuple[Move, ...]:
    """What changed between two versions of a lock, each new version with the pocket serving it and
    why it moved (``why``; otherwise it moved with the packages that had to)."""
    changed = sorted(n for n in {*old, *new} if old.get(n) != new.get(n))
    pockets = resolver.pockets(packages=[(n, new[n]) for n in changed if n in new], cache=cache, **t.source()) if changed else {}
    return tuple(Move(path=t.path, family=t.family, package=n, old=old.get(n, ""), new=new.get(n, ""), pocket=pockets.get((n, new.get(n, "")), ""),
                      reason=why.get(n, "moved with them")) for n in changed)  # fmt: skip


def unserved(fleet: Fleet, wanted: Mapping[str, Iterable[str]], *, cache: Path, resolver: Apt = apt) -> dict[str, list[tuple[str, str]]]:
    """The locked versions the archive no longer serves, by lock: ``wanted`` maps a lock path to
    the sections read (the archive's indexes are read once per run). A child lock's root sections
    count too where the child has some: resolving it again reads its root's builder versions."""
    targets = {t.path: t for t in os_targets(fleet)}
    out: dict[str, list[tuple[str, str]]] = {}
    for path, sections in wanted.items():
        t, lock = targets[path], fleet.os_locks[path]
        gone = resolver.unserved(pins=lock.pins(*sections), cache=cache, **t.source())
        if gone:
            out[path] = sorted(gone)
    for path in list(out):
        root = os_lock_path(fleet.root_of(targets[path].family).name)
        if root != path and root not in out:
            base = resolver.unserved(pins=fleet.os_locks[root].pins("root-builder"), cache=cache, **targets[root].source())
            if base:
                out[root] = sorted(base)
    return out


def describe(fleet: Fleet, gone: Mapping[str, Sequence[tuple[str, str]]]) -> list[str]:
    """A line per lock naming its versions the archive no longer serves."""
    targets = {t.path: t for t in os_targets(fleet)}
    return [f"{path}: " + ", ".join(f"{p} {v}" for p, v in pairs) + f" no longer served by the {targets[path].suite} archive" for path, pairs in gone.items()]


def forward(fleet: Fleet, gone: Mapping[str, Sequence[tuple[str, str]]], *, cache: Path, resolver: Apt = apt) -> list[Move]:
    """Resolve the locks with ``gone`` versions (:func:`unserved`) again: exactly those move, to
    what the same suite serves now (the children of a moved root are resolved against it, their
    versions kept); every move, with the pocket serving the new version."""
    targets = {t.path: t for t in os_targets(fleet)}
    outcomes = lock(fleet, {targets[path].family for path in gone}, cache=cache, resolver=resolver)
    return [m for o in outcomes for m in o.moves]


@dataclass(frozen=True, kw_only=True)
class Checked:
    problems: list[str]  # the lock is wrong: it fails the check
    replaced: list[str] = field(default_factory=list)  # locked versions the archive no longer serves (a problem only ``locked``)


def check(fleet: Fleet, *, cache: Path, resolver: Apt = apt, locked: bool = False) -> Checked:
    """:func:`verify`, then re-resolve every OS lock with its versions held: the packages must
    come out the same (the archive's dates may move). Versions the archive no longer serves are
    released for that resolution and reported in ``replaced``; with ``locked`` they are problems."""
    problems = verify(fleet)
    if problems:
        return Checked(problems=problems)
    replaced: list[str] = []
    for t in os_targets(fleet):
        lock = fleet.os_locks[t.path]
        held = lock.pins(*t.sections)
        gone = dict(resolver.unserved(pins=held, cache=cache, **t.source()))
        if gone:
            what = ", ".join(f"{p} {v}" for p, v in sorted(gone.items()))
            replaced.append(f"{t.path}: {what} no longer served by the {t.suite} archive; `{REFRESH}` moves them (a build without --locked forwards them)")
        try:
            resolved = resolve(fleet, t, fleet.os_locks, keep={n: v for n, v in held.items() if n not in gone}, cache=cache, resolver=resolver)
        except UnservedVersion as exc:  # a version of the root this child builds on
            replaced.append(f"{t.path}: {exc.message}; `{REFRESH}` moves them")
            continue
        except LockError as exc:  # the held versions no longer fit together (a hand edit, a changed archive)
            reason = exc.message.strip()
            problems.append(f"{t.path}: its versions cannot be installed together any more:\n    {reason}\n    relock with `{COMMAND} -- {t.family}`")
            continue
        fresh = _packages(render(fleet, t, fleet.os_locks, resolved))
        ours = _packages(lock.text)
        if gone:  # the released packages may move, and bring or drop dependencies; what both hold must be the same
            kept = _common(fresh, ours, gone)
            fresh, ours = ([line for line in lines if line in kept or "=" not in line] for lines in (fresh, ours))
        if fresh != ours:
            diff = [line for line in difflib.unified_diff(ours, fresh, lineterm="", n=0) if line[:1] in "+-"]
            shown = "\n".join(f"      {line}" for line in diff[2:14])
            problems.append(f"{t.path}: differs from a fresh resolution with its versions held:\n{shown}\n    run `{COMMAND} -- {t.family}`")
    return Checked(problems=problems + (replaced if locked else []), replaced=[] if locked else replaced)


def _packages(text: str) -> list[str]:
    """The sections and package lines of a lock (what a resolution decides; not its header)."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _common(fresh: list[str], ours: list[str], released: Iterable[str]) -> set[str]:
    """The package lines of packages both texts hold, the released ones left out (each line
    compared as a whole: a version that differs shows in the diff)."""
    names = lambda lines: {line.split("=", 1)[0] for line in lines if "=" in line}  # noqa: E731
    both = (names(fresh) & names(ours)) - set(released)
    return {line for line in fresh + ours if "=" in line and line.split("=", 1)[0] in both}


def require(fleet: Fleet, names: Iterable[str] | None = None) -> None:
    """Raise LockError listing every OS lock problem of ``names`` (all families by default)."""
    problems = verify(fleet, names)
    if problems:
        raise LockError("OS package locks do not match their inputs:\n" + "\n".join(f"  - {p}" for p in problems))
