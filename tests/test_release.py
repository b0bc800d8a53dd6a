"""Release integrity: tags named by the commit, immutable, never renamed by FORCE_IMAGE_TAG, one publish at a time."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from buildtool import pipeline
from buildtool import settings as run_settings
from buildtool.core.errors import BuildError, ReleaseError
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from buildtool.publish.release import Revision, labels, publish, release_tag, revision
from tests.fakes import FakeEngine, FakeRegistry, QuietProgress, ServedApt

COMMIT = Revision(sha="abc1234", date=dt.date(2026, 11, 20), dirty=False)


def test_release_tags_name_the_commit_and_its_date() -> None:
    assert release_tag(COMMIT, ["a", "b"]) == "20261120-abc1234"
    dirty = dataclasses.replace(COMMIT, dirty=True)
    tag = release_tag(dirty, ["a", "b"])
    assert tag.startswith("20261120-abc1234-dirty-") and tag == release_tag(dirty, ["b", "a"])
    assert release_tag(dirty, ["a", "c"]) != tag  # other content, another tag: never the same tag for two contents


def test_revision_reads_the_commit(tmp_path: Path, real_subprocess: None) -> None:
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    env = {"GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z", "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z", "PATH": "/usr/bin:/bin"}
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True, env=env)
    rev = revision(tmp_path)
    assert rev.date == dt.date(2026, 1, 2) and len(rev.sha) >= 7 and not rev.dirty
    (tmp_path / "f").write_text("2")
    dirty = revision(tmp_path)
    assert dirty.dirty and len(dirty.changes) == 8 and release_tag(dirty, []).endswith(f"-dirty-{dirty.changes}")
    assert revision(tmp_path / "nowhere").sha == "nogit"
    # Images carry the commit and its date, never the build's: the same commit labels the same way.
    assert labels(rev) == {"org.opencontainers.image.revision": rev.full, "fleet.commit-date": "2026-01-02T03:04:05Z"}
    assert len(rev.full) == 40 and labels(dirty)["org.opencontainers.image.revision"] == f"{rev.full}-dirty-{dirty.changes}"
    assert labels(revision(tmp_path / "nowhere")) == {}  # no commit, no label (not today's date)


def test_an_existing_release_tag_is_never_overwritten() -> None:
    registry = FakeRegistry()
    one = registry.add("fleet/a", "id-1", "one")
    registry.add("fleet/a", "id-2", "two")
    publish(registry, "fleet", {"a": "id-1"}, "20261120-abc1234")
    with pytest.raises(ReleaseError, match="release tags are immutable"):
        publish(registry, "fleet", {"a": "id-2"}, "20261120-abc1234")
    assert registry.digest("fleet/a", "20261120-abc1234") == one.digest
    assert registry.digest("fleet/a", "latest") == one.digest and registry.digest("fleet/a", "prev") is None
    assert publish(registry, "fleet", {"a": "id-1"}, "20261120-abc1234") == []  # the same release again: nothing to move


def test_a_publish_that_meets_another_stops() -> None:
    class Racing(FakeRegistry):
        def digest(self, repo: str, ref: str, *, fresh: bool = False) -> str | None:
            return "sha256:" + "9" * 64 if fresh else super().digest(repo, ref)

    registry = Racing()
    registry.add("fleet/a", "id-1", "one")
    with pytest.raises(ReleaseError, match="moved by another publish"):
        publish(registry, "fleet", {"a": "id-1"}, "r1")
    assert ("fleet/a", "latest") not in registry.entries


def settings_for(fleet_dir: Path, tmp_path: Path, **env: str) -> run_settings.Settings:
    fleet = load_fleet(fleet_dir)
    s = run_settings.from_sources(fleet, {"FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_PIP_CA": "/ca.crt", **env})
    return dataclasses.replace(s, scan=False)


def write_rootfs(*, out: Path, **kw) -> Path:
    out.write_bytes(b"rootfs")
    return out


def test_force_image_tag_during_a_build_changes_nothing(fleet_dir: Path, tmp_path: Path) -> None:
    fleet = load_fleet(fleet_dir)
    registry = FakeRegistry()
    pinned = registry.add("fleet/base-python", "20261101-0000aaa", "an older release")
    s = settings_for(fleet_dir, tmp_path, FORCE_IMAGE_TAG="20261101-0000aaa")
    plan = make_plan(fleet, families=["base-python"])
    run = pipeline.build(s, fleet, plan, progress=QuietProgress(), engine=FakeEngine(registry), registry=registry, bootstrap=write_rootfs, resolver=ServedApt(),
                         commit=COMMIT)  # fmt: skip
    assert run.tag == "20261120-abc1234"
    assert run.critical.startswith("critical path (") and "base-python" in run.critical
    assert f"The run's {run.critical}" in (tmp_path / "state" / "reports" / "sizes.md").read_text()
    record = json.loads((tmp_path / "state" / "reports" / "last-run.json").read_text())
    assert [step["repository"] for step in record["critical_path"]] == ["base-python"] and record["critical"] == run.critical
    assert "push" in record["results"][0]["stages"]
    assert registry.entries[("fleet/base-python", "20261101-0000aaa")] == pinned  # the pinned release still names what it named
    assert registry.digest("fleet/base-python", "20261120-abc1234") == registry.digest("fleet/base-python", "latest")


def test_the_publish_job_releases_what_the_jobs_pushed_and_nothing_when_one_failed(fleet_dir: Path, tmp_path: Path) -> None:
    fleet = load_fleet(fleet_dir)
    registry = FakeRegistry()
    s = settings_for(fleet_dir, tmp_path)
    families = make_plan(fleet, families=["base-utils"])
    pipeline.build(s, fleet, families, progress=QuietProgress(), engine=FakeEngine(registry), registry=registry, bootstrap=write_rootfs, resolver=ServedApt(),
                   commit=COMMIT, publish_tags=False)  # fmt: skip
    assert ("fleet/base-utils", "latest") not in registry.entries  # the level jobs push by identity only
    with pytest.raises(BuildError, match="cannot be released") as exc:
        pipeline.release(s, fleet, make_plan(fleet, families=["base-cpu-pydeps"]), registry=registry, commit=COMMIT)
    assert "base-cpu-pydeps" in exc.value.message and not any(t == "latest" for _, t in registry.entries)
    with pytest.raises(BuildError):
        pipeline.release(s, fleet, families, registry=registry, commit=COMMIT, report_only=True)
    assert not any(t == "latest" for _, t in registry.entries)
    run = pipeline.release(s, fleet, families, registry=registry, commit=COMMIT)
    assert {m.repository for m in run.moves if m.tag == "latest"} == {"base-python", "base-utils"}
    assert (tmp_path / "state" / "reports" / "sizes.md").is_file()


def test_retention_keeps_latest_prev_pins_the_newest_releases_and_current_builds() -> None:
    from buildtool.publish.prune import keep

    tags = {"latest": "d4", "prev": "d3", "20261104-ddddddd": "d4", "20261103-ccccccc": "d3", "20261102-bbbbbbb": "d2",
            "20261101-aaaaaaa": "d1", "id-4": "d4", "id-3": "d3", "id-2": "d2", "id-1": "d1", "id-9": "d9", "pinned": "d1"}  # fmt: skip
    kept = keep(tags, releases=1, pinned=["pinned"], current_ids=["id-9"])
    assert kept == {"latest", "prev", "20261104-ddddddd", "20261103-ccccccc", "id-4", "id-3", "pinned", "20261101-aaaaaaa", "id-1", "id-9"}
    assert "20261102-bbbbbbb" not in kept and "id-2" not in kept
