"""Resolving one lock target with uv (default) or pip-compile, through the host's command runner."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from buildtool.adapters import host
from buildtool.core.errors import CommandError, LockError
from buildtool.locking.targets import COMPILE_COMMAND, INDEX_URL, PLATFORM, Target
from buildtool.model.locks import Lock, stamp

ENGINES = ("uv", "pip-compile")


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
    if not pip_compile_can_lock(target):
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        if target.no_deps:
            raise LockError(f"{target.name}: pip-compile cannot lock packages without their dependencies; use --engine uv")
        raise LockError(f"{target.name}: pip-compile locks for the running Python ({running}) only, this needs {target.python}; use --engine uv")
    argv = [
        "pip-compile", "--quiet", "--generate-hashes", "--strip-extras", "--allow-unsafe",
        "--index-url", INDEX_URL, "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",  # pins and hashes only
        "--output-file", str(outfile),
    ]  # fmt: skip
    if constraints:
        argv += ["--constraint", str(constraints)]
    return argv + [str(infile)]


def pip_compile_can_lock(target: Target) -> bool:
    """pip-compile resolves for the Python running it, and always with dependencies."""
    return target.python == f"{sys.version_info.major}.{sys.version_info.minor}" and not target.no_deps


def resolve(
    target: Target,
    parent: Lock | None,
    *,
    engine: str = "uv",
    preferences: str | None = None,
    upgrade_packages: Iterable[str] = (),
    ca_bundle: Path | None = None,
    runner: host.Runner = host.run,
) -> str:
    """Resolve ``target`` against its parent's lock; return the stamped lock text (nothing written).

    ``preferences``: an existing lock whose pins the engine keeps where they still fit (both
    engines read the output file they are given as preferences).
    """
    if engine not in ENGINES:
        raise LockError(f"unknown lock engine {engine!r}; use one of {', '.join(ENGINES)}")
    if target.constraints and parent is None:
        raise LockError(f"{target.name}: the lock it builds on, {target.constraints}, does not exist yet; lock its parent first")
    with tempfile.TemporaryDirectory(prefix="fleet-lock-") as tmpdir:
        tmp = Path(tmpdir)
        infile = tmp / f"{target.name}.in"
        infile.write_text("".join(f"{r}\n" for r in target.requirements))
        outfile = tmp / f"{target.name}.txt"
        if preferences:
            outfile.write_text(preferences)
        constraints = None
        if parent is not None:
            constraints = tmp / "constraints.txt"
            constraints.write_text("".join(f"{p.name}=={p.version}\n" for p in parent.pins.values()))
        argv = (_uv_argv if engine == "uv" else _pip_compile_argv)(target, infile, outfile, constraints)
        for name in upgrade_packages:
            argv[-1:-1] = ["--upgrade-package", name]
        # Host pip configuration (local find-links, constraints) must not leak into locks.
        env = {"PIP_CONFIG_FILE": os.devnull, "UV_NO_CONFIG": "1", "CUSTOM_COMPILE_COMMAND": COMPILE_COMMAND}
        if ca_bundle is not None:  # the index may sit behind a TLS proxy whose CA is in this bundle
            env["SSL_CERT_FILE"] = str(ca_bundle)
        try:
            runner(argv, env=env, cwd=tmp)
        except CommandError as exc:
            raise LockError(f"{target.name}: the requirements {list(target.requirements)} could not be locked with {engine}:\n{exc.stderr.strip()}") from exc
        text = outfile.read_text()
    return stamp(text.replace(str(tmp) + "/", ""), target.inputs_hash(parent), engine)
