"""dpkg databases read and trimmed without dpkg: the lean runtime roots are made with these.

This file also runs as a script, in two places, so it uses the standard library only and runs on
Python 3.10 (Ubuntu jammy's):

* on the host, in the bootstrap's customize hooks (``check``: the installed set is the lock;
  ``purge-set``: which packages a runtime root drops);
* in a build context, inside the root family's builder image (``export``): a child family's OS
  packages are installed there with apt and copied, files and status stanzas, into a runtime
  image that has no package manager.

The runtime keeps the dpkg status database (``/var/lib/dpkg/status``, ``info/*.list`` and
``*.md5sums``), so scanners see exactly the packages that are there.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import stat
import sys
from pathlib import Path

# Never kept in a runtime root unless a family names them: package managers and the machinery of
# their maintainer scripts. Dependencies on them are left dangling on purpose (nothing runs them).
CUT = ("dpkg", "debconf", "debconf-2.0", "perl-base", "debianutils", "awk", "mawk", "init-system-helpers", "adduser")
# merged-/usr: these are symlinks into /usr in every root the toolkit makes.
MERGED = {"/bin": "/usr/bin", "/sbin": "/usr/sbin", "/lib": "/usr/lib", "/lib64": "/usr/lib64", "/lib32": "/usr/lib32"}
# Documentation no image carries: (folder, the glob of what stays in it). The bootstrap gives
# them to dpkg as path-excludes/-includes; the export leaves them out of what it copies (with the
# folders the strip hook removes). Globs match as dpkg's do: fnmatch, "*" crosses "/".
DOCS = (
    ("/usr/share/man", ""),
    ("/usr/share/doc", "/usr/share/doc/*/copyright"),
    ("/usr/share/locale", "/usr/share/locale/locale.alias"),
    ("/usr/share/info", ""),
    ("/usr/share/lintian", ""),
)
UNEXPORTED = (*(folder for folder, _ in DOCS), "/usr/share/doc-base", "/usr/share/bug")


class DpkgError(Exception):
    """A database that does not say what it must; the message says what and how to fix it."""


def stanzas(text: str) -> dict[str, str]:
    """Package name -> its raw stanza, for the installed packages of a status file."""
    out: dict[str, str] = {}
    for raw in re.split(r"\n\s*\n", text):
        name = re.search(r"^Package: (\S+)$", raw, re.M)
        if name and re.search(r"^Status: .* installed$", raw, re.M):
            out[name.group(1)] = raw.strip("\n")
    return out


def field(raw: str, name: str) -> str:
    found = re.search(rf"^{re.escape(name)}: (.*)$", raw, re.M)
    return found.group(1).strip() if found else ""


def versions(text: str) -> dict[str, str]:
    """Package name -> version of every installed package of a status file."""
    return {name: field(raw, "Version") for name, raw in stanzas(text).items()}


def _groups(value: str) -> list[list[str]]:
    """``a (>= 1) | b, c:any`` -> ``[["a", "b"], ["c"]]``: names only, qualifiers dropped."""
    groups = []
    for group in value.split(","):
        names = [re.split(r"[\s(:\[]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
        names = [n for n in names if n]
        if names:
            groups.append(names)
    return groups


def closure(status: dict[str, str], roots: list[str], cut: tuple[str, ...] = CUT) -> set[str]:
    """``roots`` and everything they Depend or Pre-Depend on among the installed packages.

    Of an alternative ``a | b`` the first installed one is taken. A group a ``cut`` name
    satisfies is not followed; a root is kept even when it is in ``cut`` (a family named it).
    """
    provides: dict[str, list[str]] = {}
    for name, raw in status.items():
        for group in _groups(field(raw, "Provides")):
            provides.setdefault(group[0], []).append(name)
    keep: set[str] = set()
    todo = [(name, True) for name in roots]
    while todo:
        name, named = todo.pop()
        if name in keep or (name in cut and not named):
            continue
        if name not in status:
            raise DpkgError(f"{name} is not installed, so it cannot be kept; check the package name")
        keep.add(name)
        raw = status[name]
        for group in _groups(field(raw, "Pre-Depends")) + _groups(field(raw, "Depends")):
            if any(alt in cut for alt in group):
                continue
            chosen = next((alt for alt in group if alt in status), None)
            if chosen is None:
                chosen = next((p for alt in group for p in provides.get(alt, []) if p not in cut), None)
            if chosen is None:
                raise DpkgError(f"{name}: nothing installed satisfies {' | '.join(group)}")
            todo.append((chosen, False))
    return keep


def check(status_text: str, locked: dict[str, str]) -> list[str]:
    """How the installed packages differ from ``locked`` (name -> version); empty when they match."""
    installed = versions(status_text)
    problems = [f"{n} {installed[n]} is installed, the lock says {v}" for n, v in sorted(locked.items()) if n in installed and installed[n] != v]
    problems += [f"{n} {v} is locked but not installed" for n, v in sorted(locked.items()) if n not in installed]
    problems += [f"{n} {v} is installed but not locked" for n, v in sorted(installed.items()) if n not in locked]
    return problems


def read_pins(path: Path) -> dict[str, str]:
    """``name=version`` lines (blank lines and ``#`` comments skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("=")
            pins[name] = version
    return pins


# -- export: a child family's OS packages, from the builder into a runtime image ------------------


def _info(info: Path, name: str, arch: str, ext: str) -> Path | None:
    for candidate in (info / f"{name}:{arch}.{ext}", info / f"{name}.{ext}"):
        if candidate.exists():
            return candidate
    return None


def _canonical(path: str, root: Path) -> str:
    """The merged-/usr path of a file list entry ("" for the /bin-style symlinks themselves)."""
    for old, new in MERGED.items():
        if path == old:
            return ""
        if path.startswith(old + "/") and (root / old.lstrip("/")).is_symlink():
            return new + path[len(old) :]
    return path


def exported_path(path: str) -> bool:
    """Whether a file list entry belongs in a runtime image (documentation does not)."""
    if any(kept and fnmatch.fnmatchcase(path, kept) for _, kept in DOCS):
        return True
    return not any(path == d or path.startswith(d + "/") for d in UNEXPORTED)


def _copy(src: Path, dest: Path) -> None:
    """One entry of a package: a folder, a symlink or a file, with its owner and mode, never setuid/setgid."""
    st = src.lstat()
    if stat.S_ISDIR(st.st_mode):
        dest.mkdir(parents=True, exist_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dest)
        else:
            shutil.copyfile(src, dest, follow_symlinks=False)
    os.lchown(dest, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dest, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))


def export(*, root: Path, parent_status: str, out: Path, packages: list[str], locked: dict[str, str]) -> list[str]:
    """Copy ``packages`` and what they need that the parent lacks from ``root`` into ``out``.

    The packages are those of ``root``'s database (apt installed them there, with their
    maintainer scripts); each one exported must be in ``locked`` at its installed version (when
    there is a lock: image roots have none). ``out``
    gets their files, their ``info/`` lists and checksums, and a status file that is the
    parent's plus their stanzas. Returns ``name version`` of each exported package.
    """
    status = stanzas((root / "var/lib/dpkg/status").read_text())
    parent = stanzas(parent_status)
    info = root / "var/lib/dpkg/info"
    exported = []
    for name in sorted(closure(status, packages)):
        want = field(status[name], "Version")
        have = field(parent[name], "Version") if name in parent else None
        if have == want:
            continue
        if have is not None:
            raise DpkgError(f"{name} is {have} in the parent image but {want} here; relock the OS packages so both come from one lock")
        if locked and locked.get(name) != want:
            raise DpkgError(f"{name} {want} was installed but is not in the lock ({locked.get(name) or 'absent'}); relock the OS packages")
        exported.append(name)
    out_info = out / "var/lib/dpkg/info"
    out_info.mkdir(parents=True, exist_ok=True)
    for name in exported:
        arch = field(status[name], "Architecture")
        listing = _info(info, name, arch, "list")
        if listing is None:
            raise DpkgError(f"{name} has no file list in {info}")
        for line in listing.read_text().splitlines():
            path = _canonical(line, root)
            if path and path != "/." and exported_path(path) and os.path.lexists(root / path.lstrip("/")):
                target = out / path.lstrip("/")
                if not os.path.lexists(target):
                    _copy(root / path.lstrip("/"), target)
        for ext in ("list", "md5sums", "conffiles"):
            src = _info(info, name, arch, ext)
            if src is not None:
                shutil.copyfile(src, out_info / src.name)
    merged = {**parent, **{name: status[name] for name in exported}}
    (out / "var/lib/dpkg/status").write_text("".join(merged[n] + "\n\n" for n in sorted(merged)))
    return [f"{name} {field(status[name], 'Version')}" for name in exported]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpkg.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="the installed packages of STATUS are exactly the PINS file's")
    p.add_argument("status", type=Path)
    p.add_argument("pins", type=Path)
    p = sub.add_parser("purge-set", help="print the installed packages outside the closure of KEEP")
    p.add_argument("status", type=Path)
    p.add_argument("keep", nargs="+")
    p = sub.add_parser("export", help="copy PACKAGES (and what they need) from this root into OUT")
    p.add_argument("--parent-status", type=Path, required=True)
    p.add_argument("--pins", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("packages", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = check(args.status.read_text(), read_pins(args.pins))
            if problems:
                print("the installed packages are not the locked ones:", *problems, sep="\n  ", file=sys.stderr)
                return 1
        elif args.command == "purge-set":
            status = stanzas(args.status.read_text())
            print("\n".join(sorted(set(status) - closure(status, args.keep))))
        else:
            done = export(root=Path("/"), parent_status=args.parent_status.read_text(), out=args.out, packages=args.packages, locked=read_pins(args.pins))
            print("exported:", *done, sep="\n  ")
    except DpkgError as exc:
        print(f"dpkg.py {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
