"""Retention (blueprint risk R3): registry tags beyond the last releases go, with what only they held.

Per image repository the run keeps ``latest``, ``prev``, the newest ``keep`` release tags, the
release ``FORCE_IMAGE_TAG`` pins, and the identity tags of the current plan (images built but not
yet released); every manifest any of them points at stays, with the artifacts (SBOMs, scan
reports) attached to it. Every other manifest is deleted, and so are the tags on it. Build-cache
tags of images no longer in the plan go too. A garbage collection of the registry's storage then
frees the blobs nothing references; nothing ``latest`` or ``prev`` needs is touched. On ghcr.io,
which refuses the registry API's deletes, manifests are deleted as package versions through
GitHub's Packages API (:class:`PackageDeleter`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from buildtool.adapters.github import ContainerPackages, GitHubError
from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import INDEX_TYPES
from buildtool.core.refs import repo_path
from buildtool.model.schema import RELEASE_TAG_RE
from buildtool.publish.release import CURRENT, PREVIOUS

REFERRERS_RE = re.compile(r"sha256-[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class Retention:
    repository: str
    kept_tags: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # manifest digests deleted (with their tags)


def keep(tags: dict[str, str], *, releases: int, pinned: Iterable[str], current_ids: Iterable[str]) -> set[str]:
    """The tags to keep, given ``tags`` (tag -> digest) of one repository."""
    wanted = {CURRENT, PREVIOUS, *pinned, *current_ids}
    release_tags = sorted((t for t in tags if RELEASE_TAG_RE.fullmatch(t)), reverse=True)
    wanted |= set(release_tags[:releases])
    kept = {t for t in tags if t in wanted}
    digests = {tags[t] for t in kept}
    kept |= {t for t, d in tags.items() if d in digests}  # the id tag (and other names) of a kept image
    return kept


GHCR = "ghcr.io"
Delete = Callable[[str, str], object]  # (repository path, manifest digest): the manifest and every tag of it go


class PackageDeleter:
    """Deletes through GitHub's Packages API, where ghcr.io takes deletes (its registry API answers
    HTTP 405): each manifest is a version of the package named by the repository below the owner."""

    def __init__(self, packages: ContainerPackages) -> None:
        self.packages = packages
        self._versions: dict[str, dict[str, int]] = {}

    def __call__(self, repo: str, digest: str) -> bool:
        owner, _, package = repo.partition("/")
        if owner.lower() != self.packages.owner.lower():
            raise GitHubError(f"{repo} is not a package of {self.packages.owner}; nothing deleted")
        if package not in self._versions:
            self._versions[package] = self.packages.versions(package)
        version = self._versions[package].pop(digest, None)
        if version is None:
            return False
        self.packages.delete(package, version)
        return True


def prune_repository(registry: Registry, repo: str, *, releases: int, pinned: Iterable[str], current_ids: Iterable[str], dry_run: bool,
                     delete: Delete | None = None) -> Retention:  # fmt: skip
    names = [t for t in registry.tags(repo) if not REFERRERS_RE.fullmatch(t)]
    tags = {t: d for t in names if (d := registry.digest(repo, t))}
    kept = keep(tags, releases=releases, pinned=pinned, current_ids=current_ids)
    kept_digests = {tags[t] for t in kept}
    doomed = sorted({d for t, d in tags.items() if t not in kept and d not in kept_digests})
    for digest in doomed:
        if not dry_run:
            _delete_with_referrers(registry, repo, digest, delete or registry.delete)
    return Retention(repository=repo, kept_tags=sorted(kept), deleted=doomed)


def _delete_with_referrers(registry: Registry, repo: str, digest: str, delete: Delete) -> None:
    """Delete an image manifest, the artifacts attached to it and its referrers index tag."""
    for ref in registry.referrers(repo, digest):
        delete(repo, ref["digest"])
    index = registry.manifest(repo, digest.replace(":", "-", 1))
    if index is not None and index.media_type in INDEX_TYPES:
        delete(repo, index.digest)
    delete(repo, digest)


def prune_cache(registry: Registry, org: str, repositories: set[str], *, dry_run: bool, delete: Delete | None = None) -> Retention:
    """The build cache of images that are no longer planned."""
    repo = repo_path(org, "cache")
    tags = registry.tags(repo)
    stale = sorted(t for t in tags if t not in repositories)
    digests = {t: registry.digest(repo, t) for t in tags}
    keep_digests = {d for t, d in digests.items() if t not in stale}
    doomed = sorted({d for t in stale if (d := digests[t]) and d not in keep_digests})
    for digest in doomed:
        if not dry_run:
            (delete or registry.delete)(repo, digest)
    return Retention(repository=repo, kept_tags=sorted(set(tags) - set(stale)), deleted=doomed)
