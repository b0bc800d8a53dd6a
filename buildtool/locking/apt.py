"""Exact Debian and Ubuntu package sets, resolved by the host's apt.

apt runs with a configuration of its own for each archive (:mod:`buildtool.locking.aptsource`),
and a dpkg status and preferences written for each resolution; nothing of the host's apt setup
is read. So the answer is the one apt gives inside the root, without making the root:

* :func:`resolve_root` repeats mmdebstrap's minbase steps: the essential phase (with the
  merged-usr hook's usr-is-merged), then Priority:required and the includes on top of it;
* :func:`resolve_added` runs ``apt-get install --no-install-recommends`` on a dpkg status made
  of the archive's stanzas of the base's exact versions.

Pins are apt preferences at priority 1001 (the pinned version is the candidate, for dependencies
too) plus ``name=version`` for the packages asked for. Every pinned version is looked up in the
archive first: apt ignores a preference for a version it does not know, silently.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters.bootstrap import NO_ARCHIVE
from buildtool.core.errors import LockError, UnservedVersion
from buildtool.locking import aptsource
from buildtool.locking.aptsource import AptArchive
from buildtool.model.types import UBUNTU_SUITES, Archive

log = logging.getLogger("buildtool.apt")

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
@dataclass(frozen=True, kw_only=True)
class Resolution:
    """``packages``: (name, version) as ``dpkg-query -W -f '${Package} ${Version}'`` prints them,
    sorted by name. ``archives``: (pocket, date of its signed InRelease as ``YYYYMMDDTHHMMSSZ``),
    in the order of the apt sources. ``apt``: the version of the host's apt that resolved it."""

    packages: tuple[tuple[str, str], ...]
    archives: tuple[tuple[str, str], ...]
    apt: str


def resolve_root(
    *,
    suite: str,
    include: Sequence[str],
    merged_usr: bool,
    pins: Mapping[str, str] | None = None,
    cache: Path,
    source: Archive = NO_ARCHIVE,
    keyring: Path | None = None,
) -> Resolution:
    """Exactly the packages ``mmdebstrap --variant=minbase --include=<include>`` installs.

    ``merged_usr``: with mmdebstrap's merged-usr hook (Debian suites get usr-is-merged instead of
    usrmerge and perl); Ubuntu suites have no usr-is-merged to install and ignore it. ``source``
    and ``keyring``: the archive (default: the distribution's) and the keyring that signs it.
    """
    pins = dict(pins or {})
    archive = aptsource.archive(suite, cache, source, keyring)
    _served(archive, pins.items())
    merged = merged_usr and suite not in UBUNTU_SUITES
    fill = {"suite": suite, "arch": archive.arch}
    wanted = [ESSENTIAL.format(**fill)] + ([_request("usr-is-merged", pins)] if merged else [])
    first, _ = _simulate(archive, PLACEHOLDER if merged else "", wanted, pins)
    installed = {name: new for name, (_, new) in first.items()}
    stanzas = _served(archive, installed.items())
    second, removed = _simulate(archive, status(stanzas.values()), [REQUIRED.format(**fill), *(_request(n, pins) for n in include)], pins)
    installed |= {name: new for name, (_, new) in second.items()}
    for name in removed:
        installed.pop(name, None)
    return _resolution(archive, installed, pins)


def resolve_added(
    *,
    suite: str,
    base: Mapping[str, str],
    install: Sequence[str],
    pins: Mapping[str, str] | None = None,
    cache: Path,
    source: Archive = NO_ARCHIVE,
    keyring: Path | None = None,
) -> Resolution:
    """Exactly the packages ``apt-get install --no-install-recommends <install>`` adds to a root
    whose installed packages are ``base`` (name -> version): the new ones, with their versions.

    The root's dpkg status is made of the archive's stanzas of ``base``; a base version the
    archive no longer serves is an :class:`UnservedVersion`, like a pin. Installing may not
    change or remove a base package (the child would change what its parent installed).
    """
    pins = dict(pins or {})
    archive = aptsource.archive(suite, cache, source, keyring)
    stanzas = _served(archive, [*base.items(), *pins.items()])
    installed = status(stanzas[(name, version)] for name, version in sorted(base.items()))
    changes, removed = _simulate(archive, installed, [_request(n, pins) for n in install], pins)
    changed = [f"change {name} {old} to {new}" for name, (old, new) in sorted(changes.items()) if old is not None]
    changed += [f"remove {name}" for name in removed]
    if changed:
        raise LockError(f"installing {' '.join(install)} on the {suite} base would {', '.join(changed)}; relock the base so both come from one archive state")
    return _resolution(archive, {name: new for name, (_, new) in changes.items()}, pins)


def unserved(*, suite: str, pins: Mapping[str, str], cache: Path, source: Archive = NO_ARCHIVE, keyring: Path | None = None) -> list[tuple[str, str]]:
    """(name, version) of each of ``pins`` the archive no longer serves, from its indexes."""
    try:
        _served(aptsource.archive(suite, cache, source, keyring), pins.items())
    except UnservedVersion as exc:
        return exc.packages
    return []


def stanzas(*, suite: str, pins: Mapping[str, str], cache: Path, source: Archive = NO_ARCHIVE, keyring: Path | None = None) -> tuple[str, list[str]]:
    """The suite's release number and the archive's stanza of each of ``pins`` (UnservedVersion
    names those it lacks): what a dpkg status of these packages holds."""
    archive = aptsource.archive(suite, cache, source, keyring)
    found = _served(archive, pins.items())
    return archive.release, [found[pair] for pair in sorted(pins.items())]


def pockets(
    *, suite: str, packages: Iterable[tuple[str, str]], cache: Path, source: Archive = NO_ARCHIVE, keyring: Path | None = None
) -> dict[tuple[str, str], str]:
    """(name, version) -> the pockets serving it (``bookworm-security``; several joined by ", ")."""
    packages = sorted(set(packages))
    if not packages:
        return {}
    archive = aptsource.archive(suite, cache, source, keyring)
    proc = aptsource.run(archive.conf, ["apt-cache", "madison", *sorted({name for name, _ in packages})])
    found: dict[tuple[str, str], list[str]] = {}
    for line in proc.stdout.splitlines():  # " curl | 7.88.1-10+deb12u14 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and len(where := parts[2].split()) >= 2:
            seen = found.setdefault((parts[0], parts[1]), [])
            if (pocket := where[1].split("/", 1)[0]) not in seen:
                seen.append(pocket)
    return {pair: ", ".join(sorted(found[pair])) for pair in packages if pair in found}


# -- resolving -----------------------------------------------------------------------------------


def _request(name: str, pins: Mapping[str, str]) -> str:
    return f"{name}={pins[name]}" if name in pins else name


def _served(archive: AptArchive, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The archive's stanza of each (name, version); :class:`UnservedVersion` names every one it lacks."""
    wanted = sorted(set(wanted))
    if not wanted:
        return {}
    proc = aptsource.run(archive.conf, ["apt-cache", "show", *(f"{n}={v}" for n, v in wanted)])
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


def status(stanzas: Iterable[str]) -> str:
    """A dpkg status file holding these archive stanzas as installed packages."""
    return "".join(re.sub(r"^(Package: \S+\n)", r"\1Status: install ok installed\n", raw, count=1) + "\n\n" for raw in stanzas)


def _preferences(pins: Mapping[str, str]) -> str:
    return "".join(f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n\n" for name, version in sorted(pins.items()))


def _simulate(archive: AptArchive, status: str, wanted: Sequence[str], pins: Mapping[str, str]) -> tuple[dict[str, tuple[str | None, str]], list[str]]:
    """``apt-get -s install wanted`` on a root whose dpkg status is ``status``: name -> (installed
    version or None, version apt installs), and the names apt removes."""
    with tempfile.TemporaryDirectory(dir=archive.root, prefix="run-") as tmp:
        folder = Path(tmp)
        (folder / "status").write_text(status)
        (folder / "preferences").write_text(_preferences(pins))
        conf = folder / "apt.conf"
        conf.write_text(aptsource.config(archive.root, archive.arch, status=folder / "status", preferences=folder / "preferences"))
        proc = aptsource.run(conf, ["apt-get", "-s", "-q", "--no-install-recommends", "install", *wanted])
    if proc.returncode != 0:
        raise _failure(archive.suite, proc)
    changes = {m["package"]: (m["old"], m["version"]) for m in _INST.finditer(proc.stdout)}
    return changes, sorted(m["package"] for m in _REMV.finditer(proc.stdout))


def _failure(suite: str, proc: aptsource.Output) -> LockError:
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


def _resolution(archive: AptArchive, installed: Mapping[str, str], pins: Mapping[str, str]) -> Resolution:
    drifted = [f"{name} {version} (pinned: {pins[name]})" for name, version in sorted(installed.items()) if pins.get(name, version) != version]
    if drifted:
        raise LockError(f"apt chose other versions than the pinned ones in the {archive.suite} archive: {', '.join(drifted)}")
    return Resolution(packages=tuple(sorted(installed.items())), archives=archive.dates, apt=archive.apt)


