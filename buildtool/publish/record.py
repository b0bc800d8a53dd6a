"""Release records: what a publish wrote, read back by a whole run in a few requests.

``ORG/releases`` holds small OCI artifacts, one JSON blob each:

  <release tag>  the release: each repository published under it, and its digest
  latest         the org's state: each repository's ``latest`` and ``prev`` digests, and the
                 release that set it ("" after a rollback to prev)
  <tag>.stacks   the release's compose stacks, one file per machine (buildtool.deploy.stacks)

Publish and rollback write them once every tag of theirs has moved (a run that fails moves no
tag and writes no record). A publish whose images the records show as that release and as
current moves nothing and reads no image's release tags: its release reads are shared by all its
images. Without records (an org published before them, a record another tool broke), it reads
every image's tags, as it always did, and writes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import EMPTY_CONFIG, artifact_manifest
from buildtool.core.refs import RELEASES_REPOSITORY, repo_path
from buildtool.model.schema import IMAGE_TAG_RE

RECORD_TYPE = "application/vnd.fleet.release.v1+json"
STATE = "latest"  # the tag of the org's state record
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")


@dataclass(frozen=True)
class State:
    """Each repository's ``latest`` and ``prev`` digests, as the last publish or rollback left them
    (prev "": the repository has none; a repository missing from prev: not known here)."""

    latest: dict[str, str] = field(default_factory=dict)
    prev: dict[str, str] = field(default_factory=dict)
    release: str = ""  # the release whose publish set latest ("": a rollback, or a record from before releases were kept)


def _digests(data: object, *, none: bool = False) -> dict[str, str] | None:
    """A record's repository → digest map, fully checked (``none``: "" may stand for no image);
    None when it is anything else."""
    def ok(v: object) -> bool:
        return isinstance(v, str) and (bool(DIGEST.fullmatch(v)) or (none and v == ""))

    if not isinstance(data, dict) or not all(isinstance(k, str) and NAME.fullmatch(k) and ok(v) for k, v in data.items()):
        return None
    return dict(data)


def _read(registry: Registry, org: str, tag: str) -> dict | None:
    name = repo_path(org, RELEASES_REPOSITORY)
    manifest = registry.manifest(name, tag)
    if manifest is None:
        return None
    try:
        data = manifest.data
        layer = data["layers"][0] if data.get("artifactType") == RECORD_TYPE else None
        blob = registry.blob(name, layer["digest"]) if layer else None
        record = json.loads(blob) if blob else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == 1 else None


def release(registry: Registry, org: str, tag: str) -> dict[str, str] | None:
    """The images the release ``tag`` holds (repository → digest), or None without its record."""
    record = _read(registry, org, tag)
    return _digests(record.get("images")) if record else None


def state(registry: Registry, org: str) -> State | None:
    """The org's state record, or None without one."""
    record = _read(registry, org, STATE)
    if not record:
        return None
    latest, prev = _digests(record.get("latest")), _digests(record.get("prev"), none=True)
    release = record.get("release", "")
    if not isinstance(release, str) or (release and not IMAGE_TAG_RE.fullmatch(release)):
        return None
    return State(latest, prev, release) if latest is not None and prev is not None else None


def _write(registry: Registry, org: str, tag: str, record: Mapping[str, object]) -> None:
    name = repo_path(org, RELEASES_REPOSITORY)
    data = json.dumps({"schema": 1, **record}, sort_keys=True, indent=1).encode()
    registry.push_blob(name, EMPTY_CONFIG)
    layer = {"mediaType": RECORD_TYPE, "digest": registry.push_blob(name, data), "size": len(data)}
    registry.put_manifest(name, tag, artifact_manifest(RECORD_TYPE, layer))


def write_release(registry: Registry, org: str, tag: str, images: Mapping[str, str], known: Mapping[str, str] | None) -> None:
    """Record the release ``tag``: what it held before (``known``) and ``images``."""
    merged = {**(known or {}), **images}
    if merged != known:
        _write(registry, org, tag, {"kind": "release", "tag": tag, "images": dict(sorted(merged.items()))})


def write_state(registry: Registry, org: str, before: State | None, latest: Mapping[str, str], prev: Mapping[str, str], release: str) -> None:
    """Record the org's state: ``before`` with the repositories whose tags this run moved, set by ``release``."""
    old = before or State()
    new = State({**old.latest, **latest}, {**old.prev, **prev}, release)
    if new != old:
        _write(registry, org, STATE, {"kind": "state", "latest": dict(sorted(new.latest.items())), "prev": dict(sorted(new.prev.items())),
                                      "release": release})  # fmt: skip
