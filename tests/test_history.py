"""Release records and their diffs: each publish records its images beside the release; a diff
of two records names the images rebuilt, the identity input that made each one new, the layers
that moved, the packages and the advisories, reading records only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from buildtool import pipeline
from buildtool.cli.main import main
from buildtool.core.errors import UsageError
from buildtool.model.load import load_fleet
from buildtool.plan.plan import MB, make_plan
from buildtool.report import history
from tests.fakes import FakeEngine, FakeRegistry, QuietProgress, ServedApt
from tests.test_executor import settings_for, write_rootfs
from tests.test_release import COMMIT


def release(fleet_dir: Path, state: Path, registry: FakeRegistry, tag: str) -> pipeline.Run:
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, services=["ServiceRegistry"])
    settings = dataclasses.replace(settings_for(fleet, state), scan=False)
    return pipeline.build(settings, fleet, plan, progress=QuietProgress(), engine=FakeEngine(registry), registry=registry, bootstrap=write_rootfs,
                          resolver=ServedApt(), tag=tag, commit=COMMIT)  # fmt: skip


def test_two_releases_with_one_family_changed_name_exactly_its_subtree_and_why(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    assert release(fleet_dir, tmp_path / "state", registry, "20261201-aaaaaaa").diff == ""  # a first release: nothing to compare with
    family = fleet_dir / "families" / "base-cpu-pydeps.toml"
    family.write_text(family.read_text() + '\n[[smoke]]\nname = "numpy imports"\nrun = ["python", "-c", "import numpy"]\n')
    run = release(fleet_dir, tmp_path / "state", registry, "20261202-bbbbbbb")
    assert "| base-cpu-pydeps | rebuilt | checks |" in run.diff and "base-utils" not in run.diff  # the publish's own summary
    assert (tmp_path / "state" / "reports" / "diff.md").read_text() == run.diff

    new = history.fetch(registry, "fleet", "20261202-bbbbbbb")
    assert new["previous"] == "20261201-aaaaaaa"  # the record names the release it replaced
    changes = history.diff(history.fetch(registry, "fleet", new["previous"]), new)
    assert {c.repository: (c.status, c.why) for c in changes} == {
        "base-cpu-pydeps": ("rebuilt", ["checks"]),  # its own input
        "family-web": ("rebuilt", ["checks", "parent"]),  # inherits the checks, and a new parent
        "service-registry-mainpc": ("rebuilt", ["checks", "parent"]),
    }  # base-python and base-utils: unchanged, not listed


def test_the_identity_inputs_are_told_apart(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, services=["ServiceRegistry"])
    step = plan.step("family:family-web")
    before = history.inputs(step, plan)
    files = tuple((p, d + b"\nnumpy==2.0.0" if p == "requirements.txt" else d) for p, d in step.rendered.files)
    relocked = dataclasses.replace(step, rendered=dataclasses.replace(step.rendered, files=files))
    after = history.inputs(relocked, plan)
    assert {k for k in before if before[k] != after[k]} == {"Python lock"}
    service = plan.step("service:ServiceRegistry@mainpc")
    assert {"Dockerfile", "app code", "machine profile", "parent"} <= set(history.inputs(service, plan))


def image(repo: str, digest: str, layers: list[tuple[str, int]], python: dict, advisories: list[str]) -> dict:
    return {"repository": repo, "digest": digest, "inputs": {"Python lock": digest[-4:], "parent": ""},
            "layers": [{"size": s, "created_by": cmd, "origin": history.origin(cmd, introduces_cuda=False), "own": True} for cmd, s in layers],
            "packages": {"python": python, "debian": {}}, "advisories": advisories}  # fmt: skip


def test_a_diff_gives_layer_deltas_packages_and_advisories() -> None:
    root, venv = "ADD rootfs.tar / # buildkit", "COPY /install/ /opt/venv/ # buildkit"
    old = {"images": [image("family-web", "sha256:" + "a" * 64, [(root, 100), (venv, 5 * MB)], {"fastapi": "0.110.0", "h11": "0.14.0"},
                            ["CVE-2024-1 h11"])]}  # fmt: skip
    new = {"images": [image("family-web", "sha256:" + "b" * 64, [(root, 100), (venv, 7 * MB + MB // 2)], {"fastapi": "0.115.0", "orjson": "3.10.0"},
                            ["CVE-2025-9 orjson"])]}  # fmt: skip
    (change,) = history.diff(old, new)
    assert change.why == ["Python lock"]
    assert change.layers == [("python", venv, 5 * MB, 7 * MB + MB // 2)]  # the root layer did not move
    assert change.packages == {"python": ["+orjson 3.10.0", "-h11 0.14.0", "fastapi 0.110.0 -> 0.115.0"]}
    assert change.fixed == ["CVE-2024-1 h11"] and change.new == ["CVE-2025-9 orjson"]
    text = history.markdown("r1", "r2", [change])
    assert "| family-web | rebuilt | Python lock | 5.0 → 7.5 (+2.50) |" in text and "layer (python)" in text and "(+2.50)" in text


def test_packages_come_from_the_sboms_purls() -> None:
    sbom = json.dumps({"components": [{"name": "numpy", "version": "2.1.0", "purl": "pkg:pypi/numpy@2.1.0"},
                                      {"name": "libc6", "purl": "pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64"},
                                      {"name": "no purl"}, "not a component"]}).encode()  # fmt: skip
    assert history.packages(sbom) == {"python": {"numpy": "2.1.0"}, "debian": {"libc6": "2.36-9+deb12u9"}}
    assert history.packages(b"not json") == {"python": {}, "debian": {}}


def test_a_record_that_is_not_the_toolkits_is_refused() -> None:
    registry = FakeRegistry()
    with pytest.raises(UsageError, match="no release record of 20261201-aaaaaaa"):
        history.fetch(registry, "fleet", "20261201-aaaaaaa")
    history.store(registry, "fleet", "20261201-aaaaaaa", "", [])
    manifest = registry.entries[("fleet/releases", "20261201-aaaaaaa.report")]
    registry.blobs[manifest.data["layers"][0]["digest"]] = json.dumps({"release": "20261130-other00", "images": []}).encode()
    with pytest.raises(UsageError, match="not a release record the toolkit wrote"):
        history.fetch(registry, "fleet", "20261201-aaaaaaa")
    with pytest.raises(UsageError, match="is not a release tag"):
        history.record_tag("../../etc")


def test_report_diff_needs_two_releases_or_none(fleet_dir: Path, capsys) -> None:
    assert main(["--root", str(fleet_dir), "report", "--diff", "20261201-aaaaaaa"]) == UsageError.exit_code
    assert "--diff takes two releases" in capsys.readouterr().err


def test_an_image_in_one_release_only_is_not_called_removed() -> None:
    """A publish releases a selection: an image outside it was not removed from the fleet."""
    old = {"images": [image("hostile-agent-pc2", "sha256:" + "a" * 64, [], {}, [])]}
    new = {"images": [image("service-registry-mainpc", "sha256:" + "b" * 64, [], {}, [])]}
    assert [(c.repository, c.status) for c in history.diff(old, new)] == [
        ("hostile-agent-pc2", "only in the old one"),
        ("service-registry-mainpc", "only in the new release"),
    ]


def test_a_second_selection_under_the_same_release_extends_its_record(fleet_dir: Path, tmp_path: Path) -> None:
    """`build_families` then `build -- SERVICE` from one commit publish one release tag: its record
    holds both selections' images and still names the release before it, not itself."""
    registry = FakeRegistry()
    release(fleet_dir, tmp_path / "state", registry, "20261201-aaaaaaa")
    fleet = load_fleet(fleet_dir)
    settings = dataclasses.replace(settings_for(fleet, tmp_path / "state"), scan=False)
    for selection in ({"families": ["family-web"]}, {"services": ["ServiceRegistry"]}):
        family = fleet_dir / "families" / "base-cpu-pydeps.toml"
        if "families" in selection:
            family.write_text(family.read_text() + '\n[[smoke]]\nname = "numpy imports"\nrun = ["python", "-c", "import numpy"]\n')
        fleet = load_fleet(fleet_dir)
        run = pipeline.build(settings, fleet, make_plan(fleet, **selection), progress=QuietProgress(), engine=FakeEngine(registry), registry=registry,
                             bootstrap=write_rootfs, resolver=ServedApt(), tag="20261202-bbbbbbb", commit=COMMIT)  # fmt: skip
    record = history.fetch(registry, "fleet", "20261202-bbbbbbb")
    assert record["previous"] == "20261201-aaaaaaa"
    assert sorted(i["repository"] for i in record["images"]) == ["base-cpu-pydeps", "base-python", "base-utils", "family-web", "service-registry-mainpc"]
    assert "| service-registry-mainpc | rebuilt | checks, parent |" in run.diff
