"""Release records: a no-op publish reads two records for the whole run, not each image's tags;
a rollback or a broken record sends it back to reading every tag."""

from __future__ import annotations

import json

import pytest

from buildtool.core.errors import ConfigError
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from buildtool.publish import record
from buildtool.publish.release import publish, rollback
from buildtool.report import sizes
from tests.fakes import FakeRegistry

IMAGES = {f"img-{i}": f"id-{i}" for i in range(20)}


def _fleet(registry: FakeRegistry, content: str = "one") -> None:
    for repo, id_tag in IMAGES.items():
        registry.add(f"fleet/{repo}", id_tag, f"{repo}-{content}")


def test_a_no_op_publish_reads_the_two_records_and_no_tag_of_any_image() -> None:
    registry = FakeRegistry()
    _fleet(registry)
    first = publish(registry, "fleet", IMAGES, "r1")
    assert len(first) == 2 * len(IMAGES)  # r1 and latest of each
    assert record.state(registry, "fleet").prev == {repo: "" for repo in IMAGES}  # a first release: no prev, and the records know it
    assert record.release(registry, "fleet", "r1") == {repo: registry.digest(f"fleet/{repo}", "latest") for repo in IMAGES}
    registry.reads = []
    assert publish(registry, "fleet", IMAGES, "r1") == []
    # The id tags (a run's lookup has read them already: the client keeps them) and the two records.
    assert set(registry.reads) == {(f"fleet/{repo}", id_tag) for repo, id_tag in IMAGES.items()} | {("fleet/releases", "r1"), ("fleet/releases", "latest")}


def test_a_rollback_updates_the_state_so_the_next_publish_moves_latest_back() -> None:
    registry = FakeRegistry()
    _fleet(registry)
    publish(registry, "fleet", IMAGES, "r1")
    old = {repo: registry.digest(f"fleet/{repo}", "latest") for repo in IMAGES}
    second = {repo: "id-new" for repo in IMAGES}
    for repo in IMAGES:
        registry.add(f"fleet/{repo}", "id-new", f"{repo}-two")
    publish(registry, "fleet", second, "r2")
    state = record.state(registry, "fleet")
    assert state is not None and state.prev == old and state.latest != old
    rollback(registry, "fleet", ["img-3"])
    assert record.state(registry, "fleet").latest["img-3"] == old["img-3"]
    moves = publish(registry, "fleet", second, "r2")  # the records no longer show img-3 current
    assert [(m.repository, m.tag) for m in moves] == [("img-3", "prev"), ("img-3", "latest")]
    assert registry.digest("fleet/img-3", "latest") == registry.digest("fleet/img-3", "id-new")


@pytest.mark.parametrize("body", [b"not json", json.dumps({"schema": 1, "kind": "state", "latest": {"img-0": "sha256:bad"}, "prev": {}}).encode(),
                                  json.dumps({"schema": 2, "latest": {}, "prev": {}}).encode()])  # fmt: skip
def test_a_record_that_is_not_the_toolkits_is_not_trusted(body: bytes) -> None:
    registry = FakeRegistry()
    _fleet(registry)
    publish(registry, "fleet", IMAGES, "r1")
    manifest = registry.entries[("fleet/releases", "latest")]
    layer = manifest.data["layers"][0]["digest"]
    registry.blobs[layer] = body
    assert record.state(registry, "fleet") is None
    registry.entries[("fleet/img-0", "latest")] = registry.entries[("fleet/img-1", "id-1")]  # moved by hand
    moves = publish(registry, "fleet", IMAGES, "r1")  # reads every tag, and puts img-0 back
    assert [(m.repository, m.tag) for m in moves] == [("img-0", "prev"), ("img-0", "latest")]


def test_the_size_report_takes_prev_sizes_from_the_facts_kept_of_its_digest(tmp_path) -> None:
    registry = FakeRegistry()
    prev = registry.add("fleet/a", "prev", "old")
    kept = tmp_path / "image-facts" / (prev.digest.replace(":", "-") + ".json")
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps({"layers": [{"size": 10, "created_by": ""}, {"size": 5, "created_by": ""}]}))
    registry.requests = 0
    assert sizes._prev_sizes(registry, "fleet/a", prev.digest, False, tmp_path) == [10, 5]
    assert registry.requests == 0
    kept.write_text(json.dumps({"layers": [{"size": "10"}]}))  # not what the toolkit keeps: the registry answers
    assert sizes._prev_sizes(registry, "fleet/a", prev.digest, False, tmp_path) == []
    assert registry.requests == 1


def test_a_family_may_not_take_the_release_records_repository(fleet_dir) -> None:
    (fleet_dir / "families" / "family-web.toml").rename(fleet_dir / "families" / "releases.toml")
    for svc in (fleet_dir / "services").glob("*.toml"):
        svc.write_text(svc.read_text().replace('"family-web"', '"releases"'))
    with pytest.raises(ConfigError, match="the release records"):
        make_plan(load_fleet(fleet_dir))
