"""The one module that runs external programs (python-on-whales runs ``docker`` itself, behind
:mod:`buildtool.adapters.engine`).

Every call logs its argv, checks the program exists, and raises :class:`CommandError` with the
return code and stderr on failure. Long-running daemons (the engine, the registry) are started
with :func:`start_detached`. Unit tests replace :func:`run` and assert argv.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from buildtool.core.errors import CommandError, MissingToolError

log = logging.getLogger("buildtool.host")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]  # run's signature, for injection
Daemon = subprocess.Popen[bytes]
# Daemons started by this process. They outlive it on purpose; holding the handles keeps Popen
# from warning that they still run when the handle is collected.
_daemons: list[Daemon] = []


PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT


# The toolkit's secrets and anything named like one: no program or daemon it starts inherits them.
SECRET_NAME = re.compile(r".*(TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|API_?KEY|PRIVATE_KEY).*|FLEET_PIP_INDEX_URL|.*_AUTH", re.I)


def child_env(extra: Mapping[str, str] | None = None, *, keep: Sequence[str] = (), drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a program the toolkit starts: this process's, without its secrets (but
    the variables named in ``keep``, which that program is meant to read) and without variables
    starting with one of ``drop`` (a tool's own settings, which the toolkit gives on its command
    line instead), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if (k in keep or not SECRET_NAME.fullmatch(k)) and not k.startswith(drop)}
    return {**env, **(extra or {})}


def which(program: str) -> str | None:
    """The program next to the running interpreter (a venv's tools, used without activating the
    venv), else on PATH."""
    if os.sep not in program:
        beside = Path(sys.executable).parent / program
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which(program)


def _resolved(argv: Sequence[str]) -> list[str]:
    found = which(argv[0])
    if found is None:
        raise MissingToolError(f"'{argv[0]}' is not installed or not on PATH (needed for: {' '.join(argv)})")
    return [found, *argv[1:]]


def spawn(argv: Sequence[str], *, stdin: int | None = None, stdout: int | IO[bytes] | None = None, stderr: int | IO[bytes] | None = None,
          keep: Sequence[str] = ()) -> Daemon:  # fmt: skip
    """Start ``argv`` with its streams as given (bytes); the caller reads, writes and waits. For
    programs whose output is streamed elsewhere as it comes (a build's image into ``docker load``)."""
    args = _resolved(argv)
    log.debug("$ %s", " ".join(argv))
    return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr, env=child_env(keep=keep))


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
    keep: Sequence[str] = (),
    drop: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; return the completed process (stdout/stderr captured as text unless ``capture=False``).
    Its environment is :func:`child_env`: ``env`` added, secrets left out but those named in ``keep``."""
    args = [os.fspath(a) for a in argv]
    program = _resolved(args)
    log.debug("$ %s", " ".join(args))
    try:
        proc = subprocess.run(
            program,
            cwd=cwd,
            env=child_env(env, keep=keep, drop=drop),
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


def start_detached(argv: list[str], logfile: Path) -> Daemon:
    """Start a long-running daemon in its own session, logging to ``logfile``. It outlives us."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting %s (log: %s)", " ".join(argv), logfile)
    with logfile.open("ab") as out:
        proc = subprocess.Popen(_resolved(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=child_env())
    _daemons.append(proc)
    return proc


_sudo: bool | None = None


def can_be_root() -> bool:
    """Root already, or passwordless sudo (a hosted CI runner's user)."""
    global _sudo
    if os.geteuid() == 0:
        return True
    if _sudo is None:
        _sudo = shutil.which("sudo") is not None and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    return _sudo


def as_root(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` to run as root: as it is for root, through ``sudo -n env VAR=...`` otherwise
    (sudo resets the environment, so the variables the command needs are passed explicitly)."""
    if os.geteuid() == 0:
        return list(argv)
    return ["sudo", "-n", "env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv]


# -- ending what this process started --------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # the name may hold spaces
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(markers: Sequence[str] = ()) -> list[int]:
    """This process's descendants, daemons it started (the engine, the registry) and theirs left
    out; with ``markers``, only those whose command line holds one of them, and theirs."""
    kids = _children()
    daemons = {d.pid for d in _daemons}
    found: list[int] = []
    todo = [(c, not markers) for c in kids.get(os.getpid(), []) if c not in daemons]
    while todo:
        pid, inside = todo.pop()
        inside = inside or any(m in _cmdline(pid) for m in markers)
        if inside:
            found.append(pid)
        todo += [(c, inside) for c in kids.get(pid, [])]
    return found


def end(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM ``pids``, then SIGKILL those still there after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        for pid in alive:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False
