"""Exact Debian and Ubuntu package sets, resolved by the host's apt.

apt runs as the current user with a configuration of its own under ``cache``: the bootstrap's
sources with their archive keyrings (apt checks the InRelease signatures), its own lists and
caches, and a dpkg status and preferences written for each resolution; nothing of the host's apt
setup is read. So the answer is the one apt gives inside the root, without making the root:

* :func:`resolve_root` repeats mmdebstrap's minbase steps: the essential phase (with the
  merged-usr hook's usr-is-merged), then Priority:required and the includes on top of it;
* :func:`resolve_added` runs ``apt-get install --no-install-recommends`` on a dpkg status made
  of the archive's stanzas of the base's exact versions.

Pins are apt preferences at priority 1001 (the pinned version is the candidate, for dependencies
too) plus ``name=version`` for the packages asked for. Every pinned version is looked up in the
archive first: apt ignores a preference for a version it does not know, silently.
"""

from __future__ import annotations

import email.utils
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import NamedTuple

from buildtool.adapters import host
from buildtool.adapters.bootstrap import UBUNTU_KEYRING, sources
from buildtool.adapters.setup import ensure_host_packages
from buildtool.core.errors import LockError, MissingToolError, UnservedVersion
from buildtool.model.types import UBUNTU_SUITES

log = logging.getLogger("buildtool.apt")

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
TIMEOUT = 900.0
APT_HELP = (
    "apt-get is not installed: Debian and Ubuntu package versions are resolved by the host's apt. "
    "Run this on a Debian or Ubuntu host (or in a container of one), or install your distribution's apt and gpgv packages"
)
# mmdebstrap's package selections for --variant=minbase: what SUITE itself (not its -updates or
# -security pockets) marks Essential:yes, then Priority:required; apt installs their candidates.
_IN_SUITE = "?or(?archive(^{suite}$),?codename(^{suite}$)),?architecture({arch})"
ESSENTIAL = "?narrow(" + _IN_SUITE + ",?essential)"
REQUIRED = "?narrow(" + _IN_SUITE + ",?and(?priority(required),?not(?essential)))"
# The merged-usr setup hook installs this placeholder before the essential phase, so that
# init-system-helpers' "usrmerge | usr-is-merged" never pulls usrmerge (and perl); its essential
# hook then installs the archive's usr-is-merged over it.
PLACEHOLDER = (
    "Package: usr-is-merged\nStatus: install ok installed\nPriority: optional\nSection: oldlibs\n"
    "Architecture: all\nMulti-Arch: foreign\nVersion: 1\nDescription: placeholder of the merged-usr hook\n\n"
)

_INST = re.compile(r"^Inst (?P<package>\S+) (?:\[(?P<old>[^\]]+)\] )?\((?P<version>\S+) ", re.M)
_REMV = re.compile(r"^Remv (?P<package>\S+)", re.M)
_UNSERVED = re.compile(r"^E: Version '(?P<version>[^']+)' for '(?P<package>[^']+)' was not found$", re.M)
_UNKNOWN = re.compile(r"^E: Unable to locate package (?P<package>\S+)$", re.M)
_SOURCE = re.compile(r"^deb\s+(?:\[(?P<options>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<dist>\S+)(?P<rest>.*)$")
# Characters apt escapes in the names of its list files (apt-pkg's URItoFileName).
_QUOTED = set('\\|{}[]<>"^~_=!@#$%^&*')

# (apt folder, its sources) updated by this process: the lists are fetched once per run. The lock
# keeps two threads from updating one folder at once (apt would refuse the second).
_updated: set[tuple[Path, str]] = set()
_updating = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """``packages``: (name, version) as ``dpkg-query -W -f '${Package} ${Version}'`` prints them,
    sorted by name. ``archives``: (pocket, date of its signed InRelease as ``YYYYMMDDTHHMMSSZ``),
    in the order of the apt sources. ``apt``: the version of the host's apt that resolved it."""

    packages: tuple[tuple[str, str], ...]
    archives: tuple[tuple[str, str], ...]
    apt: str


@dataclass(frozen=True, kw_only=True)
class _Archive:
    suite: str
    root: Path  # apt's Dir: sources, lists, caches
    arch: str
    apt: str
    dates: tuple[tuple[str, str], ...]

    @property
    def conf(self) -> Path:
        """The configuration with an empty dpkg status: updates and lookups."""
        return self.root / "apt.conf"


def resolve_root(*, suite: str, include: Sequence[str], merged_usr: bool, pins: Mapping[str, str] | None = None, cache: Path) -> Resolution:
    """Exactly the packages ``mmdebstrap --variant=minbase --include=<include>`` installs.

    ``merged_usr``: with mmdebstrap's merged-usr hook (Debian suites get usr-is-merged instead of
    usrmerge and perl); Ubuntu suites have no usr-is-merged to install and ignore it.
    """
    pins = dict(pins or {})
    archive = _archive(suite, cache)
    _served(archive, pins.items())
    merged = merged_usr and suite not in UBUNTU_SUITES
    fill = {"suite": suite, "arch": archive.arch}
    wanted = [ESSENTIAL.format(**fill)] + ([_request("usr-is-merged", pins)] if merged else [])
    first, _ = _simulate(archive, PLACEHOLDER if merged else "", wanted, pins)
    installed = {name: new for name, (_, new) in first.items()}
    stanzas = _served(archive, installed.items())
    second, removed = _simulate(archive, _status(stanzas.values()), [REQUIRED.format(**fill), *(_request(n, pins) for n in include)], pins)
    installed |= {name: new for name, (_, new) in second.items()}
    for name in removed:
        installed.pop(name, None)
    return _resolution(archive, installed, pins)


def resolve_added(*, suite: str, base: Mapping[str, str], install: Sequence[str], pins: Mapping[str, str] | None = None, cache: Path) -> Resolution:
    """Exactly the packages ``apt-get install --no-install-recommends <install>`` adds to a root
    whose installed packages are ``base`` (name -> version): the new ones, with their versions.

    The root's dpkg status is made of the archive's stanzas of ``base``; a base version the
    archive no longer serves is an :class:`UnservedVersion`, like a pin. Installing may not
    change or remove a base package (the child would change what its parent installed).
    """
    pins = dict(pins or {})
    archive = _archive(suite, cache)
    stanzas = _served(archive, [*base.items(), *pins.items()])
    status = _status(stanzas[(name, version)] for name, version in sorted(base.items()))
    changes, removed = _simulate(archive, status, [_request(n, pins) for n in install], pins)
    changed = [f"change {name} {old} to {new}" for name, (old, new) in sorted(changes.items()) if old is not None]
    changed += [f"remove {name}" for name in removed]
    if changed:
        raise LockError(f"installing {' '.join(install)} on the {suite} base would {', '.join(changed)}; relock the base so both come from one archive state")
    return _resolution(archive, {name: new for name, (_, new) in changes.items()}, pins)


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


def _config(root: Path, arch: str, *, status: Path, preferences: Path | None) -> str:
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


def _keyring(suite: str) -> str:
    path, package = (UBUNTU_KEYRING, "ubuntu-keyring") if suite in UBUNTU_SUITES else (DEBIAN_KEYRING, "debian-archive-keyring")
    if not Path(path).is_file():
        ensure_host_packages([package])
    if not Path(path).is_file():
        raise MissingToolError(f"{path} is missing: install the {package} package")
    return path


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


def _archive(suite: str, cache: Path, *, expired_ok: bool = False) -> _Archive:
    """The private apt for ``suite`` under ``cache``, its lists fetched (once per process).
    ``expired_ok``: accept signed lists past their Valid-Until (a mirror that lags behind)."""
    version, arch = host_apt()
    keyring = _keyring(suite)
    root = (cache / suite).absolute()
    folders = ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial")
    for sub in (*folders, "var/lib/dpkg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [_signed(line, keyring) for line in sources(suite)]
    listing = "".join(line + "\n" for line in lines)
    _write(root / "etc/apt/sources.list", listing)
    _write(root / "var/lib/dpkg/status", "")
    _write(root / "apt.conf", _config(root, arch, status=root / "var/lib/dpkg/status", preferences=None))
    with _updating:
        if (root, listing) not in _updated:
            _update(root, suite, expired_ok=expired_ok)
            _updated.add((root, listing))
    return _Archive(suite=suite, root=root, arch=arch, apt=version, dates=tuple(_dates(root, lines)))


def _update(root: Path, suite: str, *, expired_ok: bool = False) -> None:
    started = time.monotonic()
    options = ["-o", "Acquire::Check-Valid-Until=false"] if expired_ok else []
    proc = _run(root / "apt.conf", ["apt-get", "-q", *options, "update"])
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "W:"))]
    if proc.returncode != 0 or any(p.startswith("E:") for p in problems):
        raise LockError(f"apt-get update of the {suite} archive failed:\n  " + "\n  ".join(problems or [f"exit code {proc.returncode}"]))
    log.info("apt lists of %s updated in %.1fs", suite, time.monotonic() - started)


class _Output(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def _run(conf: Path, argv: list[str]) -> _Output:
    # LC_ALL=C: apt's messages are matched in English.
    proc = host.run(argv, env={"APT_CONFIG": str(conf), "LC_ALL": "C"}, check=False, timeout=TIMEOUT)
    return _Output(proc.returncode, proc.stdout or "", proc.stderr or "")


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


def _dates(root: Path, lines: Iterable[str]) -> list[tuple[str, str]]:
    """(pocket, date) of each source, from the InRelease apt fetched and verified."""
    dates = []
    for line in lines:
        found = _SOURCE.match(line)
        assert found is not None  # _signed read it already
        path = root / "var/lib/apt/lists" / list_name(found["uri"], found["dist"], "InRelease")
        if not path.is_file():
            raise LockError(f"apt fetched no InRelease for {found['dist']} from {found['uri']} ({path.name} is missing)")
        dates.append((found["dist"], snapshot_date(path.read_text(errors="replace"))))
    return dates


# -- resolving -----------------------------------------------------------------------------------


def _request(name: str, pins: Mapping[str, str]) -> str:
    return f"{name}={pins[name]}" if name in pins else name


def _served(archive: _Archive, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The archive's stanza of each (name, version); :class:`UnservedVersion` names every one it lacks."""
    wanted = sorted(set(wanted))
    if not wanted:
        return {}
    proc = _run(archive.conf, ["apt-cache", "show", *(f"{n}={v}" for n, v in wanted)])
    # apt-cache skips unknown versions silently and fails only when it found none at all.
    if proc.returncode != 0 and "E: No packages found" not in proc.stderr:
        raise _failure(archive.suite, proc)
    found: dict[tuple[str, str], str] = {}
    for raw in re.split(r"\n\s*\n", proc.stdout):
        fields = dict(re.findall(r"^(Package|Version): (\S+)$", raw, re.M))
        if "Package" in fields and "Version" in fields:
            found.setdefault((fields["Package"], fields["Version"]), raw.strip("\n"))
    missing = [pair for pair in wanted if pair not in found]
    if missing:
        raise UnservedVersion(missing, archive.suite)
    return found


def _status(stanzas: Iterable[str]) -> str:
    """A dpkg status file holding these archive stanzas as installed packages."""
    return "".join(re.sub(r"^(Package: \S+\n)", r"\1Status: install ok installed\n", raw, count=1) + "\n\n" for raw in stanzas)


def _preferences(pins: Mapping[str, str]) -> str:
    return "".join(f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n\n" for name, version in sorted(pins.items()))


def _simulate(archive: _Archive, status: str, wanted: Sequence[str], pins: Mapping[str, str]) -> tuple[dict[str, tuple[str | None, str]], list[str]]:
    """``apt-get -s install wanted`` on a root whose dpkg status is ``status``: name -> (installed
    version or None, version apt installs), and the names apt removes."""
    with tempfile.TemporaryDirectory(dir=archive.root, prefix="run-") as tmp:
        folder = Path(tmp)
        (folder / "status").write_text(status)
        (folder / "preferences").write_text(_preferences(pins))
        conf = folder / "apt.conf"
        conf.write_text(_config(archive.root, archive.arch, status=folder / "status", preferences=folder / "preferences"))
        proc = _run(conf, ["apt-get", "-s", "-q", "--no-install-recommends", "install", *wanted])
    if proc.returncode != 0:
        raise _failure(archive.suite, proc)
    changes = {m["package"]: (m["old"], m["version"]) for m in _INST.finditer(proc.stdout)}
    return changes, sorted(m["package"] for m in _REMV.finditer(proc.stdout))


def _failure(suite: str, proc: _Output) -> LockError:
    """apt's refusal as the user should read it: unknown names first (fix the family), then
    versions gone from the archive (relock), else apt's own explanation and errors."""
    gone = UnservedVersion([(m["package"], m["version"]) for m in _UNSERVED.finditer(proc.stderr)], suite)
    unknown = [m["package"] for m in _UNKNOWN.finditer(proc.stderr) if not m["package"].startswith("?")]
    if unknown:
        problems = [f"{name} is not in the archive of {suite}; check the package name" for name in unknown]
        return LockError("; ".join(problems + ([str(gone)] if gone.packages else [])))
    if gone.packages:
        return gone
    # Unmet dependencies and the providers of a virtual package are printed on stdout.
    detail = [line.rstrip() for line in proc.stdout.splitlines() if line.startswith((" ", "Package ", "The following packages have unmet"))]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("E:")] or [f"exit code {proc.returncode}"]
    return LockError(f"apt cannot resolve the {suite} packages:\n  " + "\n  ".join(detail + errors))


def _resolution(archive: _Archive, installed: Mapping[str, str], pins: Mapping[str, str]) -> Resolution:
    drifted = [f"{name} {version} (pinned: {pins[name]})" for name, version in sorted(installed.items()) if pins.get(name, version) != version]
    if drifted:
        raise LockError(f"apt chose other versions than the pinned ones in the {archive.suite} archive: {', '.join(drifted)}")
    return Resolution(packages=tuple(sorted(installed.items())), archives=archive.dates, apt=archive.apt)


# -- single packages -----------------------------------------------------------------------------


def download(*, suite: str, package: str, cache: Path) -> tuple[Path, str]:
    """Download ``package``'s candidate .deb from ``suite`` (signature-checked lists, nothing
    installed) into ``cache``/debs; returns (the .deb, its version). A lagging mirror's expired
    lists are accepted: this fetches a tool, not a lock's packages."""
    archive = _archive(suite, cache, expired_ok=True)
    shown = _run(archive.conf, ["apt-cache", "policy", package])
    found = re.search(r"^\s+Candidate: (\S+)$", shown.stdout, re.M)
    if shown.returncode != 0 or not found or found[1] == "(none)":
        raise LockError(f"the {suite} archive has no {package}:\n{shown.stderr or shown.stdout}")
    dest = (cache / "debs").absolute()
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{package}_*.deb"):  # this folder is the toolkit's own
        old.unlink()
    proc = host.run(["apt-get", "download", f"{package}={found[1]}"], env={"APT_CONFIG": str(archive.conf), "LC_ALL": "C"},
                    cwd=dest, check=False, timeout=TIMEOUT)  # fmt: skip
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise LockError(f"apt-get download {package}={found[1]} from {suite} failed:\n{proc.stderr}")
    return debs[0], found[1]
