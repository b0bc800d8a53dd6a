"""The schema of the fleet files: value checkers, name patterns and the problem collector.

Every value in a fleet file is untrusted input. Patterns are matched with ``fullmatch`` (``$``
would accept a trailing newline), and strings that can reach a generated file are single-line:
see :mod:`buildtool.quote` for how each kind of value is written.
"""

from __future__ import annotations

import datetime as dt
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from buildtool.core.errors import ConfigError, Problem
from buildtool.core.names import did_you_mean
from buildtool.model.sources import check_folder
from buildtool.model.text import hostile

# Characters no single-line field may hold: C0 controls (newline, CR, tab, NUL, ESC...), DEL,
# C1 controls, and the Unicode line and paragraph separators.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

Checker = Callable[[Any], tuple[Any, str | None]]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SERVICE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
PYTHON_RE = re.compile(r"3\.[0-9]{1,2}")
CUDA_RE = re.compile(r"[0-9]{2}\.[0-9]")
ARCH_RE = re.compile(r"[0-9]{1,2}\.[0-9]")
# The compute capabilities NVIDIA's GPUs have (Maxwell to Blackwell): an arch outside this list is a typo.
CUDA_ARCHES = ("5.0", "5.2", "5.3", "6.0", "6.1", "6.2", "7.0", "7.2", "7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "10.1", "12.0", "12.1")
SUITE_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
# An image reference: [registry[:port]/]path[:tag][@sha256:digest], at least a tag or a digest.
IMAGE_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(?::[0-9]{1,5})?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
TAG_RE = re.compile(r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$")
ORG_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
REGISTRY_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(?::[0-9]{1,5})?")
DEB_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # a name only: versions live in lockfiles/os
IMAGE_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# A release tag as publish writes it: YYYYMMDD-GITSHA (or -nogit), a dirty tree adding the hash of its changes.
RELEASE_TAG_RE = re.compile(r"[0-9]{8}-(?:[0-9a-f]{7,40}|nogit)(?:-dirty-[0-9a-f]{8})?")
# An apt archive's address: http(s), a host name or address, a port, a path of plain segments.
ARCHIVE_URL_RE = re.compile(r"https?://[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~+-]+)*")
# A named volume and where it is mounted: a lowercase name, an absolute path without '.' or '..' parts.
VOLUME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}:(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){1,16}")
SECRET_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")  # a compose secret: /run/secrets/NAME, from deploy/secrets/NAME
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
ADDRESS_RE = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")  # an IPv4 address a machine publishes ports on
SNAPSHOT_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")  # snapshot.debian.org's timestamps: 20261121T095414Z

MAX_TOML_BYTES = 1 << 20


def _str(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str):
        return None, f"must be a string, got {type(v).__name__}"
    if CONTROL.search(v):
        return None, f"{v!r} must be one line without control characters (it is written into Dockerfiles and commands); remove the line break"
    return v, None


single_line = _str  # for the readers of other files (the allowlist)


def _bool(v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, bool) else (None, f"must be true or false, got {v!r}")


def _int(lo: int, hi: int) -> Checker:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, int):
            return None, f"must be an integer, got {v!r}"
        if not lo <= v <= hi:
            return None, f"must be between {lo} and {hi}, got {v}"
        return v, None

    return check


def _strlist(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return None, "must be a list of strings"
    bad = [(i, x) for i, x in enumerate(v) if CONTROL.search(x)]
    if bad:
        return None, f"entry {bad[0][0]} ({bad[0][1]!r}) must be one line without control characters; remove the line break"
    return tuple(v), None


def patterns(regex: re.Pattern[str], what: str) -> Checker:
    """A list of strings, each a full match of ``regex``."""

    def check(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            return None, "must be a list of strings"
        bad = [(i, x) for i, x in enumerate(v) if not regex.fullmatch(x)]
        if bad:
            return None, f"entry {bad[0][0]} ({bad[0][1]!r}) is not {what}"
        if len(set(v)) != len(v):
            return None, "lists an entry twice"
        return tuple(v), None

    return check


def _argv(v: Any) -> tuple[Any, str | None]:
    """A command's arguments: any text (written as JSON, or passed as argv), but no NUL byte."""
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return None, "must be a list of strings"
    if any("\x00" in x for x in v):
        return None, "an argument holds a NUL byte, which no command line can carry"
    if v and not v[0].strip():
        return None, "the command (its first element) is empty; name the program to run"
    if "" in v:
        return None, f"element {v.index('')} is empty (''); remove it, or write the argument it stands for"
    return tuple(v), None


def _env(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, dict):
        return None, 'must be a table of NAME = "value"'
    bad_names = [k for k in v if not ENV_RE.fullmatch(k)]
    if bad_names:
        return None, f"invalid entries {bad_names}: names are [A-Za-z_][A-Za-z0-9_]*"
    bad_values = [k for k, x in v.items() if not isinstance(x, str | int | bool)]
    if bad_values:
        return None, f"invalid entries {bad_values}: values are strings, integers or booleans"
    multi = [k for k, x in v.items() if isinstance(x, str) and CONTROL.search(x)]
    if multi:
        return None, f"invalid entries {multi}: a value must be one line without control characters (Dockerfile ENV cannot hold a line break)"
    return tuple(sorted((k, str(x).lower() if isinstance(x, bool) else str(x)) for k, x in v.items())), None


def _suites(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        return None, 'must be a table of suite = "python version", e.g. bookworm = "3.11"'
    bad = [k for k, x in v.items() if not SUITE_RE.fullmatch(k) or not PYTHON_RE.fullmatch(x)]
    if bad:
        return None, f"invalid entries {bad}: suites are lowercase names, versions like \"3.11\""
    return tuple(sorted(v.items())), None


def _any(v: Any) -> tuple[Any, str | None]:
    return v, None


def _date(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v, None
    return None, f"must be a date like 2026-10-31 (a TOML date, unquoted), got {v!r}"


def _archive_url(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, str) and ARCHIVE_URL_RE.fullmatch(v):
        return v, None
    return None, f"{v!r} is not an archive URL like \"http://deb.debian.org/debian\" (http or https, no query, no trailing slash)"


def _snapshot(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, str) and SNAPSHOT_RE.fullmatch(v):
        try:
            dt.datetime.strptime(v, "%Y%m%dT%H%M%SZ")
            return v, None
        except ValueError:
            pass
    return None, f"{v!r} is not a snapshot time like \"20261121T095414Z\" (UTC, as snapshot.debian.org names them)"


def pattern(regex: re.Pattern[str], what: str) -> Checker:
    def check(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, str) or not regex.fullmatch(v):
            return None, f"{v!r} is not {what}"
        return v, None

    return check


SETTINGS_SCHEMA: dict[str, Checker] = {
    "registry": pattern(REGISTRY_RE, 'a registry host[:port], e.g. "127.0.0.1:5000"'),
    "org": pattern(ORG_RE, "an image path of lowercase letters, digits, '.', '_', '-' and '/'"),
    "suite_python": _suites,
    "ignore": _strlist,
    "source_date_epoch": _int(0, 2**32),
}
SERVICE_DEFAULTS_SCHEMA: dict[str, Checker] = {"source": _str, "entrypoint": _argv}
FLEET_SCHEMA: dict[str, Checker] = {"settings": _any, "service_defaults": _any, "archives": _any, "layers": _any}
ARCHIVES_SCHEMA: dict[str, Checker] = {"debian": _any, "ubuntu": _any}
ARCHIVE_SCHEMA: dict[str, Checker] = {
    "mirror": _archive_url,
    "security": _archive_url,
    "snapshot": _snapshot,
    "snapshot_mirror": _archive_url,
    "keyring": _str,
}
MACHINE_SCHEMA: dict[str, Checker] = {
    "description": _str,
    "gpu": _str,
    "vram_gb": _int(0, 1024),
    "cuda_arch": _str,
    "informational": _strlist,  # profile keys only the fleet's own services read (model/profiles.py)
    "profile": _env,
    "ram_gb": _int(1, 65536),
    "vram_overcommit_reason": _str,  # why the services' declared GPU memory may add up to more than the card's
    "publish_address": pattern(ADDRESS_RE, 'an IPv4 address, e.g. "127.0.0.1"'),
}
ROOT_SCHEMA: dict[str, Checker] = {
    "source": _str,
    "image": _str,
    "suite": _str,
    "packages": _strlist,
    "builder_packages": _strlist,
    "archive": _any,
}
SMOKE_SCHEMA: dict[str, Checker] = {"name": _str, "run": _argv, "gpu": _bool}
BUILDER_SCHEMA: dict[str, Checker] = {"os_packages": _strlist, "requirements": _strlist, "setup": _str, "env": _env}
FAMILY_SCHEMA: dict[str, Checker] = {
    "description": _str,
    "parent": _str,
    "root": _any,
    "python": _str,
    "gpu": _bool,
    "cuda": _str,
    "machine_specific": _bool,
    "os_packages": _strlist,
    "requirements": _strlist,
    "env": _env,
    "smoke": _any,
    "budget_mb": _int(1, 100_000),
    "time_limit_minutes": _int(1, 24 * 60),
    "vram_gb": _int(0, 1024),
    "group": pattern(NAME_RE, "a group name of lowercase letters, digits and '-'"),
    "builder": _any,
    "vuln_policy": pattern(re.compile("enforce|warn"), 'a vulnerability policy: "enforce" or "warn"'),
    "vuln_policy_reason": _str,
    "budget_policy": pattern(re.compile("enforce|warn"), 'a size budget policy: "enforce" or "warn"'),
    "budget_reason": _str,
    "runtime_tools": _strlist,
    "end_of_life": _date,
    "end_of_life_reason": _str,
    "memory_mb": _int(16, 16 * 1024 * 1024),  # the memory limit of its services' containers (a service may set its own)
    "volumes": patterns(VOLUME_RE, 'a named volume and its mount point, e.g. "hf-models:/data/models/huggingface"'),
}
SERVICE_SCHEMA: dict[str, Checker] = {
    "family": _str,
    "machines": _strlist,
    "port": _int(1, 65535),
    "health_port": _int(1, 65535),
    "needs": _str,
    "vram_gb": _int(0, 1024),
    "source": _str,
    "entrypoint": _argv,
    "requirements": _strlist,
    "env": _env,
    "layer": pattern(NAME_RE, "a startup layer of fleet.toml's [layers]"),
    "memory_mb": _int(16, 16 * 1024 * 1024),
    "volumes": patterns(VOLUME_RE, 'a named volume and its mount point, e.g. "memory-data:/data/memory"'),
    "secrets": patterns(SECRET_RE, "a secret name of lowercase letters, digits and '_'"),
}
LAYER_SCHEMA: dict[str, Checker] = {"after": patterns(NAME_RE, "a layer name"), "description": _str}
REQUIRED = {
    "machine": ("description",),
    "family": ("description",),
    "service": ("family", "machines", "port", "health_port"),
    "root": ("source",),
    "smoke": ("name", "run"),
}


class Collector:
    """Accumulates problems while reading; ``raise_if_any`` ends the read with all of them.
    Warnings (a setting that does nothing) are kept apart: the fleet carries them, nothing fails."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def add(self, file: str, key: str, message: str) -> None:
        self.problems.append(Problem(file=file, key=key, message=message))

    def warn(self, file: str, key: str, message: str) -> None:
        self.warnings.append(Problem(file=file, key=key, message=message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def load_toml(self, path: Path) -> dict[str, Any] | None:
        """Parse one fleet file; any fault becomes one problem on the file and None."""
        rel = path.relative_to(self.root).as_posix()
        try:
            mode = path.lstat().st_mode
        except OSError as exc:
            self.add(rel, "", f"cannot be read ({exc.strerror})")
            return None
        if not stat.S_ISREG(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            self.add(rel, "", f"cannot be read: it is {kind}; fleet files must be regular files in the repository")
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.add(rel, "", f"cannot be read ({exc.strerror})")
            return None
        if len(data) > MAX_TOML_BYTES:
            self.add(rel, "", f"cannot be read: it is {len(data)} bytes, fleet files are limited to {MAX_TOML_BYTES}; split it")
            return None
        if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
            self.add(rel, "", "cannot be read: it starts with a byte-order mark; save it as UTF-8 without BOM")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.add(rel, "", f"cannot be read: it is not UTF-8 (byte {exc.start}); save it as UTF-8")
            return None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.add(rel, "", f"not valid TOML ({exc}); fix the syntax")
            return None
        except RecursionError:
            self.add(rel, "", "not valid TOML: arrays or tables are nested too deeply; flatten them")
            return None
        found = hostile(data)
        if found:
            self.add(rel, *found)
            return None
        return data

    def table(self, file: str, prefix: str, data: Any, schema: Mapping[str, Checker], kind: str) -> dict[str, Any]:
        """Check ``data`` against ``schema``; return the converted values of the keys that passed."""
        if not isinstance(data, dict):
            self.add(file, prefix, f"must be a table, got {type(data).__name__}")
            return {}
        out: dict[str, Any] = {}
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in schema:
                shown = key if not CONTROL.search(key) else repr(key)
                fix = did_you_mean(key, schema, listing="allowed keys")
                self.add(file, f"{prefix}.{shown}" if prefix else shown, f"unknown key; {fix}")
                continue
            converted, err = schema[key](value)
            if err:
                self.add(file, path, err)
            else:
                out[key] = converted
        for key in REQUIRED.get(kind, ()):
            if key not in data:
                self.add(file, f"{prefix}.{key}" if prefix else key, f"is required in a {kind} definition")
        return out


def check_source(c: Collector, file: str, key: str, rel: str, *, want_file: bool = False) -> bool:
    why = check_folder(c.root, rel, want_file=want_file)
    if why:
        c.add(file, key, why)
    return why is None


def file_names(c: Collector, folder: str, *, also: tuple[str, ...] = ()) -> list[Path]:
    """The ``*.toml`` files of ``folder``, sorted. Anything else there but files ending in one of
    ``also`` (families/ holds builder setup scripts, ``.sh``) is reported: a misnamed definition
    (``Foo.tml``, ``Foo``) is never skipped without a word."""
    base = c.root / folder
    if not base.is_dir() or base.is_symlink():
        return []
    found = []
    for entry in sorted(base.iterdir()):
        if entry.name.endswith(".toml") and entry.name != ".toml":
            found.append(entry)
        elif not (also and entry.name.endswith(also) and entry.is_file()):
            c.add(f"{folder}/{entry.name}", "", f"is not a definition (NAME.toml); every entry of {folder}/ is one: rename it or move it out")
    return found
