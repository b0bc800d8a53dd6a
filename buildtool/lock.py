"""Hash-locking: compile each family's (and service's) requirements into a pip-tools format lock.

A child is compiled with its parent's pins as constraints, so it never changes what its parent
installed. Each lock records the hash of its inputs; ``--check`` compares it without resolving.
uv's ``pip compile`` is the default engine; pip-compile (pip-tools) is selectable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from buildtool import cmd
from buildtool.errors import CommandError, LockError
from buildtool.lockfile import read_lock
from buildtool.model import Fleet
from buildtool.render import build_lock_name, lock_path

log = logging.getLogger("buildtool.lock")

INDEX_URL = "https://pypi.org/simple"
# Images run Debian bookworm (glibc 2.36) on x86_64.
PLATFORM = "x86_64-manylinux_2_36"
COMPILE_COMMAND = "nox -s lock"
ENGINES = ("uv", "pip-compile")
INPUTS_KEY = "inputs-sha256"


@dataclass(frozen=True, kw_only=True)
class Target:
    """One lock to produce: a family's, or a service's extras on top of its family."""

    name: str
    path: Path
    python: str
    requirements: tuple[str, ...]
    constraints: Path | None  # the parent's (or family's) lock
    no_deps: bool = False  # build requirements: exactly the listed packages, each pinned

    def inputs_hash(self) -> str:
        parent = read_lock(self.constraints) if self.constraints else None
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


def targets(fleet: Fleet, names: list[str] | None = None) -> list[Target]:
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
                )
            )
    if names:
        known = {t.name for t in out}
        unknown = sorted(set(names) - known)
        if unknown:
            raise LockError(f"nothing to lock for {', '.join(unknown)}; lockable: {', '.join(sorted(known))}")
        out = [t for t in out if t.name in names]
    return out


def check(fleet: Fleet) -> list[str]:
    """Problems with the locks on disk: missing, or made from other inputs than the current ones."""
    problems = []
    for t in targets(fleet):
        rel = t.path.relative_to(fleet.root).as_posix()
        lock = read_lock(t.path)
        if lock is None:
            problems.append(f"{rel}: missing; run `{COMPILE_COMMAND}`")
        elif lock.header_value(INPUTS_KEY) != t.inputs_hash():
            problems.append(f"{rel}: stale (its inputs changed since it was compiled); run `{COMPILE_COMMAND} -- {t.name}`")
    # A child's pins must equal its parent's for every shared package.
    for t in targets(fleet):
        lock, parent = read_lock(t.path), read_lock(t.constraints) if t.constraints else None
        if lock and parent:
            for name, pin in parent.pins.items():
                mine = lock.pins.get(name)
                if mine and mine.version != pin.version:
                    problems.append(f"{t.path.relative_to(fleet.root)}: pins {name}=={mine.version} but its parent pins {pin.version}")
    return problems


def _constraints_file(target: Target, tmp: Path) -> Path | None:
    parent = read_lock(target.constraints) if target.constraints else None
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


def compile_target(target: Target, *, engine: str = "uv") -> float:
    """Resolve and write one lock; returns the seconds it took."""
    if engine not in ENGINES:
        raise LockError(f"unknown lock engine {engine!r}; use one of {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory(prefix="fleet-lock-") as tmpdir:
        tmp = Path(tmpdir)
        infile = tmp / f"{target.name}.in"
        infile.write_text("".join(f"{r}\n" for r in target.requirements))
        outfile = tmp / f"{target.name}.txt"
        constraints = _constraints_file(target, tmp)
        argv = (_uv_argv if engine == "uv" else _pip_compile_argv)(target, infile, outfile, constraints)
        # Host pip configuration (local find-links, constraints) must not leak into locks.
        env = {
            "PIP_CONFIG_FILE": os.devnull,
            "UV_NO_CONFIG": "1",
            "CUSTOM_COMPILE_COMMAND": COMPILE_COMMAND,  # pip-compile's header
            "SSL_CERT_FILE": os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
        }
        start = time.monotonic()
        try:
            cmd.run(argv, env=env, cwd=tmp)
        except CommandError as exc:
            raise LockError(f"{target.name}: the requirements {list(target.requirements)} could not be locked with {engine}:\n{exc.stderr.strip()}") from exc
        elapsed = time.monotonic() - start
        text = outfile.read_text()
    text = _stamp(text.replace(str(tmp) + "/", ""), target.inputs_hash(), engine)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    target.path.write_text(text)
    return elapsed


def _stamp(text: str, inputs: str, engine: str) -> str:
    """Put the input hash under the generated header; drop temp-dir paths from annotations."""
    lines = text.splitlines()
    idx = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    stamp = [f"# {INPUTS_KEY}: {inputs}", f"# engine: {engine}", "#"]
    return "\n".join(lines[:idx] + stamp + lines[idx:]) + "\n"
