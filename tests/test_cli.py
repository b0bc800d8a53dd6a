"""The command line and the settings it builds: flags over the environment over fleet.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildtool import settings
from buildtool.cli.commands import settings_of
from buildtool.cli.main import build_parser, main
from buildtool.core.errors import ConfigError
from buildtool.model.load import load_fleet


def test_plan_json(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(fleet_dir), "plan", "--json", "--machine", "pc2", "--family", "family-web"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["machines"] == ["pc2"]
    assert [s["repository"] for s in data["steps"]] == ["base-python", "base-utils", "base-cpu-pydeps", "family-web"]


def test_unknown_service_is_a_usage_error(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(fleet_dir), "plan", "NoSuchService"]) == 3
    err = capsys.readouterr().err
    assert "unknown service 'NoSuchService'" in err and "Traceback" not in err


@pytest.mark.parametrize("selection", [[], ["--machine", "pc2"], ["--registry", "127.0.0.1:5999"]])
def test_rollback_without_a_selection_refuses_before_the_registry(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, selection: list[str]
) -> None:
    from buildtool.adapters import registry

    def no_registry(*args: object, **kwargs: object) -> None:
        raise AssertionError("the registry was contacted")

    monkeypatch.setattr(registry.Registry, "__init__", no_registry)
    assert main(["--root", str(fleet_dir), "rollback", *selection]) == 3
    err = capsys.readouterr().err
    assert "rollback moves only what it is told to" in err and "No tag was moved" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["--config/x:1", "-v/trivy-db:2", "a-/trivy-db:2", "-x:2"])
def test_an_image_reference_never_starts_like_an_option(fleet_dir: Path, value: str) -> None:
    fleet = load_fleet(fleet_dir)
    with pytest.raises(ConfigError, match="FLEET_TRIVY_DB_REPOSITORY"):
        settings.from_sources(fleet, {"FLEET_TRIVY_DB_REPOSITORY": value})
    assert settings.from_sources(fleet, {"FLEET_TRIVY_DB_REPOSITORY": "127.0.0.1:5000/x/trivy-db:2"}).trivy_db_repository


def test_flags_override_the_environment_which_overrides_the_fleet(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    env = {"FLEET_ORG": "from-env"}
    got = settings.from_sources(fleet, env, registry="localhost:5001")
    assert (got.registry, got.org) == ("localhost:5001", "from-env")
    assert settings.from_sources(fleet, env, org="team").org == "team"
    assert settings.from_sources(fleet, {}).org == fleet.settings.org == "fleet"
    args = build_parser().parse_args(["--root", str(fleet_dir), "plan", "--org", "after", "--machine", "pc2"])  # as nox passes it
    assert settings_of(args, fleet).org == "after"


def test_defaults_come_from_data(fleet_dir: Path) -> None:
    got = settings.from_sources(load_fleet(fleet_dir), {})
    assert got.state_dir == load_fleet(fleet_dir).root / "build"
    assert got.ca_bundle == Path(str(settings.defaults()["ca_bundle"]))
    assert got.jobs == settings.defaults()["jobs"] and got.pip_index_env == ""


def test_bad_values_name_where_they_came_from(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    with pytest.raises(ConfigError) as exc:
        settings.from_sources(fleet, {"FLEET_ORG": "Bad Org"}, registry="no spaces allowed")
    assert [(p.file, p.key) for p in exc.value.problems] == [("command line", "--registry"), ("environment", "FLEET_ORG")]


def plan_keys(fleet_dir: Path, *argv: str) -> list[str]:
    from buildtool.cli.commands import plan_of

    args = build_parser().parse_args(["--root", str(fleet_dir), "plan", *argv])
    return [s.key for s in plan_of(load_fleet(fleet_dir), args).steps]


def test_ci_selections(fleet_dir: Path) -> None:
    """The workflow's per-machine service jobs: named services where they run, within the groups built."""
    assert plan_keys(fleet_dir, "--machine", "pc2", "--skip-unplaced", "ServiceRegistry") == []  # runs on mainpc only
    keys = plan_keys(fleet_dir, "--machine", "mainpc", "--skip-unplaced", "ServiceRegistry")
    assert keys[-1] == "service:ServiceRegistry@mainpc"
    cpu = plan_keys(fleet_dir, "--within-groups", "cpu", "--skip-unplaced", "--all")
    assert "service:ServiceRegistry@mainpc" in cpu and not any("cu121" in k or "legacy" in k or "NLUAgent" in k for k in cpu)
    assert not any("STTService" in k for k in cpu)  # a GPU service is outside the cpu group
    families = plan_keys(fleet_dir, "--within-groups", "cpu legacy")
    assert "family:legacy-py310-cpu" in families and "family:base-gpu-cu121" not in families


def test_the_cache_mode_is_min_unless_a_run_asks_for_max(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    assert settings.from_sources(fleet, {}).cache_mode == "min"
    assert settings.from_sources(fleet, {"FLEET_CACHE_MODE": "max"}).cache_mode == "max"
    for bad in ("MAX", "max,ignore-error=false", "min mode=max"):
        with pytest.raises(ConfigError, match="FLEET_CACHE_MODE"):
            settings.from_sources(fleet, {"FLEET_CACHE_MODE": bad})
