"""Retention against a real registry: latest, prev and their blobs stay pullable; the rest is freed."""

from __future__ import annotations

import pytest

from buildtool.adapters.registry import Registry
from buildtool.adapters.setup import collect_garbage
from buildtool.publish.prune import prune_cache, prune_repository
from buildtool.publish.release import publish
from tests.engine.helpers import small_manifest
from tests.token_registry import plain_registry

pytestmark = pytest.mark.engine


def size(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_prune_keeps_latest_prev_and_their_blobs_and_frees_the_rest(tmp_path) -> None:
    with plain_registry(tmp_path) as address:
        registry = Registry(address)
        images = []
        for i, sha in enumerate(("aaaaaaa", "bbbbbbb", "ccccccc", "ddddddd"), 1):
            m = small_manifest(registry, "fleet/app", f"layer {i} ".encode() * 50_000)
            registry.put_manifest("fleet/app", f"id-{i}", m)
            publish(registry, "fleet", {"app": f"id-{i}"}, f"2026110{i}-{sha}")
            images.append(m)
        registry.attach("fleet/app", images[0], artifact_type="application/vnd.cyclonedx+json", data=b'{"components": []}')
        registry.put_manifest("fleet/cache", "app", small_manifest(registry, "fleet/cache", b"cache of app"))
        registry.put_manifest("fleet/cache", "gone", small_manifest(registry, "fleet/cache", b"cache of a retired image"))
        before = size(tmp_path / "data")

        kept = prune_repository(registry, "fleet/app", releases=1, pinned=[], current_ids=["id-2"], dry_run=False)
        prune_cache(registry, "fleet", {"app"}, dry_run=False)
        assert "collected" in collect_garbage(address)

        fresh = Registry(address)
        assert kept.deleted == [images[0].digest]  # 20261101: not latest, prev, the newest release or the current build
        expected = {"latest": images[3], "prev": images[2], "20261104-ddddddd": images[3], "20261103-ccccccc": images[2], "id-2": images[1]}
        for tag, m in expected.items():
            assert fresh.digest("fleet/app", tag) == m.digest, tag
            for layer in m.data["layers"]:
                assert fresh.blob("fleet/app", layer["digest"]) is not None  # still pullable
        assert fresh.digest("fleet/app", "20261101-aaaaaaa") is None and fresh.digest("fleet/app", "id-1") is None
        assert fresh.blob("fleet/app", images[0].data["layers"][0]["digest"]) is None  # freed by the collection
        assert fresh.referrers("fleet/app", images[0].digest) == []  # its SBOM went with it
        assert fresh.digest("fleet/cache", "gone") is None and fresh.digest("fleet/cache", "app")
        assert size(tmp_path / "data") < before
