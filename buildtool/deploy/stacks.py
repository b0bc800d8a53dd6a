"""A release's compose stacks in the registry, beside its images and records.

A publish that moved tags renders each machine's stack with the org's digests after it (every
service of the machine must have a published image; a machine that lacks one gets no stack, and
the run says which) and stores them as one OCI artifact, ``ORG/releases:<release>.stacks``: one
JSON layer per machine, titled ``MACHINE/compose.json``. ``compose`` and ``deploy`` read them back
from there, so a stack is always the one its release was published with, whatever the fleet files
say today, and accept only what the toolkit writes (:func:`buildtool.deploy.compose.check`): images
by digest in the run's registry and org, every service hardened. They write it as YAML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from buildtool.adapters.files import atomic_write, owned_dir
from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import EMPTY_CONFIG, artifact_manifest
from buildtool.core.errors import ReleaseError, UsageError
from buildtool.core.refs import RELEASES_REPOSITORY, repo_path
from buildtool.deploy import compose
from buildtool.model.schema import IMAGE_TAG_RE, NAME_RE
from buildtool.model.types import Fleet
from buildtool.publish import record

STACKS_TYPE = "application/vnd.fleet.stacks.v1"
LAYER_TYPE = "application/vnd.fleet.compose.v1+json"
TITLE = "org.opencontainers.image.title"
FILE_RE = re.compile(rf"({NAME_RE.pattern})/compose\.json")
MAX_STACK = 1 << 20  # one machine's compose file: about 1 KB per service


SUFFIX = ".stacks"


def stacks_tag(release: str) -> str:
    """Where ``release``'s stacks are: ``<release>.stacks`` (UsageError for what is not a release tag that leaves room for it)."""
    if not IMAGE_TAG_RE.fullmatch(release + SUFFIX):
        raise UsageError(f"{release[:130]!r} is not a release tag; give one as publish writes it: YYYYMMDD-GITSHA")
    return release + SUFFIX


def render_all(fleet: Fleet, *, registry: str, org: str, digests: Mapping[str, str], release: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Each machine's stack; and the machines that get none, with why."""
    files: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for machine in fleet.machines:
        if not compose.on_machine_names(fleet, machine):
            skipped[machine] = "no service runs there"
            continue
        try:
            files[machine] = compose.stack(fleet, machine, registry=registry, org=org, digests=digests, release=release)
        except ReleaseError as exc:
            skipped[machine] = str(exc)
    return files, skipped


def store(registry: Registry, fleet: Fleet, *, address: str, org: str, release: str) -> list[str]:
    """Render and store ``release``'s stacks from the org's state; notes on what was left out."""
    state = record.state(registry, org)
    if state is None or state.release != release or not IMAGE_TAG_RE.fullmatch(release + SUFFIX):
        return [f"no compose stacks stored for {release}: the org's release record does not show it as current"]
    files, skipped = render_all(fleet, registry=address, org=org, digests=state.latest, release=release)
    notes = [f"no compose stack for {m}: {why}" for m, why in sorted(skipped.items())]
    if not files:
        return notes
    name, tag = repo_path(org, RELEASES_REPOSITORY), stacks_tag(release)
    registry.push_blob(name, EMPTY_CONFIG)
    layers = []
    for machine, stack in sorted(files.items()):
        data = json.dumps(stack, indent=1).encode()
        layers.append({"mediaType": LAYER_TYPE, "digest": registry.push_blob(name, data), "size": len(data),
                       "annotations": {TITLE: f"{machine}/compose.json"}})  # fmt: skip
    registry.put_manifest(name, tag, artifact_manifest(STACKS_TYPE, *layers))
    return [*notes, f"compose stacks of {', '.join(sorted(files))} stored as {name}:{tag}"]


def current_release(registry: Registry, org: str) -> str:
    """The release the org's state was published by; UsageError when none is."""
    state = record.state(registry, org)
    if state is None or not state.release:
        why = "has no release record" if state is None else "was last changed by a rollback, which no one release's stacks describe"
        raise UsageError(f"the org {org} {why}; name the release: --release YYYYMMDD-GITSHA")
    return state.release


def fetch(registry: Registry, org: str, release: str, *, address: str) -> dict[str, str]:
    """``release``'s stacks by machine as compose files, read from the registry and checked: only
    what the toolkit writes, with images in ``address``/``org``."""
    tag = stacks_tag(release)
    name = repo_path(org, RELEASES_REPOSITORY)
    manifest = registry.manifest(name, tag)
    if manifest is None:
        raise ReleaseError(f"{name}:{tag} does not exist: release {release} was published without compose stacks (or not at all)")
    try:
        data = manifest.data
        layers = data["layers"] if data.get("artifactType") == STACKS_TYPE else None
        entries = [(layer["annotations"][TITLE], layer["digest"], layer["size"]) for layer in layers or []]
    except (ValueError, KeyError, TypeError):
        entries = []
    if not entries:
        raise ReleaseError(f"{name}:{tag} is not a stacks artifact of this toolkit; nothing was written")
    stacks: dict[str, str] = {}
    for title, digest, size in entries:
        match = FILE_RE.fullmatch(title) if isinstance(title, str) else None
        if match is None or not isinstance(size, int) or size > MAX_STACK:
            raise ReleaseError(f"{name}:{tag} holds an entry {str(title)[:80]!r} that is not MACHINE/compose.json of at most 1 MB")
        blob = registry.blob(name, digest)
        if blob is None:
            raise ReleaseError(f"{name}@{digest} ({title}) is missing from the registry")
        machine = match.group(1)
        try:
            data = json.loads(blob)
        except ValueError as exc:
            raise ReleaseError(f"{title} of {release} is not JSON") from exc
        stacks[machine] = compose.as_yaml(compose.check(data, registry=address, org=org, machine=machine), machine, release)
    return stacks


def write(dest: Path, stacks: Mapping[str, str], *, repo: Path | None = None) -> list[Path]:
    """Write each stack to ``dest/MACHINE/compose.yaml`` (folders the toolkit owns)."""
    out = owned_dir(dest, repo=repo, what="compose stacks folder")
    written = []
    for machine, text in sorted(stacks.items()):
        path = owned_dir(out / machine, what=f"compose stack folder of {machine}") / "compose.yaml"
        atomic_write(path, text)
        written.append(path)
    return written
