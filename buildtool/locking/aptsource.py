"""A private apt for one archive: its configuration, signed lists and dates, under a cache folder.

apt runs as the current user with a configuration of its own: the archive's sources (Debian's or
Ubuntu's, a mirror, or a snapshot at one time) with the keyring that signs them (apt checks the
InRelease signatures), its own lists and caches, and an empty dpkg status; nothing of the host's
apt setup is read. A run fetches each archive's lists once (:func:`new_run` starts a new run).
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import NamedTuple

from buildtool.adapters import host
from buildtool.adapters.bootstrap import DEBIAN_KEYRING, NO_ARCHIVE, UBUNTU_KEYRING, sources
from buildtool.adapters.setup import ensure_host_packages
from buildtool.core.errors import LockError, MissingToolError
from buildtool.core.hashing import sha256_json
from buildtool.model.types import UBUNTU_SUITES, Archive

log = logging.getLogger("buildtool.apt")

TIMEOUT = 900.0
APT_HELP = (
    "apt-get is not installed: Debian and Ubuntu package versions are resolved by the host's apt. "
    "Run this on a Debian or Ubuntu host (or in a container of one), or install your distribution's apt and gpgv packages"
)
_SOURCE = re.compile(r"^deb\s+(?:\[(?P<options>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<dist>\S+)(?P<rest>.*)$")
# Characters apt escapes in the names of its list files (apt-pkg's URItoFileName).
_QUOTED = set('\\|{}[]<>"^~_=!@#$%^&*')

# (apt folder, its sources) updated by this process: the lists are fetched once per run. The lock
# keeps two threads from updating one folder at once (apt would refuse the second).
_updated: set[tuple[Path, str]] = set()
_updating = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class AptArchive:
    suite: str
    root: Path  # apt's Dir: sources, lists, caches
    arch: str
    apt: str
    dates: tuple[tuple[str, str], ...]
    release: str = ""  # the suite's release number, from its InRelease's Version field (12.12, 22.04); "" if it names none

    @property
    def conf(self) -> Path:
        """The configuration with an empty dpkg status: updates and lookups."""
        return self.root / "apt.conf"


def new_run() -> None:
    """Forget which archives' lists were fetched: the next resolution of each fetches them again
    (a run reads the archive once; a later run in the same process sees what changed since)."""
    with _updating:
        _updated.clear()


# -- apt's private configuration -----------------------------------------------------------------


def host_apt() -> tuple[str, str]:
    """(version, architecture) of the host's apt, from ``apt-get --version``: ``apt 2.6.1 (amd64)``."""
    if host.which("apt-get") is None:
        raise MissingToolError(APT_HELP)
    first = host.run(["apt-get", "--version"], env={"LC_ALL": "C"}).stdout.partition("\n")[0]
    found = re.match(r"apt (\S+) \((\S+)\)", first)
    if not found:
        raise LockError(f"cannot read the apt version from {first!r}")
    return found[1], found[2]


def config(root: Path, arch: str, *, status: Path, preferences: Path | None) -> str:
    """apt.conf for the private apt under ``root``. Without ``preferences`` it is the shared one
    (empty status: its package cache is kept); with them, one resolution's (cache in memory)."""
    for path in (root, status, preferences):
        if path is not None and ('"' in str(path) or "\n" in str(path)):
            raise LockError(f"apt cannot use the folder {str(path)!r}: its name holds a quote or a newline")
    lines = [
        f'Dir "{root}/";',
        f'Dir::State::status "{status}";',
        f'Dir::Etc::Preferences "{preferences or root / "etc/apt/preferences"}";',
        'Dir::Etc::Trusted "/dev/null";',  # keys come from each source's signed-by only
        f'Dir::Etc::TrustedParts "{root}/etc/apt/trusted.gpg.d";',
        f'APT::Architecture "{arch}";',
        f'APT::Architectures {{ "{arch}"; }};',
        'APT::Install-Recommends "false";',
        'Acquire::Languages "none";',
        # apt marks itself Essential unless told not to; minbase's essential set excludes it (as in mmdebstrap).
        'pkgCacheGen::ForceEssential ",";',
        # As root, apt would download as _apt, who may not write to the caller's folder.
        'APT::Sandbox::User "root";',
    ]
    if preferences is not None:
        lines.append('Dir::Cache::pkgcache "";')  # each resolution has its own status: build it in memory
    return "\n".join(lines) + "\n"


def _keyring(suite: str, own: Path | None) -> str:
    if own is None and suite in UBUNTU_SUITES:  # the toolkit's copy of Ubuntu's keys
        own = Path(UBUNTU_KEYRING)
    if own is not None:
        if not own.is_file():
            raise LockError(f"the archive keyring {own} is missing")
        if re.search(r"[\s\]\"]", str(own.absolute())):  # it becomes an option of a sources.list line: [signed-by=PATH]
            raise LockError(f"apt cannot read the keyring at {str(own.absolute())!r}: its path holds a space, a quote or ']'; move the checkout")
        return str(own.absolute())
    if not Path(DEBIAN_KEYRING).is_file():
        ensure_host_packages(["debian-archive-keyring"])
    if not Path(DEBIAN_KEYRING).is_file():
        raise MissingToolError(f"{DEBIAN_KEYRING} is missing: install the debian-archive-keyring package")
    return DEBIAN_KEYRING


def _signed(line: str, keyring: str) -> str:
    """The source line with ``signed-by=keyring`` (unless it names its key already)."""
    found = _SOURCE.match(line)
    if not found:
        raise LockError(f"cannot read the apt source line {line!r}")
    options = (found["options"] or "").split()
    if not any(o.startswith("signed-by=") for o in options):
        options.append(f"signed-by={keyring}")
    return f"deb [{' '.join(options)}] {found['uri']} {found['dist']}{found['rest']}"


def _write(path: Path, text: str) -> None:
    """Write only on change: apt's caches are checked against their inputs' times."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def archive(suite: str, cache: Path, source: Archive = NO_ARCHIVE, own_keyring: Path | None = None, *, expired_ok: bool = False) -> AptArchive:
    """The private apt for ``suite`` of ``source`` under ``cache``, its lists fetched (once per process).
    ``expired_ok``: accept signed lists past their Valid-Until (a mirror that lags behind; a
    snapshot's lists always are)."""
    version, arch = host_apt()
    keyring = _keyring(suite, own_keyring if source.keyring else None)
    expired_ok = expired_ok or bool(source.snapshot)
    root = (cache / (suite + (f"-{sha256_json(source.declared())[:12]}" if source.declared() else ""))).absolute()
    folders = ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial")
    for sub in (*folders, "var/lib/dpkg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [_signed(line, keyring) for line in sources(suite, source)]
    listing = "".join(line + "\n" for line in lines)
    _write(root / "etc/apt/sources.list", listing)
    _write(root / "var/lib/dpkg/status", "")
    _write(root / "apt.conf", config(root, arch, status=root / "var/lib/dpkg/status", preferences=None))
    with _updating:
        if (root, listing) not in _updated:
            _update(root, suite, expired_ok=expired_ok)
            _updated.add((root, listing))
    return AptArchive(suite=suite, root=root, arch=arch, apt=version, dates=tuple(dates(root, lines)), release=_release(root, lines[0]))


def _update(root: Path, suite: str, *, expired_ok: bool = False) -> None:
    started = time.monotonic()
    options = ["-o", "Acquire::Check-Valid-Until=false"] if expired_ok else []
    proc = run(root / "apt.conf", ["apt-get", "-q", *options, "update"])
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "W:"))]
    if proc.returncode != 0 or any(p.startswith("E:") for p in problems):
        raise LockError(f"apt-get update of the {suite} archive failed:\n  " + "\n  ".join(problems or [f"exit code {proc.returncode}"]))
    log.info("apt lists of %s updated in %.1fs", suite, time.monotonic() - started)


class Output(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run(conf: Path, argv: list[str]) -> Output:
    # LC_ALL=C: apt's messages are matched in English.
    proc = host.run(argv, env={"APT_CONFIG": str(conf), "LC_ALL": "C"}, check=False, timeout=TIMEOUT)
    return Output(proc.returncode, proc.stdout or "", proc.stderr or "")


# -- archive dates -------------------------------------------------------------------------------


def list_name(uri: str, dist: str, file: str) -> str:
    """The name apt gives the list file of ``file`` of ``dist`` at ``uri`` (its URItoFileName)."""
    address = uri.rstrip("/") + f"/dists/{dist}/{file}"
    address = address.partition("://")[2] or address
    server, _, path = address.partition("/")
    text = server.rpartition("@")[2] + "/" + path
    quoted = "".join(f"%{b:02x}" if b <= 0x20 or b >= 0x7F or chr(b) in _QUOTED else chr(b) for b in text.encode())
    return quoted.replace("/", "_")


def snapshot_date(release: str) -> str:
    """The ``Date:`` of a Release or InRelease file as a snapshot timestamp, ``20260711T101637Z``."""
    found = re.search(r"^Date: (.+)$", release, re.M)
    if not found:
        raise LockError("the archive's InRelease has no Date field")
    when = email.utils.parsedate_to_datetime(found[1].strip())
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y%m%dT%H%M%SZ")


def dates(root: Path, lines: Iterable[str]) -> list[tuple[str, str]]:
    """(pocket, date) of each source, from the InRelease apt fetched and verified."""
    out = []
    for line in lines:
        found = _SOURCE.match(line)
        assert found is not None  # _signed read it already
        path = root / "var/lib/apt/lists" / list_name(found["uri"], found["dist"], "InRelease")
        if not path.is_file():
            raise LockError(f"apt fetched no InRelease for {found['dist']} from {found['uri']} ({path.name} is missing)")
        out.append((found["dist"], snapshot_date(path.read_text(errors="replace"))))
    return out


def _release(root: Path, line: str) -> str:
    """The ``Version:`` of the InRelease of ``line``'s suite (Debian 12.12, Ubuntu 22.04)."""
    found = _SOURCE.match(line)
    assert found is not None
    path = root / "var/lib/apt/lists" / list_name(found["uri"], found["dist"], "InRelease")
    version = re.search(r"^Version: (\S+)$", path.read_text(errors="replace"), re.M) if path.is_file() else None
    return version[1] if version else ""


# -- single packages -----------------------------------------------------------------------------


def download(*, suite: str, package: str, cache: Path) -> tuple[Path, str]:
    """Download ``package``'s candidate .deb from ``suite`` (signature-checked lists, nothing
    installed) into ``cache``/debs; returns (the .deb, its version). A lagging mirror's expired
    lists are accepted: this fetches a tool, not a lock's packages."""
    apt = archive(suite, cache, expired_ok=True)
    shown = run(apt.conf, ["apt-cache", "policy", package])
    found = re.search(r"^\s+Candidate: (\S+)$", shown.stdout, re.M)
    if shown.returncode != 0 or not found or found[1] == "(none)":
        raise LockError(f"the {suite} archive has no {package}:\n{shown.stderr or shown.stdout}")
    dest = (cache / "debs").absolute()
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{package}_*.deb"):  # this folder is the toolkit's own
        old.unlink()
    proc = host.run(["apt-get", "download", f"{package}={found[1]}"], env={"APT_CONFIG": str(apt.conf), "LC_ALL": "C"},
                    cwd=dest, check=False, timeout=TIMEOUT)  # fmt: skip
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise LockError(f"apt-get download {package}={found[1]} from {suite} failed:\n{proc.stderr}")
    return debs[0], found[1]
