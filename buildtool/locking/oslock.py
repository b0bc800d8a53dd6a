"""OS package locks: resolve, stamp, verify and prove the exact Debian/Ubuntu versions of each family.

A bootstrapped root family locks its two roots; a family with ``os_packages`` locks what apt
adds for them on top of the root's builder root (its ancestors' OS packages included, at their
locked versions, so one package has one version down a lineage); ``builder.os_packages`` lock
the same way. Resolution is apt's own, run on the host against the archive
(:mod:`buildtool.locking.apt`), so a lock is what the build installs; the build checks it again.

Like the Python locks: :func:`verify` reads stamps only; :func:`check` re-resolves with the
locked versions and fails when the archive no longer serves one or the result differs;
:func:`lock` keeps existing versions unless asked to move them (``upgrade``,
``upgrade_packages``). Relocking is explicit: nothing moves a version on its own.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters.bootstrap import includes, merged_usr, relock_hint
from buildtool.adapters.files import atomic_write, inside_repo
from buildtool.core.errors import LockError, UnservedVersion
from buildtool.core.hashing import sha256_json
from buildtool.locking import apt
from buildtool.model.locks import INPUTS_KEY, stamp
from buildtool.model.oslocks import ARCHIVE_KEY, OsLock, Pins, format_os_lock, os_lock_path, parse_os_lock
from buildtool.model.types import Fleet

COMMAND = "nox -s lock"
# Bump when what a section means changes (the resolver's rules, the bootstrap's variants).
RULES = "1"


@dataclass(frozen=True, kw_only=True)
class OsTarget:
    family: str
    path: str
    suite: str
    sections: tuple[str, ...]


def os_targets(fleet: Fleet, names: Iterable[str] | None = None) -> list[OsTarget]:
    """Every family with an OS lock, parents first; ``names`` filters by family name."""
    wanted = set(names) if names is not None else None
    out = []
    for family in fleet.families.values():
        sections = fleet.os_lock_sections(family.name)
        if sections and (wanted is None or family.name in wanted):
            root = fleet.root_of(family.name).root
            assert root is not None
            out.append(OsTarget(family=family.name, path=os_lock_path(family.name), suite=root.suite, sections=sections))
    return out


def _ancestors(fleet: Fleet, family: str) -> list[str]:
    return [f.name for f in fleet.lineage(family)[:-1]]


def _inputs(fleet: Fleet, t: OsTarget, locks: Mapping[str, OsLock]) -> dict[str, object]:
    """Everything a lock's resolution depends on (not the archive's content: that is what it records)."""
    fam = fleet.families[t.family]
    root = fleet.root_of(t.family)
    assert root.root is not None
    data: dict[str, object] = {"rules": RULES, "suite": t.suite, "sections": list(t.sections)}
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


Resolver = Callable[..., apt.Resolution]


@dataclass(frozen=True, kw_only=True)
class Resolved:
    sections: dict[str, Pins]
    archives: dict[str, str]  # pocket -> date
    apt: str


def resolve(
    fleet: Fleet,
    t: OsTarget,
    locks: Mapping[str, OsLock],
    *,
    keep: Mapping[str, str],
    cache: Path,
    resolve_root: Resolver = apt.resolve_root,
    resolve_added: Resolver = apt.resolve_added,
) -> Resolved:
    """Resolve every section of ``t``; ``keep`` (name -> version) are the versions to hold where they still fit."""
    fam = fleet.families[t.family]
    results: dict[str, apt.Resolution] = {}
    if fam.root:
        for variant in ("builder", "runtime"):
            wanted = includes(t.suite, variant, fam.root.packages, fam.root.builder_packages)
            results[f"root-{variant}"] = resolve_root(suite=t.suite, include=wanted, merged_usr=merged_usr(t.suite), pins=keep, cache=cache)
    else:
        root_lock = locks[os_lock_path(fleet.root_of(t.family).name)]
        base = root_lock.pins("root-builder")
        if "runtime" in t.sections:
            pins = {**keep, **_inherited(fleet, t.family, locks)}
            results["runtime"] = resolve_added(suite=t.suite, base=base, install=_runtime_request(fleet, t.family), pins=pins, cache=cache)
        if "builder" in t.sections:
            assert fam.builder is not None
            results["builder"] = resolve_added(suite=t.suite, base=base, install=list(fam.builder.os_packages), pins=keep, cache=cache)
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


def lock(
    fleet: Fleet,
    names: Iterable[str] | None = None,
    *,
    cache: Path,
    upgrade: bool = False,
    upgrade_packages: Iterable[str] = (),
    resolve_root: Resolver = apt.resolve_root,
    resolve_added: Resolver = apt.resolve_added,
) -> list[OsOutcome]:
    """Bring every OS lock up to date (parents first), moving only what must move; write those that changed.

    A lock is resolved again when it is missing, stale or edited, named, pins one of
    ``upgrade_packages``, or ``upgrade`` is set; its versions are kept unless ``upgrade`` or
    named in ``upgrade_packages``.
    """
    named = set(names or ())
    released = set(upgrade_packages)
    locks = dict(fleet.os_locks)
    faults = dict(fleet.lock_faults)
    outcomes = []
    for t in os_targets(fleet):
        current = locks.get(t.path)
        pins = current.pins(*t.sections) if current else {}
        if not (upgrade or t.family in named or released & set(pins) or problem(fleet, t, locks, faults)):
            outcomes.append(OsOutcome(target=t, changed=False, resolved=False, seconds=0.0, packages=len(pins)))
            continue
        start = time.monotonic()
        keep = {} if upgrade else {n: v for n, v in pins.items() if n not in released}
        try:
            resolved = resolve(fleet, t, locks, keep=keep, cache=cache, resolve_root=resolve_root, resolve_added=resolve_added)
        except UnservedVersion as exc:
            gone = sorted({name for name, _ in exc.packages})
            raise LockError(f"{t.path}: {exc.message}; move those pins explicitly with {relock_hint(gone)}") from exc
        text = render(fleet, t, locks, resolved)
        changed = current is None or _packages(current.text) != _packages(text) or current.edited() or problem(fleet, t, locks, faults) is not None
        if changed:
            atomic_write(inside_repo(fleet.root, t.path), text)
            locks[t.path] = parse_os_lock(t.path, text)
            faults.pop(t.path, None)
        outcomes.append(OsOutcome(target=t, changed=changed, resolved=True, seconds=time.monotonic() - start,
                                  packages=len(locks[t.path].pins(*t.sections))))  # fmt: skip
    return outcomes


def check(fleet: Fleet, *, cache: Path, resolve_root: Resolver = apt.resolve_root, resolve_added: Resolver = apt.resolve_added) -> list[str]:
    """:func:`verify`, then re-resolve every OS lock with its versions held: the archive must still
    serve each one and the packages must come out the same (the archive's dates may move)."""
    problems = verify(fleet)
    if problems:
        return problems
    for t in os_targets(fleet):
        lock = fleet.os_locks[t.path]
        try:
            resolved = resolve(fleet, t, fleet.os_locks, keep=lock.pins(*t.sections), cache=cache, resolve_root=resolve_root,
                               resolve_added=resolve_added)  # fmt: skip
        except UnservedVersion as exc:
            gone = sorted({name for name, _ in exc.packages})
            problems.append(f"{t.path}: {exc.message}; relock explicitly with {relock_hint(gone)}")
            continue
        except LockError as exc:  # the held versions no longer fit together (a hand edit, a changed archive)
            reason = exc.message.strip()
            problems.append(f"{t.path}: its versions cannot be installed together any more:\n    {reason}\n    relock with `{COMMAND} -- {t.family}`")
            continue
        fresh = render(fleet, t, fleet.os_locks, resolved)
        if _packages(fresh) != _packages(lock.text):
            diff = [line for line in difflib.unified_diff(_packages(lock.text), _packages(fresh), lineterm="", n=0) if line[:1] in "+-"]
            shown = "\n".join(f"      {line}" for line in diff[2:14])
            problems.append(f"{t.path}: differs from a fresh resolution with its versions held:\n{shown}\n    run `{COMMAND} -- {t.family}`")
    return problems


def _packages(text: str) -> list[str]:
    """The sections and package lines of a lock (what a resolution decides; not its header)."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def require(fleet: Fleet, names: Iterable[str] | None = None) -> None:
    """Raise LockError listing every OS lock problem of ``names`` (all families by default)."""
    problems = verify(fleet, names)
    if problems:
        raise LockError("OS package locks do not match their inputs:\n" + "\n".join(f"  - {p}" for p in problems))
