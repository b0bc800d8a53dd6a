"""The command line and the settings it builds: flags over the environment over fleet.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildtool import settings
from buildtool.cli.commands import settings_of
from buildtool.cli.main import build_parser, main
from buildtool.core import errors
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


@pytest.fixture
def no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test fails if the command contacts the registry (or brings one up)."""
    from buildtool import pipeline
    from buildtool.adapters import registry

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the registry was contacted")

    monkeypatch.setattr(registry.Registry, "__init__", refuse)
    monkeypatch.setattr(pipeline, "bring_up", refuse)


@pytest.mark.parametrize("selection", [[], ["--machine", "pc2"], ["--registry", "127.0.0.1:5999"]])
def test_rollback_without_a_selection_refuses_before_the_registry(fleet_dir: Path, capsys: pytest.CaptureFixture[str], no_registry: None,
                                                                  selection: list[str]) -> None:  # fmt: skip
    assert main(["--root", str(fleet_dir), "rollback", *selection]) == 3
    err = capsys.readouterr().err
    assert "rollback moves only what it is told to" in err and "No tag was moved" in err and "Traceback" not in err


@pytest.mark.parametrize("ref", ["refs/heads/main", "refs/heads/feature/x", "refs/pull/7/merge", "refs/tags/v1", ""])
def test_a_ci_run_of_any_ref_but_main_has_its_own_org(fleet_dir: Path, ref: str) -> None:
    env = {"GITHUB_ACTIONS": "true", **({"GITHUB_REF": ref} if ref else {})}
    run = settings.from_sources(load_fleet(fleet_dir), env, org="acme")
    if ref == "refs/heads/main":
        assert (run.org, run.may_release) == ("acme", True)
    else:  # identity tags and the cache of another ref never land in main's org
        assert run.may_release is False and run.org.startswith("acme/branch-") and len(run.org) == len("acme/branch-") + 12
        assert settings.ORG_RE.fullmatch(run.org) and run.cache_ref("x").path.startswith(run.org + "/")
    assert settings.from_sources(load_fleet(fleet_dir), {"GITHUB_REF": "refs/heads/x"}, org="acme").org == "acme"  # outside Actions
    other = settings.from_sources(load_fleet(fleet_dir), {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/heads/y"}, org="acme")
    assert ref == "refs/heads/main" or other.org != run.org  # each ref its own


@pytest.mark.parametrize("argv", [["publish", "--all"], ["rollback", "ServiceRegistry"], ["prune", "--registry-only"], ["build", "ServiceRegistry"]])
def test_a_ci_run_of_another_ref_moves_and_deletes_nothing(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_registry: None, argv: list[str]
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_REF", "refs/heads/feature")
    assert main(["--root", str(fleet_dir), *argv]) == 15
    err = capsys.readouterr().err
    assert "runs only for refs/heads/main" in err and "refs/heads/feature" in err and "Traceback" not in err


def test_only_a_ci_run_of_main_may_release(fleet_dir: Path) -> None:
    run = settings.from_sources(load_fleet(fleet_dir), {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/heads/feature"})
    with pytest.raises(errors.RefError):
        run.require_release("publish")
    main_run = settings.from_sources(load_fleet(fleet_dir), {"GITHUB_ACTIONS": "true", "GITHUB_REF": "refs/heads/main"})
    main_run.require_release("publish")


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


def test_rollback_signs_in_as_FLEET_REGISTRY_USER(fleet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildtool.adapters import registry

    seen: dict[str, object] = {}

    def capture(self, address: str, **kwargs: object) -> None:
        seen.update(kwargs, address=address)
        raise errors.EngineError("stop here")

    monkeypatch.setattr(registry.Registry, "__init__", capture)
    monkeypatch.setenv("FLEET_REGISTRY_USER", "alice")
    monkeypatch.setenv("FLEET_REGISTRY_TOKEN", "t0ken")
    assert main(["--root", str(fleet_dir), "rollback", "ServiceRegistry"]) == errors.EngineError.exit_code
    assert seen["user"] == "alice" and seen["token"] == "t0ken"


def test_workflow_commands_escape_data_and_properties(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from buildtool.cli import console

    assert console.escape_data("50% done\r\nnext: a,b") == "50%25 done%0D%0Anext: a,b"
    assert console.escape_property("dir:a,b%\n") == "dir%3Aa%2Cb%25%0A"
    monkeypatch.setattr(console, "IN_GITHUB", True)
    console.error("line one\n::warning::forged", file="families/x,line=1:y.toml")
    lines = capsys.readouterr().err.splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("::stop-commands::"))
    resume = lines.index(f"::{lines[stop].split('::')[2]}::")
    assert "::warning::forged" in lines[stop:resume]  # the readable copy: shown while commands are stopped
    commands = [line for line in lines[:stop] + lines[resume + 1 :] if line.startswith("::")]
    assert commands == ["::error file=families/x%2Cline=1%3Ay.toml::line one%0A::warning::forged"]
