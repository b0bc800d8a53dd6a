"""Hash-locking: compile each family's (and service's) requirements into a pip-tools format lock.

A child is compiled with its parent's pins as constraints, so it never changes what its parent
installed. Each lock records the hash of its inputs and of its own content:

* :func:`verify` checks both without resolving (fast, offline): ``build`` runs it first.
* :func:`check` proves the locks: it re-resolves every target with its existing pins as
  preferences and fails unless the result is byte-identical (``lock --check``).
* :func:`lock` is stable, as pip-compile users expect: a target whose inputs and content are
  unchanged is not resolved again; the others are resolved preferring their existing pins.
  ``upgrade`` and ``upgrade_packages`` are the explicit ways to move pins.

uv's ``pip compile`` is the default engine; pip-compile (pip-tools) is selectable.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from buildtool import cmd
from buildtool.errors import CommandError, LockError
from buildtool.lockfile import ENGINE_KEY, INPUTS_KEY, Lock, canonical, read_lock, stamp
from buildtool.model import Fleet
from buildtool.output import atomic_write, inside_repo
from buildtool.render import build_lock_name, lock_path

log = logging.getLogger("buildtool.lock")

INDEX_URL = "https://pypi.org/simple"
# Images run Debian bookworm (glibc 2.36) on x86_64.
PLATFORM = "x86_64-manylinux_2_36"
COMPILE_COMMAND = "nox -s lock"
ENGINES = ("uv", "pip-compile")


@dataclass(frozen=True, kw_only=True)
class Target:
    """One lock to produce: a family's, or a service's extras on top of its family."""

    name: str
    path: Path
    python: str
    requirements: tuple[str, ...]
    constraints: Path | None  # the parent's (or family's) lock
    no_deps: bool = False  # build requirements: exactly the listed packages, each pinned
    root: Path = Path()

    @property
    def shown(self) -> str:
        return self.path.relative_to(self.root).as_posix() if self.path.is_relative_to(self.root) else str(self.path)

    def constraints_lock(self) -> Lock | None:
        return read_lock(self.constraints, self.constraints.relative_to(self.root).as_posix()) if self.constraints else None

    def current(self) -> Lock | None:
        return read_lock(self.path, self.shown)

    def inputs_hash(self) -> str:
        parent = self.constraints_lock()
        data: dict[str, object] = {
            "python": self.python,
            "platform": PLATFORM,
            "index": INDEX_URL,
            "requirements": sorted(self.requirements),
            "constraints": sorted(f"{p.name}=={p.version}" for p in parent.pins.values()) if parent else [],
        }
        if self.no_deps:
            data["no_deps"] = True
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def targets(fleet: Fleet, names: Iterable[str] | None = None) -> list[Target]:
    """Families parents-first, then services with extra requirements; ``names`` filters them."""
    out: list[Target] = []
    for fam in fleet.families.values():
        if fam.requirements:
            parent = next((f for f in reversed(fleet.lineage(fam.name)[:-1]) if f.requirements), None)
            out.append(
                Target(
                    name=fam.name,
                    path=lock_path(fleet, fam.name),
                    python=fam.python,
                    requirements=fam.requirements,
                    constraints=lock_path(fleet, parent.name) if parent else None,
                    root=fleet.root,
                )
            )
        if fam.builder and fam.builder.requirements:
            # Build tools are locked against the family's own lock, so a package both need has one version.
            out.append(
                Target(
                    name=build_lock_name(fam.name),
                    path=lock_path(fleet, build_lock_name(fam.name)),
                    python=fam.python,
                    requirements=fam.builder.requirements,
                    constraints=lock_path(fleet, fam.name),
                    no_deps=True,
                    root=fleet.root,
                )
            )
    for svc in fleet.services.values():
        if svc.requirements:
            fam = next((f for f in reversed(fleet.lineage(svc.family)) if f.requirements), None)
            out.append(
                Target(
                    name=svc.name,
                    path=lock_path(fleet, service=svc.name),
                    python=fleet.families[svc.family].python,
                    requirements=svc.requirements,
                    constraints=lock_path(fleet, fam.name) if fam else None,
                    root=fleet.root,
                )
            )
    if names:
        names = list(names)
        known = {t.name for t in out}
        unknown = sorted(set(names) - known)
        if unknown:
            raise LockError(f"nothing to lock for {', '.join(unknown)}; lockable: {', '.join(sorted(known))}")
        out = [t for t in out if t.name in names]
    return out


def _problem(target: Target) -> str | None:
    """Why ``target``'s lock cannot be used as it is, without resolving; None when it can."""
    try:
        lock = target.current()
        parent = target.constraints_lock()
    except LockError as exc:
        return exc.message
    if lock is None:
        return f"{target.shown}: missing; run `{COMPILE_COMMAND}`"
    if lock.edited():
        return f"{target.shown}: was edited by hand (its content no longer matches its content-sha256); run `{COMPILE_COMMAND} -- {target.name}`"
    if lock.header_value(INPUTS_KEY) != target.inputs_hash():
        return f"{target.shown}: stale (its inputs changed since it was compiled); run `{COMPILE_COMMAND} -- {target.name}`"
    unhashed = [p.name for p in lock.pins.values() if "--hash=sha256:" not in p.block]
    if unhashed:
        return f"{target.shown}: {', '.join(unhashed)} without a hash; run `{COMPILE_COMMAND} -- {target.name}`"
    for name, pin in (parent.pins if parent else {}).items():
        mine = lock.pins.get(name)
        if mine and mine.version != pin.version:
            return f"{target.shown}: pins {name}=={mine.version} but its parent pins {pin.version}; run `{COMPILE_COMMAND} -- {target.name}`"
    return None


def verify(fleet: Fleet, names: Iterable[str] | None = None) -> list[str]:
    """Problems with the locks on disk found without resolving: missing, stale, edited, inconsistent."""
    return [p for t in targets(fleet, names) if (p := _problem(t))]


def check(fleet: Fleet, *, resolve=None) -> list[str]:
    """:func:`verify`, then re-resolve every lock with its pins as preferences: byte-identical or a problem."""
    problems = verify(fleet)
    if problems:
        return problems
    resolve = resolve or compile_text
    for t in targets(fleet):
        lock = t.current()
        assert lock is not None  # verified above
        engine = lock.header_value(ENGINE_KEY) or "uv"
        fresh = resolve(t, engine=engine, preferences=lock.text)
        if fresh != lock.text:
            diff = [line for line in difflib.unified_diff(lock.text.splitlines(), fresh.splitlines(), lineterm="", n=0) if line[:1] in "+-"]
            shown = "\n".join(f"      {line}" for line in diff[2:14])
            more = f"\n      ... {len(diff) - 14} more" if len(diff) > 14 else ""
            problems.append(f"{t.shown}: differs from a fresh resolution of its inputs ({engine}):\n{shown}{more}\n    run `{COMPILE_COMMAND} -- {t.name}`")
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
) -> list[Outcome]:
    """Bring every lock up to date, moving only what must move.

    A target is resolved again when its lock is missing, stale or edited, when it is named in
    ``names``, when ``upgrade`` is set, or when it pins one of ``upgrade_packages``. Existing pins
    are preferences unless ``upgrade``; ``upgrade_packages`` are released from theirs.
    """
    named = set(names or ())
    wanted = {canonical(p) for p in upgrade_packages}
    outcomes = []
    for t in targets(fleet, named or None):
        current = t.current()
        pins = set(current.pins) if current else set()
        if not (upgrade or t.name in named or wanted & pins or _problem(t)):
            outcomes.append(Outcome(target=t, changed=False, resolved=False, seconds=0.0, pins=len(pins)))
            continue
        start = time.monotonic()
        text = compile_text(
            t,
            engine=engine,
            preferences=None if upgrade or current is None else current.text,
            upgrade_packages=sorted(wanted & pins) if wanted else (),
        )
        changed = current is None or text != current.text
        if changed:
            atomic_write(inside_repo(fleet.root, t.shown), text)
        outcomes.append(Outcome(target=t, changed=changed, resolved=True, seconds=time.monotonic() - start, pins=len(read_lock(t.path).pins)))
    return outcomes


def _constraints_file(target: Target, tmp: Path) -> Path | None:
    parent = target.constraints_lock()
    if target.constraints and parent is None:
        raise LockError(f"{target.name}: the lock it builds on, {target.constraints}, does not exist yet; lock its parent first")
    if parent is None:
        return None
    path = tmp / "constraints.txt"
    path.write_text("".join(f"{p.name}=={p.version}\n" for p in parent.pins.values()))
    return path


def _uv_argv(target: Target, infile: Path, outfile: Path, constraints: Path | None) -> list[str]:
    argv = [
        "uv", "pip", "compile", "--no-config", "--no-python-downloads", "--quiet",
        "--generate-hashes",
        "--python-version", target.python,
        "--python-platform", PLATFORM,
        "--index-url", INDEX_URL,
        "--custom-compile-command", COMPILE_COMMAND,
        "--output-file", str(outfile),
    ]  # fmt: skip
    if constraints:
        argv += ["--constraints", str(constraints)]
    if target.no_deps:
        argv.append("--no-deps")
    return argv + [str(infile)]


def _pip_compile_argv(target: Target, infile: Path, outfile: Path, constraints: Path | None) -> list[str]:
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if target.python != running:
        raise LockError(f"{target.name}: pip-compile locks for the running Python ({running}) only, this needs {target.python}; use --engine uv")
    if target.no_deps:
        raise LockError(f"{target.name}: pip-compile cannot lock packages without their dependencies; use --engine uv")
    argv = [
        "pip-compile", "--quiet", "--generate-hashes", "--strip-extras", "--allow-unsafe",
        "--index-url", INDEX_URL, "--no-emit-index-url",
        "--output-file", str(outfile),
    ]  # fmt: skip
    if constraints:
        argv += ["--constraint", str(constraints)]
    return argv + [str(infile)]


def pip_compile_can_lock(target: Target) -> bool:
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    return target.python == running and not target.no_deps


def compile_text(target: Target, *, engine: str = "uv", preferences: str | None = None, upgrade_packages: Iterable[str] = ()) -> str:
    """Resolve ``target`` and return the stamped lock text (nothing is written to the repository).

    ``preferences``: an existing lock whose pins the engine keeps where they still fit (both
    engines read the output file they are given as preferences).
    """
    if engine not in ENGINES:
        raise LockError(f"unknown lock engine {engine!r}; use one of {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory(prefix="fleet-lock-") as tmpdir:
        tmp = Path(tmpdir)
        infile = tmp / f"{target.name}.in"
        infile.write_text("".join(f"{r}\n" for r in target.requirements))
        outfile = tmp / f"{target.name}.txt"
        if preferences:
            outfile.write_text(preferences)
        constraints = _constraints_file(target, tmp)
        argv = (_uv_argv if engine == "uv" else _pip_compile_argv)(target, infile, outfile, constraints)
        for name in upgrade_packages:
            argv[-1:-1] = ["--upgrade-package", name]
        # Host pip configuration (local find-links, constraints) must not leak into locks.
        env = {
            "PIP_CONFIG_FILE": os.devnull,
            "UV_NO_CONFIG": "1",
            "CUSTOM_COMPILE_COMMAND": COMPILE_COMMAND,  # pip-compile's header
            "SSL_CERT_FILE": os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        }
        try:
            cmd.run(argv, env=env, cwd=tmp)
        except CommandError as exc:
            raise LockError(f"{target.name}: the requirements {list(target.requirements)} could not be locked with {engine}:\n{exc.stderr.strip()}") from exc
        text = outfile.read_text()
    return stamp(text.replace(str(tmp) + "/", ""), target.inputs_hash(), engine)


def compile_target(target: Target, *, engine: str = "uv") -> float:
    """Resolve one lock from scratch and write it; returns the seconds it took (the bench's measure)."""
    start = time.monotonic()
    text = compile_text(target, engine=engine)
    elapsed = time.monotonic() - start
    atomic_write(target.path, text)
    return elapsed
