"""The plan: order, selection, and content identities, on a fleet built in memory (no files)."""

from __future__ import annotations

import dataclasses

import pytest

from buildtool.core.errors import ConfigError, UsageError
from buildtool.model.sources import SourceTree
from buildtool.model.types import Fleet
from buildtool.plan.plan import MB, make_plan
from tests import memory


def identities(fleet: Fleet, **selection) -> dict[str, str]:
    return {s.key: s.identity for s in make_plan(fleet, **selection).steps}


def replace_family(fleet: Fleet, name: str, **changes) -> Fleet:
    return dataclasses.replace(fleet, families={**fleet.families, name: dataclasses.replace(fleet.families[name], **changes)})


def test_planning_reads_no_files() -> None:
    fleet = memory.fleet()
    assert not fleet.root.exists()
    plan = make_plan(fleet, all_families=True, all_services=True)
    assert len(plan.steps) == 11  # 4 CPU families, gpu, llm for big and small, 4 placements of 3 services


def test_parents_come_before_children() -> None:
    plan = make_plan(memory.fleet(), all_services=True)
    seen: set[str] = set()
    for step in plan.steps:
        assert step.parent is None or step.parent in seen, step.key
        seen.add(step.key)
    kinds = [s.kind for s in plan.steps]
    assert kinds == sorted(kinds)  # every family before any service


def test_whole_fleet_counts() -> None:
    fleet = memory.fleet()
    plan = make_plan(fleet, all_families=True, all_services=True)
    placements = sum(len(s.machines) for s in fleet.services.values())
    assert len([s for s in plan.steps if s.kind == "service"]) == placements
    families = [s.key for s in plan.steps if s.kind == "family"]
    # Machine-agnostic families once; machine-specific ones once per GPU machine (edge has none).
    assert families == ["family:base", "family:utils", "family:pydeps", "family:gpu", "family:llm@big", "family:web", "family:llm@small"]


def test_service_selection_pulls_only_its_lineage() -> None:
    plan = make_plan(memory.fleet(), services=["Api"])
    assert [s.key for s in plan.steps] == ["family:base", "family:utils", "family:pydeps", "family:web", "service:Api@big"]


def test_machine_filter() -> None:
    plan = make_plan(memory.fleet(), machines=["small"], services=["Worker"])
    assert [s.key for s in plan.steps if s.kind == "service"] == ["service:Worker@small"]
    with pytest.raises(UsageError, match="runs on big"):
        make_plan(memory.fleet(), machines=["small"], services=["Api"])


def test_unknown_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="did you mean 'Worker'"):
        make_plan(memory.fleet(), services=["Workr"])
    with pytest.raises(UsageError, match="did you mean 'pydeps'"):
        make_plan(memory.fleet(), families=["pydep"])


def test_a_machine_without_a_gpu_gets_no_cuda_image() -> None:
    fleet = memory.fleet()
    assert [s.key for s in make_plan(fleet, machines=["edge"], all_families=True).steps] == [
        "family:base", "family:utils", "family:pydeps", "family:web",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="none of the selected machine"):
        make_plan(fleet, machines=["edge"], families=["llm"])


def test_machine_specific_families_differ_per_machine() -> None:
    ids = identities(memory.fleet(), families=["llm"])
    assert ids["family:llm@big"] != ids["family:llm@small"]
    assert "family:gpu" in ids  # shared by both machines


def test_changing_a_lock_changes_that_family_and_its_descendants_only() -> None:
    fleet = memory.fleet()
    before = identities(fleet, all_services=True)
    pins = memory.PINS["pydeps"].replace("numpy==1.26.4", "numpy==1.26.3")
    after = identities(memory.with_locks(fleet, {"pydeps": pins}), all_services=True)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"family:pydeps", "family:web", "service:Api@big", "service:Worker@big", "service:Worker@small"}


def test_a_lock_comment_changes_no_identity() -> None:
    """Identities follow what is installed (the context's requirements files), not a lock's comments."""
    fleet = memory.fleet()
    before = identities(fleet, all_services=True)
    lock = fleet.locks["lockfiles/pydeps.txt"]
    edited = dataclasses.replace(lock, text=lock.text.replace("# generated in memory", "# generated in memory, reformatted"))
    assert identities(dataclasses.replace(fleet, locks={**fleet.locks, lock.path: edited}), all_services=True) == before


def test_changing_app_code_changes_only_services_using_it() -> None:
    fleet = memory.fleet()
    own = SourceTree(path="agents/own", files=(("agent.py", b"print('v1')\n"),))
    worker = dataclasses.replace(fleet.services["Worker"], source="agents/own")
    fleet = dataclasses.replace(fleet, services={**fleet.services, "Worker": worker}, sources={**fleet.sources, "agents/own": own})
    before = identities(fleet, all_services=True)
    changed_code = dataclasses.replace(own, files=(("agent.py", b"print('v2')\n"),))
    after = identities(dataclasses.replace(fleet, sources={**fleet.sources, "agents/own": changed_code}), all_services=True)
    assert {k for k in before if before[k] != after[k]} == {"service:Worker@big", "service:Worker@small"}


def test_changing_a_machine_profile_changes_its_services_and_specific_families() -> None:
    fleet = memory.fleet()
    before = identities(fleet, all_families=True, all_services=True)
    small = dataclasses.replace(fleet.machines["small"], profile=(("OMP_NUM_THREADS", "6"),))
    after = identities(dataclasses.replace(fleet, machines={**fleet.machines, "small": small}), all_families=True, all_services=True)
    assert {k for k in before if before[k] != after[k]} == {"family:llm@small", "service:Worker@small"}


def test_a_new_smoke_check_is_a_new_identity() -> None:
    fleet = memory.fleet()
    before = identities(fleet, families=["web"])
    checks = (*fleet.families["utils"].smoke, fleet.families["utils"].smoke[0])
    after = identities(replace_family(fleet, "utils", smoke=checks), families=["web"])
    assert {k for k in before if before[k] != after[k]} == {"family:utils", "family:pydeps", "family:web"}


def test_plan_json_lists_steps_with_identities() -> None:
    data = make_plan(memory.fleet(), machines=["small"], families=["web"]).as_json()
    assert data["machines"] == ["small"]
    assert [s["repository"] for s in data["steps"]] == ["base", "utils", "pydeps", "web"]
    assert all(len(s["identity"]) == 64 and s["id_tag"] == "id-" + s["identity"][:24] for s in data["steps"])


def test_a_root_is_its_os_lock_and_every_step_knows_its_builder_root() -> None:
    fleet = memory.fleet()
    before = identities(fleet, all_families=True)
    moved = memory.with_os_locks(fleet, {"root-runtime": (("libc6", "2.36-9+deb12u14"), ("python3-minimal", "3.11.2-1+b1"))})
    after = identities(moved, all_families=True)
    assert {k for k in before if before[k] != after[k]} == set(before)  # both roots and everything on them
    plan = make_plan(fleet, all_services=True)
    for step in plan.steps:
        root = plan.step(step.builder)
        assert root.root is not None and root.name == step.lineage[0], step.key
    assert plan.step("family:base").builder_repository == "base-builder"
    assert plan.step("family:utils").builder_repository == ""


def test_two_images_that_would_share_a_repository_are_a_config_error() -> None:
    fleet = memory.fleet()
    clash = memory._family("base-builder", parent="base")  # base's builder root is pushed to base-builder
    with pytest.raises(ConfigError) as info:
        make_plan(dataclasses.replace(fleet, families={**fleet.families, "base-builder": clash}))
    assert "'base-builder'" in info.value.message and "families/base.toml" in info.value.message
    worker = fleet.services["Worker"]
    named = dataclasses.replace(worker, name="Web", file="services/Web.toml", machines=("big",))  # slug web -> repository web-big
    web_big = memory._family("web-big", parent="web")
    with pytest.raises(ConfigError, match="rename one of them"):
        make_plan(dataclasses.replace(fleet, families={**fleet.families, "web-big": web_big}, services={**fleet.services, "Web": named}))


def test_budgets_are_compressed_megabytes() -> None:
    step = make_plan(memory.fleet(), families=["base"]).step("family:base")
    assert step.budget_mb == 100
    assert step.budget_problem(100 * MB) == ""
    assert step.budget_problem(100 * MB + 1) == (
        "base is 100.0 MB compressed, over its budget of 100 MB (budget_mb of families/base.toml or its parents); make it smaller or raise the budget"
    )
