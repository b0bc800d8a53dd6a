"""Image references: where an image lives in a registry, the one place such strings are made."""

from __future__ import annotations

from dataclasses import dataclass, replace


def repo_path(org: str, repository: str) -> str:
    """``org/repository``: an image's name below the registry, as the distribution API uses it."""
    return f"{org}/{repository}"


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    """``registry/org/repository`` with a tag or a digest (or neither: the repository itself)."""

    registry: str  # host[:port]
    org: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def path(self) -> str:
        return repo_path(self.org, self.repository)

    @property
    def reference(self) -> str:
        """What follows ``/manifests/`` in the distribution API: the digest, else the tag."""
        return self.digest or self.tag

    def at(self, tag: str = "", digest: str = "") -> ImageRef:
        return replace(self, tag=tag, digest=digest)

    def __str__(self) -> str:
        name = f"{self.registry}/{self.path}"
        if self.digest:
            return f"{name}@{self.digest}"
        return f"{name}:{self.tag}" if self.tag else name


CACHE_REPOSITORY = "cache"  # the org's registry build cache: one tag per image
RELEASES_REPOSITORY = "releases"  # the org's release records (buildtool.publish.record)


def cache_ref(registry: str, org: str, repository: str) -> ImageRef:
    """The registry build cache of one image: ``REGISTRY/ORG/cache:REPOSITORY``."""
    return ImageRef(registry=registry, org=org, repository=CACHE_REPOSITORY, tag=repository)
