"""Local prune touches only what the toolkit made: its labelled images of other orgs, and build
cache only of an engine it started itself."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from buildtool import pipeline
from buildtool import settings as run_settings
from buildtool.adapters import engine, setup
from buildtool.adapters.files import owned_dir
from buildtool.model.load import load_fleet
from tests.fakes import FakeRegistry


def image(tags: list[str], labels: dict[str, str] | None) -> SimpleNamespace:
    return SimpleNamespace(repo_tags=tags, config=SimpleNamespace(labels=labels))


class FakeDocker:
    """python-on-whales' client, as much as prune uses of it."""

    def __init__(self, images: list[SimpleNamespace]) -> None:
        self.removed: list[str] = []
        self.pruned: list[str] = []
        self.image = SimpleNamespace(list=lambda: images, remove=lambda tag, force: self.removed.append(tag))


def docker_with(images: list[SimpleNamespace]) -> engine.Docker:
    docker = engine.Docker.__new__(engine.Docker)
    docker.client = FakeDocker(images)  # type: ignore[assignment]
    return docker


def test_only_the_toolkits_images_of_other_orgs_are_removed() -> None:
    ours = {engine.IDENTITY_LABEL: "a" * 64}
    images = [
        image(["ghcr.io/acme/base-python:id-1"], ours),  # the toolkit's, in the run's org: kept
        image(["ghcr.io/acme-test-1/base-python:id-1"], ours),  # the toolkit's, another org: removed
        image(["ghcr.io/someone/webapp:latest"], {"maintainer": "someone"}),  # another project on the host
        image(["ghcr.io/someone/base-python:3.11"], None),  # same name, not the toolkit's
        image(["docker.io/library/python:3.11"], ours),  # another registry
    ]
    docker = docker_with(images)
    assert docker.remove_images("ghcr.io", "acme") == ["ghcr.io/acme-test-1/base-python:id-1"]
    assert docker.client.removed == ["ghcr.io/acme-test-1/base-python:id-1"]


def fake_proc(root: Path, log: Path) -> Path:
    (root / "4242" / "fd").mkdir(parents=True)
    (root / "4242" / "cmdline").write_bytes(b"/usr/sbin/dockerd\0--debug\0")
    (root / "4242" / "fd" / "1").symlink_to(log)
    return root


def test_the_build_cache_is_the_toolkits_only_when_it_started_the_engine(tmp_path: Path) -> None:
    state = owned_dir(tmp_path / "state", what="state dir")
    assert setup.engine_is_ours(fake_proc(tmp_path / "proc1", state / "dockerd.log"))
    elsewhere = tmp_path / "var-log"
    elsewhere.mkdir()
    assert not setup.engine_is_ours(fake_proc(tmp_path / "proc2", elsewhere / "dockerd.log"))  # a system's own engine
    assert not setup.engine_is_ours(tmp_path / "empty")


@pytest.mark.parametrize("ours", [True, False])
def test_local_prune_leaves_a_foreign_engines_build_cache(fleet_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ours: bool) -> None:
    calls: list[str] = []
    monkeypatch.setattr(setup, "engine_is_ours", lambda: ours)
    monkeypatch.setattr(setup, "collect_garbage", lambda address: "collected")

    class Docker:
        def prune_build_cache(self, keep: str) -> str:
            calls.append("prune_build_cache")
            return "freed"

        def remove_images(self, prefix: str, keep_org: str, current=None) -> list[str]:
            calls.append("remove_images")
            return []

    monkeypatch.setattr(engine, "Docker", Docker)
    fleet = load_fleet(fleet_dir)
    s = run_settings.from_sources(fleet, {"FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_PIP_CA": "/ca.crt"})
    lines = pipeline.prune(s, fleet, registry=FakeRegistry(), local=True)
    assert calls == (["prune_build_cache", "remove_images"] if ours else ["remove_images"])
    assert any(("build cache: freed" if ours else "build cache: left alone") in line for line in lines)


def test_a_throwaway_run_removes_only_its_own_orgs_images() -> None:
    ours = {engine.IDENTITY_LABEL: "a" * 64}
    images = [
        image(["127.0.0.1:5000/bench-17/base-python:id-1"], ours),  # the bench's org: removed
        image(["127.0.0.1:5000/bench-17-cold/base-python:id-1"], ours),  # its cold org, named after it: removed
        image(["127.0.0.1:5000/bench-170/base-python:id-1"], ours),  # another bench's: kept
        image(["127.0.0.1:5000/fleet/base-python:id-1"], ours),  # the fleet's: kept
        image(["127.0.0.1:5000/bench-17/webapp:latest"], None),  # not the toolkit's: kept
    ]
    docker = docker_with(images)
    assert docker.remove_images("127.0.0.1:5000", only_org="bench-17") == [
        "127.0.0.1:5000/bench-17/base-python:id-1",
        "127.0.0.1:5000/bench-17-cold/base-python:id-1",
    ]


def test_a_branch_org_below_the_runs_org_is_kept() -> None:
    ours = {engine.IDENTITY_LABEL: "a" * 64}
    docker = docker_with([image(["ghcr.io/acme/branch-0123456789ab/base-python:id-1"], ours), image(["ghcr.io/acmes/base-python:id-1"], ours)])
    assert docker.remove_images("ghcr.io", "acme") == ["ghcr.io/acmes/base-python:id-1"]


def test_prune_removes_earlier_identities_of_its_own_org_only() -> None:
    ours = {engine.IDENTITY_LABEL: "a" * 64}
    images = [
        image(["127.0.0.1:5000/fleet/family-torch-cu121:id-new"], ours),  # the plan's: kept
        image(["127.0.0.1:5000/fleet/family-torch-cu121:id-old"], ours),  # an earlier identity: removed
        image(["127.0.0.1:5000/fleet/family-torch-cu121:latest"], ours),  # pulled by a user: not an identity tag, kept
        image(["127.0.0.1:5000/fleet/family-torch-cu121:id-mine"], None),  # not the toolkit's: kept
    ]
    docker = docker_with(images)
    assert docker.remove_images("127.0.0.1:5000", "fleet", current={"127.0.0.1:5000/fleet/family-torch-cu121:id-new"}) == [
        "127.0.0.1:5000/fleet/family-torch-cu121:id-old"
    ]
