"""The one way the toolkit runs external programs.

Every call logs its argv, checks the program exists, and raises :class:`CommandError`
with the return code and stderr on failure. Unit tests patch :func:`run` and assert argv.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from buildtool.errors import CommandError, MissingToolError

log = logging.getLogger("buildtool.cmd")


def which(program: str) -> str | None:
    return shutil.which(program)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; return the completed process (stdout/stderr captured as text unless ``capture=False``)."""
    args = [os.fspath(a) for a in argv]
    if shutil.which(args[0]) is None:
        raise MissingToolError(f"'{args[0]}' is not installed or not on PATH (needed for: {' '.join(args)})")
    log.debug("$ %s", " ".join(args))
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=input,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, -1, f"timed out after {timeout}s") from exc
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr or "")
    return proc
