"""Reading hash-locked requirement files in pip-tools format, and the install set of one layer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True, kw_only=True)
class Pin:
    name: str  # canonical name
    version: str
    block: str  # the requirement line with its --hash continuation lines, as written


@dataclass(frozen=True, kw_only=True)
class Lock:
    path: Path
    text: str
    pins: dict[str, Pin]

    def header_value(self, key: str) -> str | None:
        for line in self.text.splitlines():
            if line.startswith(f"# {key}: "):
                return line.split(": ", 1)[1].strip()
        return None


def parse_lock(path: Path, text: str) -> Lock:
    """Parse the pins of a pip-tools/uv ``--generate-hashes`` output."""
    pins: dict[str, Pin] = {}
    current: list[str] = []

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


def read_lock(path: Path) -> Lock | None:
    if not path.is_file():
        return None
    return parse_lock(path, path.read_text(encoding="utf-8"))


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
