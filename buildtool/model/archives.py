"""Reading the apt archives of bootstrapped roots: fleet.toml's ``[archives.debian]`` and
``[archives.ubuntu]`` (defaults of every root of that distribution) and a root family's
``[root.archive]`` (its own values over them)."""

from __future__ import annotations

import dataclasses
from typing import Any

from buildtool.model.schema import ARCHIVE_SCHEMA, ARCHIVES_SCHEMA, Collector, check_source
from buildtool.model.types import Archive


def read_archive(c: Collector, file: str, key: str, data: Any, *, distribution: str) -> dict[str, str]:
    """The valid values of one archive table (keyring: a regular file in the repository)."""
    v = c.table(file, key, data, ARCHIVE_SCHEMA, "archive")
    if "keyring" in v and not check_source(c, file, f"{key}.keyring", v["keyring"], want_file=True):
        del v["keyring"]
    if "security" in v and distribution == "ubuntu":
        c.add(file, f"{key}.security", "Ubuntu serves its -security pocket from the archive itself; remove security (mirror covers every pocket)")
        del v["security"]
    return v


def read_archives(c: Collector, file: str, data: Any) -> tuple[tuple[str, Archive], ...]:
    """fleet.toml's [archives]: distribution -> its archive."""
    tables = c.table(file, "archives", data, ARCHIVES_SCHEMA, "archives")
    return tuple((d, Archive(**read_archive(c, file, f"archives.{d}", tables[d], distribution=d))) for d in sorted(tables))


def root_archive(c: Collector, file: str, data: Any, defaults: Archive, *, distribution: str) -> Archive:
    """A root family's archive: its [root.archive] values over the fleet's for its distribution.
    A family that names a snapshot time without a snapshot mirror keeps the fleet's mirror."""
    archive = dataclasses.replace(defaults, **read_archive(c, file, "root.archive", data, distribution=distribution))
    if archive.snapshot_mirror and not archive.snapshot:
        c.warn(file, "root.archive.snapshot_mirror", 'a snapshot archive without a snapshot time is not used; add snapshot = "YYYYMMDDTHHMMSSZ"')
    return archive
