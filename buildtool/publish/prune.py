"""Retention (blueprint risk R3): registry tags beyond the last releases go, with what only they held.

Per image repository the run keeps ``latest``, ``prev``, the newest ``keep`` release tags, the
release ``FORCE_IMAGE_TAG`` pins, and the identity tags of the current plan (images built but not
yet released); every manifest any of them points at stays, with the artifacts (SBOMs, scan
reports) attached to it. Every other manifest is deleted, and so are the tags on it. Build-cache
tags of images no longer in the plan go too. A garbage collection of the registry's storage then
frees the blobs nothing references; nothing ``latest`` or ``prev`` needs is touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import INDEX_TYPES
from buildtool.core.refs import repo_path
from buildtool.publish.release import CURRENT, PREVIOUS

RELEASE_RE = re.compile(r"(?P<date>[0-9]{8})-[0-9a-f]{7,40}(-dirty-[0-9a-f]{8})?")
REFERRERS_RE = re.compile(r"sha256-[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class Retention:
    repository: str
    kept_tags: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # manifest digests deleted (with their tags)


def keep(tags: dict[str, str], *, releases: int, pinned: Iterable[str], current_ids: Iterable[str]) -> set[str]:
    """The tags to keep, given ``tags`` (tag -> digest) of one repository."""
    wanted = {CURRENT, PREVIOUS, *pinned, *current_ids}
    release_tags = sorted((t for t in tags if RELEASE_RE.fullmatch(t)), reverse=True)
    wanted |= set(release_tags[:releases])
    kept = {t for t in tags if t in wanted}
    digests = {tags[t] for t in kept}
    kept |= {t for t, d in tags.items() if d in digests}  # the id tag (and other names) of a kept image
    return kept


def prune_repository(registry: Registry, repo: str, *, releases: int, pinned: Iterable[str], current_ids: Iterable[str], dry_run: bool) -> Retention:
    names = [t for t in registry.tags(repo) if not REFERRERS_RE.fullmatch(t)]
    tags = {t: d for t in names if (d := registry.digest(repo, t))}
    kept = keep(tags, releases=releases, pinned=pinned, current_ids=current_ids)
    kept_digests = {tags[t] for t in kept}
    doomed = sorted({d for t, d in tags.items() if t not in kept and d not in kept_digests})
    for digest in doomed:
        if not dry_run:
            _delete_with_referrers(registry, repo, digest)
    return Retention(repository=repo, kept_tags=sorted(kept), deleted=doomed)


def _delete_with_referrers(registry: Registry, repo: str, digest: str) -> None:
    """Delete an image manifest, the artifacts attached to it and its referrers index tag."""
    for ref in registry.referrers(repo, digest):
        registry.delete(repo, ref["digest"])
    index = registry.manifest(repo, digest.replace(":", "-", 1))
    if index is not None and index.media_type in INDEX_TYPES:
        registry.delete(repo, index.digest)
    registry.delete(repo, digest)


def prune_cache(registry: Registry, org: str, repositories: set[str], *, dry_run: bool) -> Retention:
    """The build cache of images that are no longer planned."""
    repo = repo_path(org, "cache")
    tags = registry.tags(repo)
    stale = sorted(t for t in tags if t not in repositories)
    digests = {t: registry.digest(repo, t) for t in tags}
    keep_digests = {d for t, d in digests.items() if t not in stale}
    doomed = sorted({d for t in stale if (d := digests[t]) and d not in keep_digests})
    for digest in doomed:
        if not dry_run:
            registry.delete(repo, digest)
    return Retention(repository=repo, kept_tags=sorted(set(tags) - set(stale)), deleted=doomed)
