"""OS package locks: the exact Debian/Ubuntu package versions of each family, by section.

``lockfiles/os/FAMILY.txt`` holds ``name=version`` lines under section headers:

* ``[root-builder]``, ``[root-runtime]``: a bootstrapped root family's two roots, as installed
  (the runtime root is trimmed afterwards to what its packages need);
* ``[runtime]``: what apt installs on top of the root's builder root for a family's
  ``os_packages`` (its ancestors' included), before they are copied into the runtime image;
* ``[builder]``: what apt installs there for ``builder.os_packages``.

The generated header records the archive's date (each pocket's ``InRelease`` date) and the same
stamp as the Python locks (inputs, content, resolver). Pure: reading the files is
:mod:`buildtool.model.load`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildtool.model.locks import Stamped

OS_LOCK_DIR = "lockfiles/os"
SECTIONS = ("root-builder", "root-runtime", "runtime", "builder")
ARCHIVE_KEY = "archive"
_LINE = re.compile(r"([a-z0-9][a-z0-9+.-]*)=([A-Za-z0-9.+~:-]+)")

Pins = tuple[tuple[str, str], ...]


def os_lock_path(family: str) -> str:
    return f"{OS_LOCK_DIR}/{family}.txt"


@dataclass(frozen=True, kw_only=True)
class OsLock(Stamped):
    path: str
    text: str
    sections: dict[str, Pins]

    def pins(self, *sections: str) -> dict[str, str]:
        """name -> version over ``sections`` (later ones win)."""
        return {name: version for s in sections for name, version in self.sections.get(s, ())}


class OsLockSyntax(ValueError):
    """A line of an OS lock that is not a section header, a comment or ``name=version``."""


def parse_os_lock(path: str, text: str) -> OsLock:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]") and line[1:-1] in SECTIONS:
            current = sections.setdefault(line[1:-1], [])
        elif current is not None and (m := _LINE.fullmatch(line)):
            current.append((m.group(1), m.group(2)))
        else:
            raise OsLockSyntax(f"{path}:{number}: {line[:80]!r} is not [section] or name=version")
    return OsLock(path=path, text=text, sections={k: tuple(sorted(v)) for k, v in sections.items()})


def format_os_lock(header: list[str], sections: dict[str, Pins]) -> str:
    """The lock's text before :func:`buildtool.model.locks.stamp` adds the stamp: comment lines, then sections."""
    lines = [f"# {h}" if h else "#" for h in header]
    for name in SECTIONS:
        if name in sections:
            lines += ["", f"[{name}]", *(f"{pkg}={version}" for pkg, version in sorted(sections[name]))]
    return "\n".join(lines) + "\n"


def apt_requests(pins: Pins) -> list[str]:
    """``name=version`` arguments for apt-get install: every package at its locked version."""
    return [f"{name}={version}" for name, version in pins]


def pins_file(pins: dict[str, str]) -> bytes:
    """The ``name=version`` file the export step and the bootstrap's check read."""
    return "".join(f"{name}={version}\n" for name, version in sorted(pins.items())).encode()
