"""The bench's table and the bake it runs: what its rows say and how bake is called. The rows
themselves are measured by `nox -s bench` (`-- --quick` in CI) against a real engine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from buildtool import bake
from buildtool.bench import Report, Row, naive_dockerfile
from buildtool.model.load import load_fleet

BAKE = bake.Bake(docker_config=Path("/state/buildx"), buildx="github.com/docker/buildx 0.29.1", buildkit="v0.13.2 (docker driver, Docker Engine 26.1.5)")


def test_a_row_states_its_ratio_and_whether_it_meets_its_goal() -> None:
    noop = Row(measurement="no-op", toolkit=0.5, baseline="bake, warm", baseline_value=6.0, goal=10.0)
    assert noop.ratio == 12.0 and noop.met is True
    change = Row(measurement="one change", toolkit=6.0, baseline="bake", baseline_value=5.0, goal=1 / 1.1)
    assert round(change.ratio, 3) == 0.833 and change.met is False  # 1.2x bake's time: over the 1.1x goal
    unchanged = Row(measurement="lock an unchanged fleet", toolkit=0.4, baseline="-", baseline_value=None)
    assert unchanged.ratio is None and unchanged.met is None


def test_the_report_names_bake_and_buildkit_and_marks_missed_goals() -> None:
    report = Report(mode="quick", images=9, bake=BAKE, rows=[
        Row(measurement="no-op", toolkit=0.5, baseline="bake, warm", baseline_value=3.0, goal=10.0),
        Row(measurement="sizes", toolkit=60.0, baseline="naive", baseline_value=180.0, unit="MB"),
    ])  # fmt: skip
    md = report.markdown()
    assert "bake: github.com/docker/buildx 0.29.1; BuildKit v0.13.2" in md
    assert "| no-op | 0.50 s | bake, warm | 3.00 s | 6.00x | ≥ 10.00x: NOT met |" in md
    assert "| sizes | 60.00 MB | naive | 180.00 MB | 3.00x |  |" in md
    data = json.loads(json.dumps(report.as_json()))
    assert data["bake"]["buildx"].endswith("0.29.1") and data["rows"][0]["met"] is False


def test_bake_runs_with_host_network_and_reads_only_what_it_is_given() -> None:
    argv = BAKE.argv(Path("/b/docker-bake.json"), "--no-cache", reads=(Path("/ca.crt"), Path("/b")))
    assert argv == ["docker", "buildx", "bake", "--allow=network.host", "--allow=fs.read=/ca.crt", "--allow=fs.read=/b",
                    "-f", "/b/docker-bake.json", "--no-cache"]  # fmt: skip
    assert BAKE.env == {"DOCKER_CONFIG": "/state/buildx"}
    assert bake.Bake(docker_config=None, buildx="", buildkit="").env == {}
    assert bake._version("github.com/docker/buildx 0.29.1+ds1 0.29.1+ds1-4") == (0, 29, 1) >= bake.KNOWN_GOOD
    assert bake._version("github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3") < bake.KNOWN_GOOD


def test_the_naive_dockerfile_is_one_stage_with_everything_installed(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    text = naive_dockerfile(fleet, fleet.services["ServiceRegistry"], "mainpc")
    assert text.count("FROM ") == 1 and "apt-get install -y" in text and "--require-hashes" in text


def test_the_naive_dockerfile_writes_fleet_values_through_the_dockerfile_escapes(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    machine = dataclasses.replace(fleet.machines["mainpc"], profile=(("MODEL_DIR", '/models/$USER "x"'),))
    fleet = dataclasses.replace(fleet, machines={**fleet.machines, "mainpc": machine})
    text = naive_dockerfile(fleet, fleet.services["ServiceRegistry"], "mainpc")
    assert 'MODEL_DIR="/models/\\$USER \\"x\\""' in text  # no substitution, no early end of the value
