"""Root filesystems from the Debian archive (mmdebstrap), for families with ``source = "bootstrap"``.

No public registry is needed. The tarball is cached by its inputs; with SOURCE_DATE_EPOCH fixed
and logs, caches and docs removed, the same inputs give the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from buildtool import cmd
from buildtool.engine import ensure_host_packages

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
# Files that differ between two runs of the same inputs.
CLEANUP = (
    "rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/* \"$1\"/var/log/* \"$1\"/var/cache/ldconfig/aux-cache "
    "\"$1\"/etc/machine-id \"$1\"/var/lib/dbus/machine-id \"$1\"/tmp/* && : > \"$1\"/etc/machine-id"
)
MIRROR = "http://deb.debian.org/debian"


def bootstrap_rootfs(*, suite: str, packages: list[str], out: Path, source_date_epoch: int, variant: str = "minbase") -> Path:
    """Write a root filesystem tarball of ``suite`` with ``packages`` to ``out`` (skipped when cached)."""
    inputs = hashlib.sha256(json.dumps([suite, sorted(packages), source_date_epoch, variant, DPKG_OPTS, CLEANUP, MIRROR]).encode()).hexdigest()
    stamp = out.with_name(out.name + ".inputs")
    if out.is_file() and stamp.is_file() and stamp.read_text() == inputs:
        return out
    ensure_host_packages(["mmdebstrap"])
    argv = ["mmdebstrap", f"--variant={variant}", "--mode=root", "--format=tar", "--quiet"]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_OPTS]
    argv += [f"--include={','.join(packages)}", f"--customize-hook={CLEANUP}", suite, str(out), MIRROR]
    log.info("bootstrapping %s with %s", suite, ", ".join(packages))
    cmd.run(argv, env={"SOURCE_DATE_EPOCH": str(source_date_epoch)}, timeout=1800)
    stamp.write_text(inputs)
    return out
