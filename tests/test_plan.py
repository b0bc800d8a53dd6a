"""The plan: order, selection, and content identities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildtool.__main__ import main
from buildtool.config import load_fleet
from buildtool.errors import UsageError
from buildtool.plan import make_plan


def identities(root: Path, **selection) -> dict[str, str]:
    return {s.key: s.identity for s in make_plan(load_fleet(root), **selection).steps}


def test_parents_come_before_children(fleet_dir: Path) -> None:
    plan = make_plan(load_fleet(fleet_dir), all_services=True)
    seen: set[str] = set()
    for step in plan.steps:
        assert step.parent is None or step.parent in seen, step.key
        seen.add(step.key)
    kinds = [s.kind for s in plan.steps]
    assert kinds == sorted(kinds)  # every family before any service


def test_whole_fleet_counts(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, all_families=True, all_services=True)
    placements = sum(len(s.machines) for s in fleet.services.values())
    assert len([s for s in plan.steps if s.kind == "service"]) == placements
    # Machine-agnostic families once; machine-specific ones once per machine.
    # (Without all_families, only the families some selected service needs are planned.)
    families = [s for s in plan.steps if s.kind == "family"]
    assert len(families) == len(fleet.families) + sum(1 for f in fleet.families.values() if f.machine_specific) * (len(fleet.machines) - 1)


def test_service_selection_pulls_only_its_lineage(fleet_dir: Path) -> None:
    plan = make_plan(load_fleet(fleet_dir), services=["ServiceRegistry"])
    assert [s.key for s in plan.steps] == [
        "family:base-python",
        "family:base-utils",
        "family:base-cpu-pydeps",
        "family:family-web",
        "service:ServiceRegistry@mainpc",
    ]


def test_machine_filter(fleet_dir: Path) -> None:
    plan = make_plan(load_fleet(fleet_dir), machines=["pc2"], services=["MemoryFusionHub"])
    assert [s.key for s in plan.steps if s.kind == "service"] == ["service:MemoryFusionHub@pc2"]
    with pytest.raises(UsageError, match="runs on mainpc"):
        make_plan(load_fleet(fleet_dir), machines=["pc2"], services=["ServiceRegistry"])


def test_unknown_names_are_usage_errors(fleet_dir: Path) -> None:
    with pytest.raises(UsageError, match="did you mean 'ServiceRegistry'"):
        make_plan(load_fleet(fleet_dir), services=["ServiceRegistri"])
    with pytest.raises(UsageError, match="did you mean 'family-web'"):
        make_plan(load_fleet(fleet_dir), families=["family-wbe"])


def test_machine_specific_families_differ_per_machine(fleet_dir: Path) -> None:
    ids = identities(fleet_dir, families=["family-llm-cu121"])
    assert ids["family:family-llm-cu121@mainpc"] != ids["family:family-llm-cu121@pc2"]
    assert "family:family-torch-cu121" in ids  # shared by both machines


def test_changing_a_lock_changes_that_family_and_its_descendants_only(fleet_dir: Path) -> None:
    before = identities(fleet_dir, all_services=True)
    lock = fleet_dir / "lockfiles" / "base-cpu-pydeps.txt"
    lock.write_text(lock.read_text().replace("numpy==1.26.4", "numpy==1.26.3"))
    after = identities(fleet_dir, all_services=True)
    fleet = load_fleet(fleet_dir)
    changed = {k for k in before if before[k] != after[k]}
    below = {"base-cpu-pydeps", "family-web"}
    expected = {f"family:{f}" for f in below} | {
        f"service:{s.name}@{m}" for s in fleet.services.values() if s.family in below for m in s.machines
    }
    assert changed == expected


def test_a_lock_comment_changes_no_identity(fleet_dir: Path) -> None:
    """Identities follow what is installed (the context's requirements files), not a lock's comments."""
    before = identities(fleet_dir, all_services=True)
    lock = fleet_dir / "lockfiles" / "base-cpu-pydeps.txt"
    lock.write_text(lock.read_text().replace("    # via", "    # (reformatted) via"))
    assert identities(fleet_dir, all_services=True) == before


def test_changing_app_code_changes_only_services_using_it(fleet_dir: Path) -> None:
    own = fleet_dir / "agents" / "own_app"
    own.mkdir()
    (own / "main.py").write_text("print('v1')\n")
    svc = fleet_dir / "services" / "CacheManager.toml"
    svc.write_text(svc.read_text() + 'source = "agents/own_app"\nentrypoint = ["python", "/app/main.py"]\n')
    before = identities(fleet_dir, all_services=True)
    (own / "main.py").write_text("print('v2')\n")
    after = identities(fleet_dir, all_services=True)
    assert {k for k in before if before[k] != after[k]} == {"service:CacheManager@pc2"}


def test_changing_a_machine_profile_changes_its_services_and_specific_families(fleet_dir: Path) -> None:
    before = identities(fleet_dir, all_families=True, all_services=True)
    m = fleet_dir / "machines" / "pc2.toml"
    m.write_text(m.read_text().replace('OMP_NUM_THREADS = "4"', 'OMP_NUM_THREADS = "6"'))
    after = identities(fleet_dir, all_families=True, all_services=True)
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all(k.endswith("@pc2") for k in changed)
    assert "family:family-llm-cu121@pc2" in changed
    assert not any(k.startswith("family:") and "@" not in k for k in changed)


def test_plan_json_cli(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(fleet_dir), "plan", "--json", "--machine", "pc2", "--family", "family-web"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["machines"] == ["pc2"]
    assert [s["repository"] for s in data["steps"]] == ["base-python", "base-utils", "base-cpu-pydeps", "family-web"]
    assert all(len(s["identity"]) == 64 for s in data["steps"])


def test_plan_cli_unknown_service_exit_code(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(fleet_dir), "plan", "NoSuchService"]) == 3
    err = capsys.readouterr().err
    assert "unknown service 'NoSuchService'" in err and "Traceback" not in err


def test_registry_and_org_flags_override_environment_and_file(fleet_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from buildtool.__main__ import _fleet, build_parser

    monkeypatch.setenv("FLEET_ORG", "from-env")
    args = build_parser().parse_args(["--root", str(fleet_dir), "--registry", "localhost:5001", "plan"])
    fleet = _fleet(args)
    assert (fleet.settings.registry, fleet.settings.org) == ("localhost:5001", "from-env")
    args = build_parser().parse_args(["--root", str(fleet_dir), "--org", "team", "plan"])
    assert _fleet(args).settings.org == "team"
    args = build_parser().parse_args(["--root", str(fleet_dir), "plan", "--org", "after", "--machine", "pc2"])  # as nox passes it
    assert _fleet(args).settings.org == "after"
