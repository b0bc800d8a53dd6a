"""The generated workflow under act, with one job failing on purpose: the publish job reports and
moves no tag. (The passing run is `nox -s ci_local`.)"""

from __future__ import annotations

import hashlib
import time

import pytest

from buildtool.adapters.registry import Registry
from tests import act_runner
from tests.engine.helpers import commit_all, state_dir

pytestmark = pytest.mark.engine


def test_a_failing_job_leaves_every_tag_where_it_was(tmp_path, real_subprocess) -> None:
    repo = tmp_path / "repo"
    act_runner.checkout_copy(repo)
    fam = repo / "families" / "family-web.toml"
    fam.write_text(fam.read_text() + '\n[[smoke]]\nname = "fails on purpose"\nrun = ["python", "-c", "raise SystemExit(7)"]\n')
    commit_all(repo, "break family-web")
    org = f"ci-fail-{int(time.time())}"
    state = state_dir()
    result = act_runner.run(repo, org=org, groups="cpu", services="ServiceRegistry", state=state)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "logs" / f"act-{org}.log").write_text(result.log)
    assert result.returncode != 0
    assert "smoke check 'fails on purpose' failed: exit 7" in result.log
    assert "a job of this run failed" in result.log  # the publish job ran, in report-only mode
    registry = Registry(act_runner.ADDRESS)
    assert registry.digest(f"{org}/base-python", "id-" + "0" * 24) is None
    for repo_name in ("base-python", "base-utils", "base-cpu-pydeps", "family-web", "service-registry-mainpc"):
        assert registry.digest(f"{org}/{repo_name}", "latest") is None, repo_name
    assert registry.tags(f"{org}/base-python")  # pushed by identity by its level job: the next run resumes from it
    assert (result.artifacts / "fleet-report" / "reports" / "sizes.md").is_file()  # the report is kept either way


def test_a_dispatch_from_another_branch_builds_into_its_own_org_and_moves_no_release(tmp_path, real_subprocess) -> None:
    repo = tmp_path / "repo"
    act_runner.checkout_copy(repo)
    org = f"ci-branch-{int(time.time())}"
    state = state_dir()
    result = act_runner.run(repo, org=org, groups="cpu", services="ServiceRegistry", state=state, event="workflow_dispatch",
                              ref="refs/heads/feature/try")  # fmt: skip
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "logs" / f"act-{org}.log").write_text(result.log)
    assert result.returncode == 0, result.log[-3000:]
    branch_org = f"{org}/branch-{hashlib.sha256(b'refs/heads/feature/try').hexdigest()[:12]}"
    registry = Registry(act_runner.ADDRESS)
    for repo_name in ("base-python", "family-web", "service-registry-mainpc"):
        assert not registry.tags(f"{org}/{repo_name}"), repo_name  # main's org: not one tag, no identity, no release
        branch_tags = registry.tags(f"{branch_org}/{repo_name}")
        assert any(t.startswith("id-") for t in branch_tags), (repo_name, branch_tags)  # built, verified and pushed by identity
        assert "latest" not in branch_tags and "prev" not in branch_tags, (repo_name, branch_tags)
    assert not registry.tags(f"{org}/cache")  # nor main's build cache
