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
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters.files import atomic_write, inside_repo
from buildtool.core.names import canonical
from buildtool.locking import resolver
from buildtool.locking.targets import COMPILE_COMMAND, Target, problem, targets
from buildtool.model.locks import ENGINE_KEY, Lock, parse_lock
from buildtool.model.types import Fleet

Resolve = Callable[..., str]  # resolver.resolve's signature
RESOLVES = 8  # resolutions at once (each is one uv or pip-compile process, mostly waiting on the index)


def verify(fleet: Fleet, names: Iterable[str] | None = None) -> list[str]:
    """Problems with the locks found without resolving: missing, unreadable, stale, edited, inconsistent."""
    return [p for t in targets(fleet, names) if (p := problem(t, fleet.locks, fleet.lock_faults))]


def check(fleet: Fleet, *, resolve: Resolve = resolver.resolve, ca_bundle: Path | None = None) -> list[str]:
    """:func:`verify`, then re-resolve every lock with its pins as preferences: byte-identical or a problem."""
    problems = verify(fleet)
    if problems:
        return problems
    chosen = targets(fleet)

    def fresh(t: Target) -> str:
        lock = fleet.locks[t.path]
        parent = fleet.locks.get(t.constraints) if t.constraints else None
        return resolve(t, parent, engine=lock.header_value(ENGINE_KEY) or "uv", preferences=lock.text, ca_bundle=ca_bundle)

    with ThreadPoolExecutor(max_workers=RESOLVES) as pool:  # nothing is written: every target at once
        resolved = list(pool.map(fresh, chosen))
    for t, text in zip(chosen, resolved, strict=True):
        lock = fleet.locks[t.path]
        if text != lock.text:
            engine = lock.header_value(ENGINE_KEY) or "uv"
            diff = [line for line in difflib.unified_diff(lock.text.splitlines(), text.splitlines(), lineterm="", n=0) if line[:1] in "+-"]
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
    want: Mapping[str, Mapping[str, str]] | None = None,
    resolve: Resolve = resolver.resolve,
    ca_bundle: Path | None = None,
) -> list[Outcome]:
    """Bring every lock up to date, moving only what must move; write the ones that changed.

    A target is resolved again when its lock is missing, stale or edited, when it is named in
    ``names``, when ``upgrade`` is set, when it pins one of ``upgrade_packages``, or when ``want``
    (lock path -> {name: version}) moves one of its pins to another version. Existing pins are
    preferences unless ``upgrade``; ``upgrade_packages`` are released from theirs.

    Targets resolve concurrently, a child against its parent's lock as it stands: a child's
    result is kept when its parent's lock ends up as that text (the common case, its parent's
    pins did not move), and resolved again, in a later round, against the new lock when it
    does not. So a child always builds on its parent's final lock, as if they ran parents-first.
    """
    named = set(names or ())
    specs = {canonical(p.partition("==")[0].strip()): p for p in upgrade_packages}  # NAME, or NAME==VERSION: to that version
    wanted = set(specs)
    locks: dict[str, Lock] = dict(fleet.locks)
    faults = dict(fleet.lock_faults)
    order = targets(fleet, named or None)
    parent_of = {t.path: next((p for p in order if p.path == t.constraints), None) for t in order}
    settled: dict[str, Outcome] = {}
    spent: dict[str, float] = {}

    want = want or {}

    def needed(t: Target) -> bool:
        current = locks.get(t.path)
        return bool(upgrade or t.name in named or wanted & set(current.pins if current else ()) or t.path in want or problem(t, locks, faults))

    def attempt(t: Target) -> tuple[str, str | None, float]:
        start = time.monotonic()
        current, parent = locks.get(t.path), locks.get(t.constraints) if t.constraints else None
        preferences = None if upgrade or current is None else current.text
        pins = set(current.pins) if current else set()
        moves = sorted(specs[n] for n in wanted & pins) + [f"{name}=={version}" for name, version in sorted(want.get(t.path, {}).items())]
        text = resolve(t, parent, engine=engine, preferences=preferences, upgrade_packages=moves, ca_bundle=ca_bundle)
        return text, parent.text if parent else None, time.monotonic() - start

    def final(t: Target) -> bool:
        """Whether the lock ``t`` builds on will not move again in this run."""
        parent = parent_of[t.path]
        return parent is None or parent.path in settled

    with ThreadPoolExecutor(max_workers=RESOLVES) as pool:
        while len(settled) < len(order):
            batch = [t for t in order if t.path not in settled and needed(t)]
            for t in order:  # unchanged inputs, on a parent that will not move again
                if t.path not in settled and t not in batch and final(t):
                    current = locks.get(t.path)
                    settled[t.path] = Outcome(target=t, changed=False, resolved=False, seconds=0.0, pins=len(current.pins) if current else 0)
            futures = {t.path: pool.submit(attempt, t) for t in batch}
            for t in batch:  # parents first: a child sees whether its parent's lock moved
                text, used, seconds = futures[t.path].result()
                spent[t.path] = spent.get(t.path, 0.0) + seconds
                parent = locks.get(t.constraints) if t.constraints else None
                if not final(t) or (parent.text if parent else None) != used:
                    continue  # its parent is not settled, or moved under it: next round
                current = locks.get(t.path)
                changed = current is None or text != current.text
                if changed:
                    atomic_write(inside_repo(fleet.root, t.path), text)
                    locks[t.path] = parse_lock(t.path, text)
                    faults.pop(t.path, None)
                settled[t.path] = Outcome(target=t, changed=changed, resolved=True, seconds=spent[t.path], pins=len(locks[t.path].pins))
    return [settled[t.path] for t in order]
