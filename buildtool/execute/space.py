"""Room on disk before a run builds anything.

The disks a build writes to (the engine's data root, the state dir, the local registry's storage)
each need ``min_free_gb`` free when the engine is first needed. Short of it on the engine's disk,
the run first frees what the toolkit made there and no longer needs (:func:`reclaim_local`, which
``prune`` runs too: its local images of other orgs, and the build cache of an engine it started);
still short, it refuses with :class:`DiskFull` before building, naming the disk and the fix,
instead of failing halfway with a full disk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Protocol

from buildtool.adapters import setup
from buildtool.adapters.content import is_loopback
from buildtool.adapters.files import existing, free_bytes
from buildtool.adapters.protocols import Engine
from buildtool.core.errors import DiskFull, ToolError
from buildtool.settings import Settings

log = logging.getLogger(__name__)
GB = 2**30


class Reclaimer(Protocol):
    """What of the engine freeing space uses (:class:`buildtool.adapters.engine.Docker`)."""

    def root_dir(self) -> Path: ...
    def prune_build_cache(self, keep: str) -> str: ...
    def remove_images(self, prefix: str, keep_org: str = "", *, current: Collection[str] | None = None) -> list[str]: ...


def device(path: Path) -> int:
    """The disk holding ``path`` (or that would hold it)."""
    return existing(path).stat().st_dev


def shortages(paths: Iterable[Path], floor: int) -> list[tuple[Path, int]]:
    """The paths (one per disk) with less than ``floor`` bytes free, with what is free there."""
    short, seen = [], set()
    for path in paths:
        if (disk := device(path)) not in seen:
            seen.add(disk)
            if (free := free_bytes(path)) < floor:
                short.append((path, free))
    return short


def reclaim_local(settings: Settings, docker: Reclaimer, *, keep: str, current: Collection[str] | None = None) -> list[str]:
    """Free what the toolkit made on this host and no longer needs: build cache beyond ``keep``
    when the toolkit started the engine, its labelled local images of other orgs and, given the
    ``current`` image references, earlier identities of its own org's (the registry holds what
    they are for). Returns what was done, a line each."""
    if setup.engine_is_ours():
        lines = [f"build cache: {docker.prune_build_cache(keep) or 'nothing to free'} (kept up to {keep})"]
    else:
        lines = ["build cache: left alone; this engine was not started by the toolkit, so its cache holds others' builds (`docker buildx prune`)"]
    removed = docker.remove_images(settings.registry, settings.org, current=current)
    own = sum(tag.startswith(f"{settings.registry}/{settings.org}/") for tag in removed)
    earlier = f"; earlier identities of {settings.org}'s: {own}" if own else ""
    lines.append(f"local images the toolkit built for other orgs: {len(removed) - own} removed{earlier}")
    return lines


def disks(settings: Settings, docker: Reclaimer) -> list[Path]:
    """The folders whose disks a build fills, the engine's data root first."""
    paths = [docker.root_dir(), settings.state_dir]
    if is_loopback(settings.registry):
        paths.append(settings.registry_storage)
    return paths


def ensure_space(settings: Settings, docker: Reclaimer) -> list[str]:
    """Make sure every disk a build fills has ``settings.min_free_gb`` free. Where the engine's
    disk is short, the toolkit's own leftovers there go first (build cache beyond its limit, then
    all of it); raise :class:`DiskFull` when some disk is still short. Returns what was freed, a
    line each (none when nothing was short)."""
    floor = settings.min_free_gb * GB
    paths = disks(settings, docker)
    if floor <= 0 or not (short := shortages(paths, floor)):
        return []
    lines: list[str] = []
    if any(device(path) == device(paths[0]) for path, _ in short):  # what the toolkit can free lies there
        lines = reclaim_local(settings, docker, keep=settings.build_cache_keep)
        if (short := shortages(paths, floor)) and setup.engine_is_ours():
            lines.append(f"build cache: {docker.prune_build_cache('') or 'nothing to free'} (all of it that no build holds)")
            short = shortages(paths, floor)
    for line in lines:
        log.warning("short of disk space, freed: %s", line)
    if short:
        where = "; ".join(f"{path}: {free / GB:.1f} GB free" for path, free in short)
        freed = f"The toolkit freed what it made and no longer needs ({'; '.join(lines)}). " if lines else ""
        raise DiskFull(
            f"not enough free disk to build ({where}; a build needs {settings.min_free_gb} GB free on each disk it writes to). {freed}"
            "Free space on that disk, or set FLEET_MIN_FREE_GB lower (0 turns this check off) if the images to build are small; nothing was built"
        )
    return lines


class EngineOnDemand:
    """The engine, brought up (and its client library imported) when a step first needs it, with
    room on its disks (:func:`ensure_space`): a run where every image is already in the
    registry starts no engine and imports neither. When it cannot be brought up, every step that
    needs it fails at once with the same reason, kept in ``refused``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.refused: ToolError | None = None

    def remove_containers(self, image: str = "") -> int:
        """Containers of a stopped run: none when the engine was never needed."""
        return self._engine.remove_containers(image) if self._engine is not None else 0

    def __getattr__(self, name: str) -> object:
        with self._lock:
            if self.refused is not None:
                raise self.refused
            if self._engine is None:
                from buildtool.adapters.engine import Docker

                try:
                    setup.ensure_engine(state_dir=self._settings.state_dir)
                    docker = Docker()
                    ensure_space(self._settings, docker)
                except ToolError as exc:
                    self.refused = exc
                    raise
                self._engine = docker
        return getattr(self._engine, name)
