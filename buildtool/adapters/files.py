"""Where the toolkit writes: folders it owns, files replaced atomically, build contexts, fleet copies.

A folder the toolkit may empty carries a marker file of its own. A path that is not one (the
repository, a folder holding other files, a file) is refused with :class:`OutputError`, so a
mistyped ``--out`` or ``FLEET_STATE_DIR`` can never delete what the toolkit did not create.
Files are written to a temporary name and renamed into place: a reader (or a crash) never sees
half a file, and a symlink planted at the destination is replaced, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from buildtool.core.errors import ConfigError, OutputError, Problem
from buildtool.model.load import FLEET_PARTS
from buildtool.model.sources import SourceProblem, read_regular, read_tree

MARKER = ".buildtool-output"
MARKER_TEXT = "This folder is written by buildtool; everything in it may be deleted and regenerated.\n"


def owned_dir(path: Path, *, repo: Path | None = None, what: str, clear: bool = False) -> Path:
    """Make ``path`` a folder the toolkit owns and return it (absolute).

    A missing folder is created and marked; an empty one is marked; a marked one is kept, and
    emptied when ``clear``. Anything else raises :class:`OutputError` naming ``what``.
    """
    path = Path(os.path.abspath(path))
    if path.is_symlink():
        raise OutputError(f"{what} {path} is a symlink; give the folder itself")
    real = Path(os.path.realpath(path))
    repo = Path(os.path.realpath(repo)) if repo is not None else None
    if real == Path("/") or (repo is not None and repo.is_relative_to(real)):
        raise OutputError(f"{what} {path} is the repository or a folder above it; give a new or empty folder, e.g. {repo / 'build' / 'out'}")
    if ".git" in real.parts:
        raise OutputError(f"{what} {path} is inside a .git folder; give a new or empty folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is not a folder; give a new or empty folder")
    marker = path / MARKER
    if path.is_dir():
        if marker.is_symlink() or (marker.exists() and not stat.S_ISREG(marker.lstat().st_mode)):
            raise OutputError(f"{what} {path}: its {MARKER} is not the toolkit's marker file; give a new or empty folder")
        if not marker.exists() and not _inside_owned(path.parent):
            if any(path.iterdir()):
                raise OutputError(
                    f"{what} {path} holds files the toolkit did not write (it has no {MARKER} marker); give a new or empty folder"
                )
        elif clear:
            for child in path.iterdir():
                if child.name != MARKER:
                    remove(child)
    else:
        path.mkdir(parents=True)
    if not marker.exists() and not _inside_owned(path.parent):  # a marker above covers everything below it
        marker.write_text(MARKER_TEXT)
    return path


def is_owned(folder: Path) -> bool:
    """Whether ``folder`` is the toolkit's: it, or a folder above it, carries the marker."""
    return _inside_owned(folder)


def _inside_owned(folder: Path) -> bool:
    """Whether a folder above holds the marker: everything below a marked folder is the toolkit's."""
    return any(_is_marker(parent / MARKER) for parent in (folder, *folder.parents))


def _is_marker(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def adopt(path: Path) -> None:
    """Mark ``path`` as the toolkit's when it exists unmarked (the repository's own ignored build/)."""
    if path.is_dir() and not path.is_symlink() and not (path / MARKER).exists():
        (path / MARKER).write_text(MARKER_TEXT)


def remove(path: Path) -> None:
    """Delete a file, a symlink (not its target) or a folder tree (symlinks inside are not followed)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"{path} was not written (it keeps its old content): {disk_full(path.parent, len(data))}") from None
        raise


def disk_full(folder: Path, needed: int = 0) -> str:
    """What to tell the user when the disk of ``folder`` is full."""
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    need = f", {needed / 2**20:.1f} MB needed" if needed else ""
    return (f"the disk holding {folder} is full ({free / 2**20:.1f} MB free{need}); free space (`nox -s prune` removes build cache, "
            "other orgs' local images and old registry tags) and run again")  # fmt: skip


def inside_repo(repo: Path, rel: str) -> Path:
    """The path ``rel`` below ``repo`` to write to, after checking that no folder on the way is a
    symlink or leaves the repository (a planted ``lockfiles -> /etc`` must not redirect a write)."""
    repo = Path(os.path.realpath(repo))
    path = repo
    parts = Path(rel).parts
    for part in parts[:-1]:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise OutputError(f"{path.relative_to(repo)} is not a folder of the repository (a symlink or a file); cannot write {rel}")
    return repo / rel


def write_context(dest: Path, files: Iterable[tuple[str, bytes]], *, links: Mapping[str, Path] | None = None) -> Path:
    """Materialise a build context: the one way a context reaches the disk (render, build, bake,
    the bench). ``dest`` must be new, empty or the toolkit's (it is emptied); ``files`` are
    (path in the context, bytes); ``links``: name in the context -> a large file hard-linked in
    (the root filesystem tarballs)."""
    dest = owned_dir(dest, what="build context", clear=True)
    for rel, data in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for name, path in (links or {}).items():
        (dest / name).hardlink_to(path)
    return dest


def copy_fleet(src: Path, dest: Path) -> None:
    """Copy the fleet's parts from ``src`` into the new or empty folder ``dest``: regular files only,
    read as build contexts are (a symlink out of its part, a FIFO or a device raises ConfigError)."""
    for part in FLEET_PARTS:
        try:
            if (src / part).is_dir():
                files = [(f"{part}/{rel}", data) for rel, data in read_tree(src, part, ()).files]
            else:
                files = [(part, read_regular(src / part, part))]
        except SourceProblem as exc:
            raise ConfigError([Problem(file=exc.path, key="", message=f"{exc.message}; the fleet cannot be copied")]) from None
        for rel, data in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


@contextlib.contextmanager
def held(path: Path, *, waiting: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file of the state dir) for the block. While another
    process holds it, ``waiting`` is told who (pid and command line) and this one waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting(os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
