"""Reproducibility: build the same plan twice from scratch and compare the digests.

Each run has a fresh state dir (root filesystems bootstrapped again), its own organisation in
the registry (no image or registry cache to reuse) and no BuildKit cache (``--no-cache``: every
step runs again). Only downloads are shared, checked by their hashes (pip's and apt's cache
mounts). Where two digests differ, the first differing layer is fetched from both runs and
compared member by member, so the report names the file that changed and how.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from buildtool import pipeline
from buildtool.adapters.files import owned_dir
from buildtool.adapters.protocols import Registry
from buildtool.core.refs import repo_path
from buildtool.execute.executor import Progress, Result
from buildtool.model.types import Fleet
from buildtool.plan.plan import Plan
from buildtool.publish.release import revision
from buildtool.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Comparison:
    repository: str
    first: str
    second: str
    difference: str = ""  # where the two differ ("" when identical)

    @property
    def same(self) -> bool:
        return self.first == self.second


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> tuple[object, ...]:
    data = tar.extractfile(info)
    digest = hashlib.sha256(data.read()).hexdigest()[:16] if data else ""
    return (info.type, oct(info.mode), info.uid, info.gid, int(info.mtime), info.size, info.linkname, digest)


FIELDS = ("type", "mode", "uid", "gid", "mtime", "size", "link target", "content sha256")


def first_difference(one: bytes, two: bytes) -> str:
    """The first member (in path order) where two layer tarballs (gzip or plain) differ, and how."""
    raws = [gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob for blob in (one, two)]
    with tarfile.open(fileobj=io.BytesIO(raws[0])) as first, tarfile.open(fileobj=io.BytesIO(raws[1])) as second:
        return _first_member_difference(first, second)


def _first_member_difference(*tars: tarfile.TarFile) -> str:
    members = [{m.name: m for m in tar.getmembers()} for tar in tars]
    for name in sorted(set(members[0]) | set(members[1])):
        if name not in members[0] or name not in members[1]:
            return f"{name}: only in the {'second' if name not in members[0] else 'first'} build"
        a, b = (_member(tar, m[name]) for tar, m in zip(tars, members, strict=True))
        if a != b:
            fields = [f"{f} {x} != {y}" for f, x, y in zip(FIELDS, a, b, strict=True) if x != y]
            return f"{name}: {', '.join(fields)}"
    return "the same members: the archives differ in order or padding"


def explain(registry: Registry, repo_one: str, repo_two: str, digest_one: str, digest_two: str) -> str:
    """Where two image manifests differ: the config, or the first differing layer and its first differing file."""
    one, two = registry.manifest(repo_one, digest_one), registry.manifest(repo_two, digest_two)
    if one is None or two is None:
        return "a manifest is missing from the registry"
    layers_one, layers_two = one.data.get("layers", []), two.data.get("layers", [])
    for index, (a, b) in enumerate(zip(layers_one, layers_two, strict=False)):
        if a["digest"] != b["digest"]:
            blob_one, blob_two = registry.blob(repo_one, a["digest"]), registry.blob(repo_two, b["digest"])
            where = first_difference(blob_one, blob_two) if blob_one and blob_two else "a layer blob is missing"
            return f"layer {index + 1} of {len(layers_one)} ({a['digest'][:19]} != {b['digest'][:19]}): {where}"
    if len(layers_one) != len(layers_two):
        return f"{len(layers_one)} layers != {len(layers_two)} layers"
    configs = [registry.blob(repo, m.data["config"]["digest"]) for repo, m in ((repo_one, one), (repo_two, two))]
    where = config_difference(*(json.loads(c) if c else {} for c in configs))
    return f"the layers are identical; the image config differs: {where}"


def config_difference(one: object, two: object, path: str = "config") -> str:
    """The first path (in key order) where two image configs differ, with both values."""
    if isinstance(one, dict) and isinstance(two, dict):
        for key in sorted(set(one) | set(two)):
            if one.get(key) != two.get(key):
                return config_difference(one.get(key), two.get(key), f"{path}.{key}")
    if isinstance(one, list) and isinstance(two, list) and len(one) == len(two):
        for index, (a, b) in enumerate(zip(one, two, strict=True)):
            if a != b:
                return config_difference(a, b, f"{path}[{index}]")
    return f"{path}: {json.dumps(one)[:120]} != {json.dumps(two)[:120]}"


def run_twice(
    settings: Settings,
    fleet: Fleet,
    plan: Plan,
    *,
    progress: Progress,
    registry: Registry | None = None,
    remove_local: Callable[..., object] | None = None,
    **build: object,
) -> list[Comparison]:
    """Build ``plan`` twice from nothing (see the module doc) and compare every image and builder
    root. Both runs' images then go from the registry and, through ``remove_local`` (by default,
    with the run's own registry, the engine's ``remove_images``), from this host."""
    pipeline.prepare_state(settings)
    commit = revision(settings.root)  # one source for both builds, even while the tree is edited
    runs: list[tuple[str, dict[str, Result]]] = []
    for name in ("first", "second"):
        state = owned_dir(settings.state_dir / "repro" / name, repo=settings.root, what="repro state dir", clear=True)
        org = f"{settings.org}-repro-{os.getpid()}-{name}"
        run_settings = dataclasses.replace(settings, state_dir=state, org=org, cache=False, scan=False)
        done = pipeline.build(run_settings, fleet, plan, progress=progress, registry=registry, publish_tags=False, commit=commit, **build)
        runs.append((org, {r.key: r for r in done.results}))
    client = registry or pipeline.bring_up(settings, engine=False)
    if remove_local is None and registry is None:
        from buildtool.adapters.engine import Docker

        remove_local = Docker().remove_images
    (org_one, one), (org_two, two) = runs
    out = []
    for step in plan.steps:
        pairs = [(step.repository, one[step.key].digest, two[step.key].digest)]
        if step.root is not None:
            pairs.append((step.builder_repository, one[step.key].builder, two[step.key].builder))
        for repository, first, second in pairs:
            difference = ""
            if first != second:
                difference = explain(client, repo_path(org_one, repository), repo_path(org_two, repository), first, second)
            out.append(Comparison(repository=repository, first=first, second=second, difference=difference))
    for org, results in runs:  # the toolkit pushed these; nothing else lives in a run's organisation
        for step in plan.steps:
            result = results[step.key]
            client.delete(repo_path(org, step.repository), result.digest)
            if result.builder:
                client.delete(repo_path(org, step.builder_repository), result.builder)
        if remove_local is not None:
            remove_local(settings.registry, only_org=org)
    return out
