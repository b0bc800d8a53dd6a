"""Hash-locked requirement files (pip-tools format): where they live, how they read, what a layer installs.

A lock is text plus the toolkit's stamp under the generated header: the hash of its inputs,
the hash of its own content, and the engine that wrote it. Pure: reading the files from disk
is :mod:`buildtool.model.load`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildtool.core.hashing import sha256
from buildtool.core.names import canonical

LOCK_DIR = "lockfiles"
_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
# Lines the toolkit adds under a lock's generated header; the content hash covers everything else.
INPUTS_KEY = "inputs-sha256"
CONTENT_KEY = "content-sha256"
ENGINE_KEY = "engine"
STAMP_KEYS = (INPUTS_KEY, CONTENT_KEY, ENGINE_KEY)


def family_lock_path(family: str) -> str:
    return f"{LOCK_DIR}/{family}.txt"


def build_lock_name(family: str) -> str:
    """The lock target of a family's build requirements (``[builder]``)."""
    return f"{family}.build"


def service_lock_path(service: str) -> str:
    return f"{LOCK_DIR}/services/{service}.txt"


@dataclass(frozen=True, kw_only=True)
class Pin:
    name: str  # canonical name
    version: str
    block: str  # the requirement line with its --hash continuation lines, as written


class Stamped:
    """A lock file's text with its stamp header lines (Python and OS locks alike)."""

    text: str

    def header_value(self, key: str) -> str | None:
        for line in self.text.splitlines():
            if line.startswith(f"# {key}: "):
                return line.split(": ", 1)[1].strip()
        return None

    def edited(self) -> bool:
        """True when the text no longer hashes to the content hash it was written with."""
        return self.header_value(CONTENT_KEY) != content_hash(self.text)


@dataclass(frozen=True, kw_only=True)
class Lock(Stamped):
    path: str  # relative to the repository root
    text: str
    pins: dict[str, Pin]


def content_hash(text: str) -> str:
    """sha256 of a lock's text without the stamp lines (which hold this hash)."""
    kept = [line for line in text.splitlines() if not any(line.startswith(f"# {key}: ") for key in STAMP_KEYS)]
    return sha256("\n".join(kept))


def stamp(text: str, inputs: str, engine: str) -> str:
    """Add the input hash, the content hash and the engine under the generated header of a fresh lock."""
    lines = text.splitlines()
    idx = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header, body = lines[:idx], ["#", *lines[idx:]]
    digest = content_hash("\n".join(header + body))
    return "\n".join([*header, f"# {INPUTS_KEY}: {inputs}", f"# {CONTENT_KEY}: {digest}", f"# {ENGINE_KEY}: {engine}", *body]) + "\n"


class LockSyntax(ValueError):
    """A line of a lock that is not what the lock writer writes (a pip option, say)."""


# What uv and pip-compile write, line by line, and nothing else: a lock's lines reach build contexts,
# so a pip option (--index-url, -e, -r, --trusted-host...) on any line is refused, never installed.
PIN_LINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]*\])?==[A-Za-z0-9.+!_-]+( ; [A-Za-z0-9_.<>=!~'\" ()-]+)? \\")
HASH_LINE = re.compile(r" {4}--hash=sha256:[0-9a-f]+( \\)?")
COMMENT_LINE = re.compile(r" *#[^\x00-\x08\x0b-\x1f]*|")


def parse_lock(path: str, text: str) -> Lock:
    """Parse the pins of a pip-tools/uv ``--generate-hashes`` output; a line it would not write
    raises :class:`LockSyntax` naming it."""
    pins: dict[str, Pin] = {}
    current: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not (PIN_LINE.fullmatch(line) or HASH_LINE.fullmatch(line) or COMMENT_LINE.fullmatch(line)):
            raise LockSyntax(f"{path}: line {number}: {line[:80]!r} is not a pin (name==version \\), a --hash=sha256 line or a comment")

    def flush() -> None:
        if current:
            m = _PIN_RE.match(current[0])
            if m:
                pin = Pin(name=canonical(m.group(1)), version=m.group(3), block="\n".join(current))
                pins[pin.name] = pin
            current.clear()

    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            flush()
            current.append(line.rstrip())
        elif current and line.strip().startswith("--hash"):
            current.append(line.rstrip())
        elif current and not line.strip().startswith("#"):
            flush()
    flush()
    return Lock(path=path, text=text, pins=pins)


def install_set(lock: Lock | None, parent: Lock | None) -> str:
    """The requirements a layer installs: pins of ``lock`` its parent's lock does not already pin.

    A child's lock is compiled with its parent's lock as constraints, so every shared pin is
    identical; installing only the rest with ``--no-deps`` puts each file in the image once.
    """
    if lock is None:
        return ""
    inherited = parent.pins if parent else {}
    own = [p.block for name, p in sorted(lock.pins.items()) if name not in inherited]
    return "\n".join(own) + "\n" if own else ""
