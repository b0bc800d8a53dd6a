"""Where the toolkit writes: folders it owns, and files replaced atomically.

A folder the toolkit may empty carries a marker file of its own. A path that is not one (the
repository, a folder holding other files, a file) is refused with :class:`OutputError`, so a
mistyped ``--out`` or ``FLEET_STATE_DIR`` can never delete what the toolkit did not create.
Files are written to a temporary name and renamed into place: a reader (or a crash) never sees
half a file, and a symlink planted at the destination is replaced, never followed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from buildtool.errors import OutputError

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
    if not marker.exists():
        marker.write_text(MARKER_TEXT)
    return path


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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
