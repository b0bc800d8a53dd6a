"""Root filesystems from the Debian or Ubuntu archive (mmdebstrap), for ``source = "bootstrap"``.

No public registry is needed. Ubuntu suites serve the Pythons Debian does not ship (jammy: 3.10,
with Ubuntu's security updates); their archive key is shipped with the toolkit (``keys/``).

A root family has two roots, both from its OS lock:

* the **runtime** root: minbase plus the family's packages, then every package outside their
  dependency closure is purged with dpkg (apt, dpkg, perl, debconf, login, ...), and the venv
  is made without pip. The dpkg status database stays, so scanners see what is there.
* the **builder** root: minbase plus the packages, ``builder_packages`` (pip) and apt, untouched.
  Builder stages start from it; it is never deployed.

Every package is installed at its locked version (apt preferences for the essential phase,
``name=version`` requests for apt's errors), and a hook compares what dpkg installed with the
lock. The tarball is cached by its inputs (sidecar ``OUT.sha256``). With SOURCE_DATE_EPOCH fixed,
logs and caches removed and the host's resolv.conf and hostname left out, the same lock gives
the same tar bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.files import atomic_write
from buildtool.adapters.setup import DEFAULT_MIRROR, ensure_host_packages, host_mirror
from buildtool.core import dpkg
from buildtool.core.errors import BuildError, CommandError, LockError
from buildtool.core.hashing import sha256, sha256_json
from buildtool.model.types import UBUNTU_SUITES, Archive

log = logging.getLogger("buildtool.bootstrap")

VARIANTS = ("runtime", "builder")
# Keep images small: no man pages, docs (copyright files stay), locales or info pages.
DPKG_OPTS = [opt for folder, kept in dpkg.DOCS for opt in (f"path-exclude={folder}/*", *([f"path-include={kept}"] if kept else []))]
# Removed after installation: files that differ between two runs or two hosts, the lock's apt
# preferences, and the host's resolv.conf/hostname (the engine mounts its own into containers).
CLEANUP = (
    'cd "$1" && rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb '
    "var/log/dpkg.log var/log/alternatives.log var/log/apt/* var/cache/ldconfig/aux-cache "
    "var/lib/dpkg/*-old var/cache/debconf/*-old etc/resolv.conf etc/hostname etc/apt/preferences.d/buildtool-lock "
    # No image needs setuid or setgid programs (su, mount, passwd...): services run as 10001.
    "&& find . -xdev -perm /6000 -type f -exec chmod ug-s {} +"
)
# Debian: /bin, /lib... are links into /usr from the start, so usrmerge (and the perl it needs) is not installed.
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
# Suites without -updates and -security archives.
ROLLING = {"sid", "unstable", "experimental"}
# Ubuntu suites (model.UBUNTU_SUITES): one archive serves every pocket; tini is in universe.
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
# Ubuntu's archive keys (2012 and 2018; jammy is signed by 871920D1991BC93C), shipped with the toolkit
# rather than taken from the host: bookworm 12.15 no longer carries the ubuntu-keyring package.
# From ubuntu-keyring 2023.11.28.1-0.2_all.deb of Debian sid (sha256 b2e7ed48...b81174), checked
# against the package index signed by Debian's archive key.
UBUNTU_KEYRING = str(Path(__file__).with_name("keys") / "ubuntu-archive-keyring.gpg")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
# The snapshot archives: every state of Debian's and Ubuntu's archives, by time.
DEBIAN_SNAPSHOTS = "https://snapshot.debian.org"
UBUNTU_SNAPSHOTS = "https://snapshot.ubuntu.com"
NO_ARCHIVE = Archive()
# Where a root's own archive keyring is kept inside it, so that apt in its builder stages trusts it.
ROOT_KEYRING = "etc/apt/trusted.gpg.d/fleet-archive.gpg"
UNSERVED = re.compile(r"^E: Version '(?P<version>[^']+)' for '(?P<package>[^']+)' was not found$", re.M)
UNKNOWN = re.compile(r"^E: Unable to locate package (?P<package>\S+)$", re.M)


def sources(suite: str, archive: Archive = NO_ARCHIVE) -> list[str]:
    """apt source lines for ``suite`` with its updates and security pockets: from ``archive``'s
    snapshot time (snapshot.debian.org's or snapshot.ubuntu.com's URL layout), else its mirrors,
    else the host's mirrors and the distributions' own. Values come validated from the model."""
    ubuntu = suite in UBUNTU_SUITES
    if archive.snapshot:
        base = archive.snapshot_mirror or (UBUNTU_SNAPSHOTS if ubuntu else DEBIAN_SNAPSHOTS)
        main = f"{base}/ubuntu/{archive.snapshot}" if ubuntu else f"{base}/archive/debian/{archive.snapshot}"
        security = main if ubuntu else f"{base}/archive/debian-security/{archive.snapshot}"
    elif ubuntu:
        main = security = archive.mirror or UBUNTU_MIRROR
    else:
        main = archive.mirror or host_mirror("debian") or DEFAULT_MIRROR
        security = archive.security or host_mirror("debian-security") or DEFAULT_SECURITY
    if ubuntu:
        return [f"deb {main if pocket != '-security' else security} {suite}{pocket} main universe" for pocket in ("", "-updates", "-security")]
    lines = [f"deb {main} {suite} main"]
    if suite not in ROLLING:
        lines += [f"deb {main} {suite}-updates main", f"deb {security} {suite}-security main"]
    return lines


def keyring(suite: str, archive: Archive, root: Path) -> Path:
    """The keyring that signs ``archive``: its own (a file of the repository at ``root``), else the distribution's."""
    if archive.keyring:
        return root / archive.keyring
    return Path(UBUNTU_KEYRING if suite in UBUNTU_SUITES else DEBIAN_KEYRING)


def includes(suite: str, variant: str, packages: Sequence[str], builder_packages: Sequence[str]) -> list[str]:
    """The packages a root of ``variant`` asks for on top of minbase (what its lock section resolves)."""
    if variant == "runtime":
        return sorted(set(packages))
    # Children install their OS packages in the builder root with apt (Ubuntu's minbase has none).
    return sorted({*packages, *builder_packages, "apt"})


def merged_usr(suite: str) -> bool:
    return suite not in UBUNTU_SUITES


def _hook(name: str) -> str:
    return str(resources.files("buildtool.adapters") / "hooks" / name)


def mmdebstrap_argv(
    *,
    suite: str,
    variant: str,
    packages: Sequence[str],
    keep: Sequence[str],
    pins: Path | None,
    prefs: Path | None,
    out: Path,
    archive: Archive = NO_ARCHIVE,
    keyring: Path | None = None,
) -> list[str]:
    """The mmdebstrap command line that writes the ``variant`` root of ``suite`` to ``out``.

    ``packages`` are the includes (``name=version`` when locked); ``keep`` the runtime root's
    packages whose closure stays; ``pins``/``prefs`` the lock as dpkg.py check and apt read them;
    ``archive`` where the packages come from, signed by ``keyring`` when it has its own (copied
    into the root, so apt in the builder stages trusts it too).
    """
    q = shlex.quote
    dpkg_py = q(dpkg.__file__)
    # Not --quiet: it hides apt's own errors (a missing key, a version the archive no longer serves).
    argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar"]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_OPTS]
    if archive.snapshot:  # a snapshot's Release files are past their Valid-Until by design; kept for the builder stages' apt
        argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
    if keyring is not None and archive.keyring:  # mmdebstrap's apt reads --keyring; apt in the root later, the copy
        argv += ["--skip=check/signed-by", f"--keyring={keyring}",
                 f'--setup-hook=mkdir -p "$1/{os.path.dirname(ROOT_KEYRING)}" && cp {q(str(keyring))} "$1/{ROOT_KEYRING}"']  # fmt: skip
    elif suite in UBUNTU_SUITES:
        argv.append(f"--keyring={keyring or UBUNTU_KEYRING}")
    if merged_usr(suite):
        argv.append(f"--hook-dir={MERGED_USR_HOOKS}")
    if prefs is not None:
        argv.append(f'--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && cp {q(str(prefs))} "$1/etc/apt/preferences.d/buildtool-lock"')
    argv.append(f"--include={','.join(packages)}")
    if pins is not None:
        argv.append(f'--customize-hook={q(sys.executable)} {dpkg_py} check "$1/var/lib/dpkg/status" {q(str(pins))}')
    argv.append(f'--customize-hook=sh {q(_hook("venv-user.sh"))} "$1"' + (" --with-pip" if variant == "builder" else ""))
    if variant == "runtime":
        strip = f'sh {q(_hook("runtime-strip.sh"))} "$1" {q(sys.executable)} {dpkg_py} ' + " ".join(q(k) for k in sorted(keep))
        argv += [f"--customize-hook={strip}", "--skip=cleanup/apt"]
    argv.append(f"--customize-hook={CLEANUP}")
    return [*argv, suite, str(out), *sources(suite, archive)]


def _preferences(pins: Mapping[str, str]) -> str:
    """apt preferences holding every package at its locked version, in both of mmdebstrap's phases."""
    return "".join(f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n\n" for name, version in sorted(pins.items()))


def _host_tools() -> str:
    """Versions of the host programs that shape the tarball (mmdebstrap, and dpkg for the runtime's purge)."""
    try:
        return host.run(["dpkg-query", "-W", "-f=${Package} ${Version}\n", "mmdebstrap", "dpkg"]).stdout.strip()
    except CommandError:
        return ""


def bootstrap_rootfs(
    *,
    suite: str,
    variant: str,
    packages: Sequence[str],
    builder_packages: Sequence[str] = (),
    pins: Mapping[str, str] | None,
    out: Path,
    source_date_epoch: int,
    archive: Archive = NO_ARCHIVE,
    keyring: Path | None = None,
) -> Path:
    """Write the ``variant`` root of ``suite`` to ``out``; return ``out``.

    ``pins`` is the lock section of this root (every package it installs, name -> version);
    ``None`` installs the archive's current versions (tests of the bootstrap itself). ``archive``
    and ``keyring``: where from (:func:`sources`, :func:`keyring`). Skipped when ``out`` exists
    and its sidecar ``out.sha256`` holds the digest of these inputs.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown root variant {variant!r}")
    wanted = includes(suite, variant, packages, builder_packages)
    requested = [f"{n}={v}" for n, v in sorted(pins.items())] if pins else wanted
    ensure_host_packages(["mmdebstrap"])
    hooks = {name: (resources.files("buildtool.adapters") / "hooks" / name).read_bytes() for name in ("venv-user.sh", "runtime-strip.sh")}
    spec = {
        "suite": suite,
        "variant": variant,
        "requested": requested,
        "keep": sorted(packages),
        "sources": sources(suite, archive),
        **({"keyring": sha256(keyring.read_bytes())} if keyring is not None and archive.keyring else {}),
        "dpkg_opts": DPKG_OPTS,
        "cleanup": CLEANUP,
        "hooks": {name: sha256(data) for name, data in hooks.items()},
        "dpkg.py": sha256(Path(dpkg.__file__).read_bytes()),
        "source_date_epoch": source_date_epoch,
        "host": _host_tools(),
        # A tarball is kept only after this check (a cache from before it is bootstrapped again).
        "checked": "every file time <= source_date_epoch",
    }
    digest = sha256_json(spec)
    sidecar = out.with_name(out.name + ".sha256")
    if out.is_file() and sidecar.is_file() and sidecar.read_text().strip() == digest:
        log.info("root filesystem %s is cached", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.tar")
    pins_path = prefs_path = None
    if pins:
        pins_path = out.with_name(out.name + ".pins")
        prefs_path = out.with_name(out.name + ".prefs")
        atomic_write(pins_path, dpkg_pins(pins))
        atomic_write(prefs_path, _preferences(pins))
    log.info("bootstrapping the %s root of %s: %s", variant, suite, ", ".join(wanted))
    started = time.monotonic()
    env = {"SOURCE_DATE_EPOCH": str(source_date_epoch)}
    own = keyring if keyring is not None and archive.keyring else None
    with _readable(own or (Path(UBUNTU_KEYRING) if suite in UBUNTU_SUITES else None)) as key:
        argv = mmdebstrap_argv(suite=suite, variant=variant, packages=requested, keep=packages, pins=pins_path, prefs=prefs_path, out=partial,
                               archive=archive, keyring=key)  # fmt: skip
        try:
            host.run(host.as_root(argv, env), env=env, timeout=1800)  # --mode=root: through sudo for a CI runner's user
        except CommandError as exc:
            raise _explain(exc, suite) from exc
    if os.geteuid() != 0:  # the tarball is root's; the build context hard-links it
        host.run(host.as_root(["chown", f"{os.getuid()}:{os.getgid()}", str(partial)]))
    late = unclamped(partial, source_date_epoch)
    if late:  # roots are exported without a timestamp rewrite (their layers are these tarballs)
        partial.unlink()
        raise BuildError(f"the {variant} root of {suite} has files newer than SOURCE_DATE_EPOCH {source_date_epoch} "
                         f"(mmdebstrap did not clamp them): {', '.join(late[:5])}")  # fmt: skip
    sidecar.unlink(missing_ok=True)
    partial.replace(out)
    atomic_write(sidecar, digest + "\n")
    log.info("root filesystem %s: %.0f MB in %.0fs", out, out.stat().st_size / 1e6, time.monotonic() - started)
    return out


@contextlib.contextmanager
def _readable(keyring: Path | None) -> Iterator[Path | None]:
    """A copy of ``keyring`` that apt's download sandbox (user _apt) can read, wherever the
    repository is (a home folder is not); removed afterwards."""
    if keyring is None:
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="fleet-archive-", suffix=".gpg", dir="/tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(keyring.read_bytes())
        os.chmod(name, 0o644)
        yield Path(name)
    finally:
        os.unlink(name)


def unclamped(tarball: Path, epoch: int) -> list[str]:
    """Members of ``tarball`` whose modification time is after ``epoch``."""
    with tarfile.open(tarball) as tar:
        return [member.name for member in tar if member.mtime > epoch]


def dpkg_pins(pins: Mapping[str, str]) -> str:
    return "".join(f"{name}={version}\n" for name, version in sorted(pins.items()))


def unserved(text: str) -> list[tuple[str, str]]:
    """(package, version) of each locked version apt says the archive does not serve."""
    return sorted({(m["package"], m["version"]) for m in UNSERVED.finditer(text)})


def relock_hint(packages: Sequence[str]) -> str:
    """The explicit command that moves these packages' pins (relocking is never automatic)."""
    return "`nox -s lock -- " + " ".join(f"--upgrade-package {p}" for p in packages) + "` (or `nox -s lock -- --upgrade` to move every pin)"


def _explain(exc: CommandError, suite: str) -> Exception:
    """A locked version the archive no longer serves, or a drift from the lock: name it and the relock."""
    gone = unserved(exc.stderr)
    if gone:
        listed = ", ".join(f"{p} {v}" for p, v in gone)
        return LockError(f"the {suite} archive no longer serves the locked {listed}; relock explicitly with {relock_hint([p for p, _ in gone])}")
    unknown = [m["package"] for m in UNKNOWN.finditer(exc.stderr)]
    if unknown:
        return LockError(f"the {suite} archive has no package {', '.join(unknown)}; check the package names in families/, then `nox -s lock`")
    if "the installed packages are not the locked ones" in exc.stderr:
        lines = [line.strip() for line in exc.stderr.splitlines() if " is installed" in line or " is locked" in line]
        return LockError(f"the {suite} root installed other packages than its lock says:\n  " + "\n  ".join(lines) + "\nrelock with `nox -s lock -- --upgrade`")
    return exc
