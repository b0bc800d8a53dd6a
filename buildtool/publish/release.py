"""Release tags: publish a run's images all at once at the end, and roll back.

Each image repository carries:
  id-<identity>      content tag, pushed when the image is built and verified (never moves)
  YYYYMMDD-GITSHA    the release of a commit (its commit date); immutable once written
  latest             the current release
  prev               the release before it, for rollback

A release tag names the commit, so every run of that commit (each CI job, a rerun) computes the
same one; a tree with uncommitted changes gets ``-dirty-<hash of the images>``. A release tag is
never moved: a run that would point one at another digest publishes nothing. FORCE_IMAGE_TAG
names a release that ``rollback`` (and deployment) points ``latest`` at; it never renames one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import Manifest, read_manifests
from buildtool.core.errors import CommandError, EngineError, MissingToolError, ReleaseError, UsageError
from buildtool.core.hashing import sha256, sha256_json
from buildtool.core.refs import repo_path
from buildtool.publish import record

CURRENT = "latest"
PREVIOUS = "prev"
# What latest may point at: one image (an SBOM, a referrers index or a signature may share its tags' namespace).
IMAGE_MANIFESTS = frozenset({"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"})
IMAGE_CONFIGS = frozenset({"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"})


@dataclass(frozen=True, kw_only=True)
class Revision:
    """The commit a run builds."""

    sha: str  # abbreviated, or "nogit"
    date: dt.date  # the commit's date (UTC)
    dirty: bool  # tracked files differ from the commit
    changes: str = ""  # a hash of those differences ("" when clean)
    full: str = ""  # the full commit hash
    committed: dt.datetime | None = None  # the commit's time (UTC)


def revision(root: Path) -> Revision:
    try:
        sha, full, stamp = host.run(["git", "log", "-1", "--format=%h %H %ct", "--abbrev=7"], cwd=root).stdout.split()
        diff = host.run(["git", "diff", "HEAD", "--binary"], cwd=root).stdout
    except (CommandError, MissingToolError, ValueError, OSError):
        return Revision(sha="nogit", date=dt.datetime.now(dt.UTC).date(), dirty=True)
    committed = dt.datetime.fromtimestamp(int(stamp), dt.UTC)
    return Revision(sha=sha, date=committed.date(), dirty=bool(diff), changes=sha256(diff)[:8] if diff else "", full=full, committed=committed)


def labels(rev: Revision) -> dict[str, str]:
    """The labels every image built from ``rev`` carries: the commit and its date, never the build's
    (two builds of one commit give one digest). A dirty tree adds the hash of its changes; without
    git there is no commit to name."""
    if rev.committed is None:
        return {}
    changes = f"-dirty-{rev.changes}" if rev.dirty else ""
    return {"org.opencontainers.image.revision": (rev.full or rev.sha) + changes, "fleet.commit-date": rev.committed.strftime("%Y-%m-%dT%H:%M:%SZ")}


def release_tag(rev: Revision, identities: Iterable[str]) -> str:
    """``YYYYMMDD-GITSHA`` of the commit. A dirty tree adds a hash of its changes (every job of one
    workspace agrees on it); without git, a hash of the images released."""
    tag = f"{rev.date:%Y%m%d}-{rev.sha}"
    if not rev.dirty:
        return tag
    return f"{tag}-dirty-{rev.changes or sha256_json(sorted(identities))[:8]}"


@dataclass(frozen=True, kw_only=True)
class Move:
    repository: str
    tag: str
    digest: str


def publish(registry: Registry, org: str, images: Mapping[str, str], tag: str) -> list[Move]:
    """Point ``tag`` and ``latest`` at each image's digest; the old ``latest`` becomes ``prev``.

    ``images`` maps repository -> id tag. Every manifest is read before any tag moves: a missing
    image, or a release tag ``tag`` that already points elsewhere, leaves all tags where they
    were. Just before ``latest`` moves it is read again; if another publish moved it meanwhile,
    this one stops there.
    """
    staged: list[tuple[str, Manifest, Manifest | None, Manifest | None]] = []
    clashes: list[str] = []
    read_manifests(registry, [(repo_path(org, repo), id_tag) for repo, id_tag in images.items()])  # a run has read them already
    news = {}
    for repo, id_tag in images.items():
        new = registry.manifest(repo_path(org, repo), id_tag)
        if new is None:
            raise EngineError(f"{repo_path(org, repo)}:{id_tag} is not in the registry; nothing was published")
        news[repo] = new.digest
    known, before = record.release(registry, org, tag), record.state(registry, org)
    if known is not None and before is not None and all(known.get(repo) == d and before.latest.get(repo) == d for repo, d in news.items()):
        return []  # the records show every image as this release and current: nothing moves
    read_manifests(registry, [(repo_path(org, repo), ref) for repo in images for ref in (tag, CURRENT)])
    for repo, id_tag in images.items():
        name = repo_path(org, repo)
        new = registry.manifest(name, id_tag)
        assert new is not None
        released = registry.manifest(name, tag)
        if released is not None and released.digest != new.digest:
            clashes.append(f"{name}:{tag} is {released.digest}, not {new.digest}")
        staged.append((repo, new, released, registry.manifest(name, CURRENT)))
    if clashes:
        lines = "\n".join(f"  - {c}" for c in clashes)
        raise ReleaseError(f"release tags are immutable and {tag} already names other images; nothing was published:\n{lines}")
    moves: list[Move] = []
    prev: dict[str, str] = {}  # what prev names after this publish, where it moved ("": a first release, none)
    for repo, new, released, current in staged:
        name = repo_path(org, repo)
        if released is None:
            registry.put_manifest(name, tag, new)
            moves.append(Move(repository=repo, tag=tag, digest=new.digest))
        if current is not None and current.digest == new.digest:
            continue  # already the current release
        if registry.digest(name, CURRENT, fresh=True) != (current.digest if current else None):
            raise ReleaseError(f"{name}:{CURRENT} was moved by another publish while this one ran; it stopped after {len(moves)} tag move(s)")
        if current is not None:
            registry.put_manifest(name, PREVIOUS, current)
            moves.append(Move(repository=repo, tag=PREVIOUS, digest=current.digest))
        prev[repo] = current.digest if current is not None else ""
        registry.put_manifest(name, CURRENT, new)
        moves.append(Move(repository=repo, tag=CURRENT, digest=new.digest))
    # Every tag has moved: the records say so (latest of every image of the release, moved or not).
    record.write_release(registry, org, tag, news, known)
    record.write_state(registry, org, before, news, prev, tag)
    return moves


def not_an_image(manifest: Manifest) -> str:
    """What ``manifest`` is when it is not one image's manifest (an index, an artifact such as an
    SBOM); "" for an image."""
    if manifest.media_type not in IMAGE_MANIFESTS:
        return f"a manifest of type {manifest.media_type[:100]!r}"
    try:
        data = manifest.data
        artifact, config = data.get("artifactType"), data["config"]["mediaType"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "an unreadable manifest"
    if artifact or config not in IMAGE_CONFIGS:
        return f"an artifact of type {str(artifact or config)[:100]!r}"
    return ""


def rollback(registry: Registry, org: str, repositories: Iterable[str], target: str = "") -> list[Move]:
    """Re-point ``latest`` to ``prev`` (or to the release ``target``); the replaced release becomes ``prev``."""
    target_tag = target or PREVIOUS
    staged = []
    for repo in repositories:
        name = repo_path(org, repo)
        wanted = registry.manifest(name, target_tag)
        if wanted is None:
            raise UsageError(f"{name}:{target_tag} does not exist; nothing to roll back to (no tag was moved)")
        if kind := not_an_image(wanted):
            raise UsageError(f"{name}:{target_tag} names {kind}, not an image; a rollback target is a release tag of an image (no tag was moved)")
        staged.append((repo, wanted, registry.manifest(name, CURRENT)))
    moves = []
    for repo, wanted, current in staged:
        name = repo_path(org, repo)
        registry.put_manifest(name, CURRENT, wanted)
        moves.append(Move(repository=repo, tag=CURRENT, digest=wanted.digest))
        if current is not None and current.digest != wanted.digest:
            registry.put_manifest(name, PREVIOUS, current)
            moves.append(Move(repository=repo, tag=PREVIOUS, digest=current.digest))
    # After a rollback the state is no one release's publish (release ""): no release's stacks describe it.
    record.write_state(registry, org, record.state(registry, org), {m.repository: m.digest for m in moves if m.tag == CURRENT},
                       {m.repository: m.digest for m in moves if m.tag == PREVIOUS}, "")  # fmt: skip
    return moves
