"""The CI workflow is generated from the plan: committed as generated, following the family tree."""

from __future__ import annotations

import re
import subprocess
import textwrap

import pytest
from ruamel.yaml import YAML

from buildtool.ci import workflow
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from tests import memory
from tests.conftest import REPO


def parsed(text: str) -> dict:
    return YAML(typ="safe").load(text)


def test_the_committed_workflow_is_the_generated_one() -> None:
    assert (REPO / workflow.PATH).read_text() == workflow.render(load_fleet(REPO)), "run `nox -s workflow`"


def test_jobs_follow_the_family_tree_and_publish_comes_last() -> None:
    fleet = load_fleet(REPO)
    jobs = parsed(workflow.render(fleet))["jobs"]
    levels = sorted((k for k in jobs if k.startswith("level-")), key=lambda k: int(k.split("-")[1]))
    plan = make_plan(fleet, all_families=True)
    level_of: dict[str, int] = {}
    for job in levels:
        for leg in jobs[job]["strategy"]["matrix"]["include"]:
            step = next(s for s in plan.steps if s.name == leg["family"] and (s.machine or "") == leg["machine"])
            level_of[step.key] = int(job.split("-")[1])
    assert set(level_of) == {s.key for s in plan.steps}  # every family image, each once
    for step in plan.steps:
        if step.parent:
            assert level_of[step.parent] < level_of[step.key], step.key
    for i, job in enumerate(levels):
        assert jobs[job]["needs"] == (["test"] if i == 0 else [levels[i - 1]])
    assert jobs["services"]["needs"] == [levels[-1]]
    assert {leg["machine"] for leg in jobs["services"]["strategy"]["matrix"]["include"]} == {"mainpc", "pc2"}
    assert jobs["publish"]["needs"] == ["test", *levels, "services"]
    assert jobs["publish"]["if"].startswith("${{ always()")


def test_only_the_publish_job_moves_tags() -> None:
    jobs = parsed(workflow.render(load_fleet(REPO)))["jobs"]
    for name, job in jobs.items():
        scripts = " ".join(s.get("run", "") for s in job["steps"])
        if name == "publish":
            assert "nox -s publish" in scripts
        else:
            assert "nox -s publish" not in scripts
            assert "nox -s build" not in scripts or "--no-publish" in scripts, name


def test_only_main_moves_or_deletes_release_tags() -> None:
    """Every job that moves or deletes tags runs for main alone, in the release environment; the
    state dir of every toolkit step lies outside the checkout."""
    docs = {"build": parsed(workflow.render(load_fleet(REPO)))}
    docs |= {name: parsed((REPO / f".github/workflows/{name}.yml").read_text()) for name in ("rollback", "prune", "refresh")}
    releasing = {("build", "publish"), ("rollback", "rollback"), ("prune", "prune")}
    for name, doc in docs.items():
        for job_name, job in doc["jobs"].items():
            writes = "write" in job.get("permissions", {}).get("packages", "")
            if (name, job_name) in releasing:
                assert job["environment"] == workflow.ENVIRONMENT, (name, job_name)
                assert "github.ref == 'refs/heads/main'" in job["if"], (name, job_name)
            else:
                assert "environment" not in job, (name, job_name)
                assert not writes or ("nox -s build" in str(job["steps"]) and "--no-publish" in str(job["steps"])), (name, job_name)
            for step in job["steps"]:
                if "nox -s" in step.get("run", "") and "FLEET_REGISTRY_TOKEN" in step.get("env", {}):
                    assert step["env"]["FLEET_STATE_DIR"].startswith("${{ runner.temp }}/"), (name, job_name, step["name"])
    upload = next(s for s in docs["build"]["jobs"]["publish"]["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["with"]["path"].startswith("${{ runner.temp }}/fleet-state/")


def test_hardened() -> None:
    text = workflow.render(load_fleet(REPO))
    doc = parsed(text)
    assert doc["permissions"] == {} and "group" in doc["concurrency"]
    for name, job in doc["jobs"].items():
        assert isinstance(job["timeout-minutes"], int), name
        assert "permissions" in job, name
    uses = re.findall(r"uses: (\S+)", text)
    assert uses and all(re.fullmatch(r"actions/[a-z-]+@[0-9a-f]{40}", u) for u in uses)
    assert all(re.search(r"@[0-9a-f]{40}  # v\d+\.\d+\.\d+$", line) for line in text.splitlines() if "uses:" in line)
    assert "${{ matrix" not in "".join(s.get("run", "") for j in doc["jobs"].values() for s in j["steps"])  # values via env only
    assert "pip install --require-hashes -r requirements/nox.txt" in text


def test_a_new_family_gets_its_level() -> None:
    """The workflow follows the fleet: the in-memory fleet's tree gives its own levels."""
    jobs = parsed(workflow.render(memory.fleet()))["jobs"]
    legs = {leg["image"]: int(name.split("-")[1]) for name, job in jobs.items() if name.startswith("level-")
            for leg in job["strategy"]["matrix"]["include"]}  # fmt: skip
    assert legs == {"base": 0, "gpu": 0, "utils": 1, "llm-big": 1, "llm-small": 1, "pydeps": 2, "web": 3}
    assert {leg["machine"] for leg in jobs["services"]["strategy"]["matrix"]["include"]} == {"big", "small"}


@pytest.mark.parametrize(
    ("value", "argv"),
    [
        ("all", ["--all"]),
        ("--all", ["--all"]),
        ("ServiceRegistry  MemoryFusionHub", ["--", "ServiceRegistry", "MemoryFusionHub"]),
        ("--registry=evil.example ServiceRegistry", ["--", "--registry=evil.example", "ServiceRegistry"]),
        ("all --org=other", ["--", "all", "--org=other"]),
    ],
)
def test_the_ci_service_selection_passes_words_as_names_never_options(value: str, argv: list[str], real_subprocess: None) -> None:
    """The generated jobs' shell lines, run by bash: every word but a lone `all` comes after "--"."""
    script = "set -euo pipefail\n" + textwrap.dedent(workflow.SELECTION) + 'printf "%s\\n" "${selection[@]}"\n'
    assert workflow.SELECTION in workflow.render(load_fleet(REPO))
    out = subprocess.run(["bash", "-c", script], env={"FLEET_CI_SERVICES": value}, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == argv

