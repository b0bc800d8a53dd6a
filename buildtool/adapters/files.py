"""Where the toolkit writes: folders it owns, files replaced atomically, build contexts, fleet copies.

A folder the toolkit may empty carries a marker file of its own, in that folder: a marker in a
folder above counts for nothing (anyone may create one in a shared folder such as /tmp). A path
that is not one (the repository, a folder holding other files, a file) is refused with
:class:`OutputError`, so a mistyped ``--out`` or ``FLEET_STATE_DIR`` can never delete what the
toolkit did not create. Files are written to a temporary name and renamed into place, or created
new with ``O_NOFOLLOW``: a reader (or a crash) never sees half a file, a symlink planted at the
destination is replaced or refused, never followed, and so is a symlinked folder below an owned one.
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
from buildtool.model.sources import TOOLKIT_MARKER, SourceProblem, read_regular, read_tree

MARKER = TOOLKIT_MARKER  # ".buildtool-output"
MARKER_TEXT = "This folder is written by buildtool; everything in it may be deleted and regenerated.\nlayout: own-marker\n"
# Before "layout: own-marker", a marker covered every folder below it. A state dir of that time is
# upgraded once (adopt): each folder below gets its own marker, as the toolkit made them all.
LAYOUT = "layout: own-marker"


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
    no_links_below_owned(path)
    marker = path / MARKER
    if path.is_dir():
        if marker.is_symlink() or (marker.exists() and not _is_marker(marker)):
            raise OutputError(f"{what} {path}: its {MARKER} is not the toolkit's marker file; give a new or empty folder")
        if not marker.exists():
            if any(path.iterdir()):
                raise OutputError(
                    f"{what} {path} holds files the toolkit did not write (it has no {MARKER} marker of its own); give a new or empty folder"
                )
        elif clear:
            for child in path.iterdir():
                if child.name != MARKER:
                    remove(child)
    else:
        _make_marked(path)
    if not marker.exists():
        with contextlib.suppress(FileExistsError):  # another thread of the run marked it at this moment
            write_new(marker, MARKER_TEXT)
    return path


def _make_marked(path: Path) -> None:
    """Create ``path`` and each missing folder above it, each with its own marker: the toolkit made
    them, so a later claim of any of them (a state dir whose sub-folder came first) finds it owned."""
    missing = [path, *(p for p in path.parents if not p.exists())]
    for folder in sorted(set(missing), key=lambda p: len(p.parts)):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made at this moment by another of the run's threads, which marks it
        write_new(folder / MARKER, MARKER_TEXT)


def is_owned(folder: Path) -> bool:
    """Whether ``folder`` is the toolkit's: it carries the marker itself (a marker above does not count)."""
    return _is_marker(folder / MARKER)


def _is_marker(path: Path) -> bool:
    """A regular file (not a symlink) of this user."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def no_links_below_owned(path: Path) -> None:
    """Refuse ``path`` when a folder on its way below the nearest owned folder (one with the
    marker) is a symlink: a planted ``reports -> /etc`` must not redirect a write or a delete."""
    path = Path(os.path.abspath(path))
    below: list[Path] = []
    for folder in (path, *path.parents):
        if is_owned(folder):
            for part in below:
                if part.is_symlink():
                    raise OutputError(f"{part} is a symlink inside the toolkit's folder {folder}; remove it (the toolkit follows none)")
            return
        below.append(folder)


def write_new(path: Path, data: bytes | str) -> None:
    """Create ``path`` with ``data``; it must not exist, and a symlink there is never followed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def adopt(path: Path) -> None:
    """Mark ``path`` as the toolkit's when it exists unmarked (the repository's own ignored build/),
    and give a state dir of the old layout (one marker on top) a marker in every folder below."""
    if not path.is_dir() or path.is_symlink():
        return
    marker = path / MARKER
    if not marker.exists() and not marker.is_symlink():
        write_new(marker, MARKER_TEXT)
        return
    if not _is_marker(marker) or LAYOUT in marker.read_text(errors="replace"):
        return
    for folder, dirs, _ in os.walk(path):  # symlinked folders are listed, never entered
        for name in dirs:
            child = Path(folder) / name
            if not child.is_symlink() and not (child / MARKER).exists() and not (child / MARKER).is_symlink():
                write_new(child / MARKER, MARKER_TEXT)
    atomic_write(marker, MARKER_TEXT)


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
    no_links_below_owned(path.parent)
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


def existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists: the folder whose disk a write to it would use."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or would hold it)."""
    return shutil.disk_usage(existing(path)).free


def disk_full(folder: Path, needed: int = 0) -> str:
    """What to tell the user when the disk of ``folder`` is full."""
    free = free_bytes(folder)
    need = f", {needed / 2**20:.1f} MB needed" if needed else ""
    return (f"the disk holding {folder} is full ({free / 2**20:.1f} MB free{need}); free space (`nox -s prune` removes build cache, "
            "other orgs' local images and old registry tags) and run again")  # fmt: skip


def full_disk(exc: BaseException) -> str:
    """What to tell the user when ``exc`` is a write that found its disk full or over quota; else ""."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(Path(exc.filename or "."))
    return ""


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
        no_links_below_owned(target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_new(target, data)
    for name, path in (links or {}).items():
        (dest / name).hardlink_to(path)
    return dest


def copy_fleet(src: Path, dest: Path) -> None:
    """Copy the fleet's parts from ``src`` into the new or empty folder ``dest``: regular files only,
    read as build contexts are (a symlink out of its part, a FIFO or a device raises ConfigError)."""
    for part in FLEET_PARTS:
        try:
            if (src / part).is_dir():
                files = [(f"{part}/{rel}", data) for rel, data in read_tree(src, part, (), outputs=True).files]
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
    process holds it, ``waiting`` is told who (pid and command line) and this one waits. A symlink
    at ``path`` (or on its way below the owned folder) is refused, never followed."""
    no_links_below_owned(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{path} is a symlink; remove it (the toolkit follows none in its folders)") from None
        raise
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
