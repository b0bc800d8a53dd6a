"""Reading files of the repository that a fleet file points at, as untrusted input.

A fleet file names paths (a service's ``source``, a family's ``builder.setup``); a pull request
can put anything there: symlinks to host files (``/etc/shadow``, ``/proc/self/environ``), FIFOs
that block a reader, devices. Everything here reads only regular files that live inside the
folder they were named in, through ``O_NOFOLLOW`` opens, and reads each file once: the bytes kept
in memory are the bytes hashed into an identity and the bytes written into a build context.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class SourceProblem(Exception):
    """A path that cannot be part of a build context; ``path`` is relative to the repository."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, kw_only=True)
class SourceTree:
    """The files of one source folder after the ignore rules, as read once: (path in folder, bytes)."""

    path: str  # relative to the repository root
    files: tuple[tuple[str, bytes], ...]


# Never part of an image, whatever fleet.toml's ``ignore`` says: version control metadata (a token
# in .git/config), dotenv and credential files, and the toolkit's own folders (a state dir or render
# output carries the marker file; its name is repeated here so the model needs no adapter).
NEVER = (".git", ".hg", ".svn", ".bzr", ".env", ".env.*", ".envrc", ".netrc", "_netrc", ".pypirc", ".npmrc", ".pgpass", ".git-credentials",
         ".dockercfg", ".docker", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*")  # fmt: skip
TOOLKIT_MARKER = ".buildtool-output"


def never(name: str, path: Path, is_dir: bool, *, outputs: bool = False) -> bool:
    """Whether the entry ``name`` (at ``path``) stays out of every build context; a folder of the
    toolkit's (it holds the marker) too, unless ``outputs`` (a copy of the fleet keeps those the
    toolkit wrote into it, such as the bench's agent)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in NEVER) or (is_dir and not outputs and os.path.lexists(path / TOOLKIT_MARKER))


def ignored(rel: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``rel`` (a path inside a source folder) matches one of the fleet's ignore patterns."""
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            if pattern.rstrip("/") in parts[:-1] or pattern.rstrip("/") == parts[-1]:
                return True
        elif fnmatch.fnmatch(parts[-1], pattern) or fnmatch.fnmatch(rel, pattern):
            return True
    return False


def check_folder(root: Path, rel: str, *, want_file: bool = False) -> str | None:
    """Why ``rel`` cannot be a source folder (or file) of ``root``, or None when it can.

    It must be a relative path below the repository, not the repository itself and not inside
    ``.git``, and must resolve (symlinks followed) to a folder (file) inside the repository.
    """
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        return f"{rel!r} escapes the repository; use a path inside it, relative to the repository root"
    if not want_file and p.parts in ((), (".",)):
        return f"{rel!r} is the repository root; point it at a folder of the service's own code, e.g. \"agents/NAME\""
    if ".git" in p.parts:
        return f"{rel!r} is inside .git; use a folder of the repository's files"
    real = Path(os.path.realpath(root / p))
    if not real.is_relative_to(root):
        return f"{rel!r} resolves outside the repository (symlink?); use a path inside it"
    if real == root:
        return f"{rel!r} resolves to the repository root; point it at a folder of the service's own code"
    if ".git" in real.relative_to(root).parts:
        return f"{rel!r} resolves into .git; use a folder of the repository's files"
    if want_file and not _is_regular(real):
        return f"{rel!r} is not a file in the repository (a regular file, not a symlink); create it or fix the path"
    if not want_file and not real.is_dir():
        return f"{rel!r} is not a directory in the repository; create it or fix the path"
    return None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def read_regular(path: Path, shown: str) -> bytes:
    """The bytes of ``path``, which must be a regular file and not a symlink (``shown`` names it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceProblem(shown, f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise SourceProblem(shown, f"is {KINDS.get(stat.S_IFMT(mode), 'not a regular file')}; only regular files can be read")
        return fh.read()


def read_tree(root: Path, rel: str, ignore: tuple[str, ...], *, outputs: bool = False) -> SourceTree:
    """Read the folder ``rel`` of ``root`` (already checked with :func:`check_folder`).

    A symlink is followed only to a regular file inside the folder, and its content is taken.
    A symlink out of the folder, to a folder, or dangling, and a FIFO, socket or device raise
    :class:`SourceProblem` naming the path.
    """
    base = Path(os.path.realpath(root / rel))
    files: list[tuple[str, bytes]] = []

    def shown(inner: str) -> str:
        return f"{rel.rstrip('/')}/{inner}"

    def walk(folder: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SourceProblem(shown(prefix) if prefix else rel, f"cannot be listed ({exc.strerror})") from None
        for entry in entries:
            inner = f"{prefix}{entry.name}"
            mode = entry.stat(follow_symlinks=False).st_mode
            if ignored(inner, ignore) or never(entry.name, Path(entry.path), stat.S_ISDIR(mode), outputs=outputs):
                continue
            if stat.S_ISDIR(mode):
                walk(Path(entry.path), inner + "/")
            elif stat.S_ISREG(mode):
                files.append((inner, read_regular(Path(entry.path), shown(inner))))
            elif stat.S_ISLNK(mode):
                files.append((inner, _read_link(Path(entry.path), base, shown(inner))))
            else:
                kind = KINDS.get(stat.S_IFMT(mode), "not a regular file")
                raise SourceProblem(shown(inner), f"is {kind}; a build context holds regular files only, remove it")

    walk(base, "")
    return SourceTree(path=rel, files=tuple(files))


def _read_link(link: Path, base: Path, shown: str) -> bytes:
    target = os.readlink(link)
    real = Path(os.path.realpath(link))
    if not real.is_relative_to(base):
        raise SourceProblem(shown, f"is a symlink to {target!r}, outside its source folder; a build context holds only the folder's own files")
    if not real.exists():
        raise SourceProblem(shown, f"is a dangling symlink (to {target!r}); remove it or restore its target")
    if real.is_dir():
        raise SourceProblem(shown, f"is a symlink to a folder ({target!r}); symlinked folders are not followed, copy the files instead")
    return read_regular(real, shown)
