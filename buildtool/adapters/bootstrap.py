"""Root filesystems from the Debian or Ubuntu archive (mmdebstrap), for ``source = "bootstrap"``.

No public registry is needed. Ubuntu suites serve the Pythons Debian does not ship (jammy: 3.10,
with Ubuntu's security updates); their archive key comes from Debian's ``ubuntu-keyring``.
The tarball is cached by its inputs (sidecar ``OUT.sha256``). With SOURCE_DATE_EPOCH fixed, docs,
logs and caches removed, and the host's resolv.conf and hostname left out, the same inputs and
the same archive content give the same tar bytes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.files import atomic_write
from buildtool.adapters.setup import DEFAULT_MIRROR, ensure_host_packages, host_mirror
from buildtool.core.hashing import sha256_json
from buildtool.model.types import UBUNTU_SUITES

log = logging.getLogger("buildtool.bootstrap")

# Keep images small: no man pages, docs (copyright files stay), locales or info pages.
DPKG_OPTS = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
]
# Removed after installation: files that differ between two runs or two hosts (mmdebstrap's own
# cleanup already drops apt lists and dpkg/apt logs; this makes sure of it), and the host's
# resolv.conf/hostname, which the engine mounts into every container anyway.
CLEANUP = (
    'cd "$1" && rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb '
    "var/log/dpkg.log var/log/alternatives.log var/log/apt/* var/cache/ldconfig/aux-cache "
    "var/lib/dpkg/*-old var/cache/debconf/*-old etc/resolv.conf etc/hostname "
    # No image needs setuid or setgid programs (su, mount, passwd...): services run as 10001.
    "&& find . -xdev -perm /6000 -type f -exec chmod ug-s {} +"
)
# Suites without -updates and -security archives.
ROLLING = {"sid", "unstable", "experimental"}
# Ubuntu suites (model.UBUNTU_SUITES): one archive serves every pocket; tini is in universe.
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
UBUNTU_KEYRING = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"


def sources(suite: str) -> list[str]:
    """apt source lines for ``suite`` (with its updates and security archives), on the host's mirrors."""
    if suite in UBUNTU_SUITES:
        return [f"deb {UBUNTU_MIRROR} {suite}{pocket} main universe" for pocket in ("", "-updates", "-security")]
    debian = host_mirror("debian") or DEFAULT_MIRROR
    lines = [f"deb {debian} {suite} main"]
    if suite not in ROLLING:
        security = host_mirror("debian-security") or "http://deb.debian.org/debian-security"
        lines += [f"deb {debian} {suite}-updates main", f"deb {security} {suite}-security main"]
    return lines


def mmdebstrap_argv(*, suite: str, packages: list[str], out: Path, variant: str) -> list[str]:
    """The mmdebstrap command line that writes the root filesystem tarball ``out``."""
    argv = ["mmdebstrap", f"--variant={variant}", "--mode=root", "--format=tar", "--quiet"]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_OPTS]
    if suite in UBUNTU_SUITES:
        argv.append(f"--keyring={UBUNTU_KEYRING}")
    argv += [f"--include={','.join(packages)}", f"--customize-hook={CLEANUP}"]
    return [*argv, suite, str(out), *sources(suite)]


def bootstrap_rootfs(*, suite: str, packages: list[str], out: Path, source_date_epoch: int, variant: str = "minbase") -> Path:
    """Write a root filesystem tarball of Debian or Ubuntu ``suite`` with ``packages`` to ``out``; return ``out``.

    Skipped when ``out`` exists and its sidecar ``out.sha256`` holds the digest of these inputs.
    """
    argv = mmdebstrap_argv(suite=suite, packages=sorted(packages), out=out, variant=variant)
    digest = sha256_json({"argv": argv, "source_date_epoch": source_date_epoch})
    sidecar = out.with_name(out.name + ".sha256")
    if out.is_file() and sidecar.is_file() and sidecar.read_text().strip() == digest:
        log.info("root filesystem %s is cached", out)
        return out
    ensure_host_packages(["mmdebstrap", "ubuntu-keyring"] if suite in UBUNTU_SUITES else ["mmdebstrap"])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.tar")
    log.info("bootstrapping %s with %s", suite, ", ".join(sorted(packages)))
    started = time.monotonic()
    argv = mmdebstrap_argv(suite=suite, packages=sorted(packages), out=partial, variant=variant)
    env = {"SOURCE_DATE_EPOCH": str(source_date_epoch)}
    host.run(host.as_root(argv, env), env=env, timeout=1800)  # --mode=root: through sudo for a CI runner's user
    if os.geteuid() != 0:  # the tarball is root's; the build context hard-links it
        host.run(host.as_root(["chown", f"{os.getuid()}:{os.getgid()}", str(partial)]))
    sidecar.unlink(missing_ok=True)
    partial.replace(out)
    atomic_write(sidecar, digest + "\n")
    log.info("root filesystem %s: %.0f MB in %.0fs", out, out.stat().st_size / 1e6, time.monotonic() - started)
    return out
