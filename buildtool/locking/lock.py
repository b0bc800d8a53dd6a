"""Hash-locking: keep every lock in step with its inputs, prove it, and move pins only when asked.

A child is compiled with its parent's pins as constraints, so it never changes what its parent
installed. Each lock records the hash of its inputs and of its own content:

* :func:`verify` checks both without resolving (fast, offline): ``build`` runs it first.
* :func:`check` proves the locks: it re-resolves every target with its existing pins as
  preferences and fails unless the result is byte-identical (``lock --check``).
* :func:`lock` is stable, as pip-compile users expect: a target whose inputs and content are
  unchanged is not resolved again; the others are resolved preferring their existing pins.
  ``upgrade`` and ``upgrade_packages`` are the explicit ways to move pins.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters.files import atomic_write, inside_repo
from buildtool.core.names import canonical
from buildtool.locking import resolver
from buildtool.locking.targets import COMPILE_COMMAND, Target, problem, targets
from buildtool.model.locks import ENGINE_KEY, Lock, parse_lock
from buildtool.model.types import Fleet

Resolve = Callable[..., str]  # resolver.resolve's signature


def verify(fleet: Fleet, names: Iterable[str] | None = None) -> list[str]:
    """Problems with the locks found without resolving: missing, unreadable, stale, edited, inconsistent."""
    return [p for t in targets(fleet, names) if (p := problem(t, fleet.locks, fleet.lock_faults))]


def check(fleet: Fleet, *, resolve: Resolve = resolver.resolve, ca_bundle: Path | None = None) -> list[str]:
    """:func:`verify`, then re-resolve every lock with its pins as preferences: byte-identical or a problem."""
    problems = verify(fleet)
    if problems:
        return problems
    for t in targets(fleet):
        lock = fleet.locks[t.path]
        engine = lock.header_value(ENGINE_KEY) or "uv"
        parent = fleet.locks.get(t.constraints) if t.constraints else None
        fresh = resolve(t, parent, engine=engine, preferences=lock.text, ca_bundle=ca_bundle)
        if fresh != lock.text:
            diff = [line for line in difflib.unified_diff(lock.text.splitlines(), fresh.splitlines(), lineterm="", n=0) if line[:1] in "+-"]
            shown = "\n".join(f"      {line}" for line in diff[2:14])
            more = f"\n      ... {len(diff) - 14} more" if len(diff) > 14 else ""
            problems.append(f"{t.path}: differs from a fresh resolution of its inputs ({engine}):\n{shown}{more}\n    run `{COMPILE_COMMAND} -- {t.name}`")
    return problems


@dataclass(frozen=True, kw_only=True)
class Outcome:
    target: Target
    changed: bool  # the lock file was rewritten with other content
    resolved: bool  # the engine ran
    seconds: float
    pins: int


def lock(
    fleet: Fleet,
    names: Iterable[str] | None = None,
    *,
    engine: str = "uv",
    upgrade: bool = False,
    upgrade_packages: Iterable[str] = (),
    resolve: Resolve = resolver.resolve,
    ca_bundle: Path | None = None,
) -> list[Outcome]:
    """Bring every lock up to date, moving only what must move; write the ones that changed.

    A target is resolved again when its lock is missing, stale or edited, when it is named in
    ``names``, when ``upgrade`` is set, or when it pins one of ``upgrade_packages``. Existing pins
    are preferences unless ``upgrade``; ``upgrade_packages`` are released from theirs. Targets
    run parents-first, so a child is checked against its parent's new lock.
    """
    named = set(names or ())
    wanted = {canonical(p) for p in upgrade_packages}
    locks: dict[str, Lock] = dict(fleet.locks)
    faults = dict(fleet.lock_faults)
    outcomes = []
    for t in targets(fleet, named or None):
        current = locks.get(t.path)
        pins = set(current.pins) if current else set()
        if not (upgrade or t.name in named or wanted & pins or problem(t, locks, faults)):
            outcomes.append(Outcome(target=t, changed=False, resolved=False, seconds=0.0, pins=len(pins)))
            continue
        start = time.monotonic()
        parent = locks.get(t.constraints) if t.constraints else None
        preferences = None if upgrade or current is None else current.text
        text = resolve(t, parent, engine=engine, preferences=preferences, upgrade_packages=sorted(wanted & pins), ca_bundle=ca_bundle)
        changed = current is None or text != current.text
        if changed:
            atomic_write(inside_repo(fleet.root, t.path), text)
            locks[t.path] = parse_lock(t.path, text)
            faults.pop(t.path, None)
        outcomes.append(Outcome(target=t, changed=changed, resolved=True, seconds=time.monotonic() - start, pins=len(locks[t.path].pins)))
    return outcomes
