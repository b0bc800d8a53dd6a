"""Release tags: publish a run's images all at once at the end, and roll back.

Each image repository carries:
  id-<identity>      content tag, pushed when the image is built and verified (never moves)
  YYYYMMDD-GITSHA    the release of one run (FORCE_IMAGE_TAG replaces the name)
  latest             the current release
  prev               the release before it, for rollback
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import Manifest
from buildtool.core.errors import CommandError, EngineError, MissingToolError, UsageError
from buildtool.core.refs import repo_path

CURRENT = "latest"
PREVIOUS = "prev"


def git_sha(root: Path) -> str:
    try:
        sha = host.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=root).stdout.strip()
        dirty = host.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root).stdout.strip()
    except (CommandError, MissingToolError):
        return "nogit"
    return f"{sha}-dirty" if dirty else sha


def release_tag(root: Path, forced: str = "", today: dt.date | None = None) -> str:
    if forced:
        return forced
    today = today or dt.datetime.now(dt.UTC).date()
    return f"{today:%Y%m%d}-{git_sha(root)}"


@dataclass(frozen=True, kw_only=True)
class Move:
    repository: str
    tag: str
    digest: str


def publish(registry: Registry, org: str, images: Mapping[str, str], tag: str) -> list[Move]:
    """Point ``tag`` and ``latest`` at each image's digest; the old ``latest`` becomes ``prev``.

    ``images`` maps repository -> id tag. Every manifest is read before any tag moves, so a
    registry problem found while reading leaves all tags where they were.
    """
    staged: list[tuple[str, Manifest, Manifest | None]] = []
    for repo, id_tag in images.items():
        name = repo_path(org, repo)
        new = registry.manifest(name, id_tag)
        if new is None:
            raise EngineError(f"{name}:{id_tag} is not in the registry; nothing was published")
        staged.append((repo, new, registry.manifest(name, CURRENT)))
    moves: list[Move] = []
    for repo, new, current in staged:
        name = repo_path(org, repo)
        registry.put_manifest(name, tag, new)
        moves.append(Move(repository=repo, tag=tag, digest=new.digest))
        if current is not None and current.digest == new.digest:
            continue  # already the current release
        if current is not None:
            registry.put_manifest(name, PREVIOUS, current)
            moves.append(Move(repository=repo, tag=PREVIOUS, digest=current.digest))
        registry.put_manifest(name, CURRENT, new)
        moves.append(Move(repository=repo, tag=CURRENT, digest=new.digest))
    return moves


def rollback(registry: Registry, org: str, repositories: Iterable[str], target: str = "") -> list[Move]:
    """Re-point ``latest`` to ``prev`` (or to the release ``target``); the replaced release becomes ``prev``."""
    target_tag = target or PREVIOUS
    staged = []
    for repo in repositories:
        name = repo_path(org, repo)
        wanted = registry.manifest(name, target_tag)
        if wanted is None:
            raise UsageError(f"{name}:{target_tag} does not exist; nothing to roll back to (no tag was moved)")
        staged.append((repo, wanted, registry.manifest(name, CURRENT)))
    moves = []
    for repo, wanted, current in staged:
        name = repo_path(org, repo)
        registry.put_manifest(name, CURRENT, wanted)
        moves.append(Move(repository=repo, tag=CURRENT, digest=wanted.digest))
        if current is not None and current.digest != wanted.digest:
            registry.put_manifest(name, PREVIOUS, current)
            moves.append(Move(repository=repo, tag=PREVIOUS, digest=current.digest))
    return moves
