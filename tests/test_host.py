"""The one runner of external programs: what environment they get, and where they are found."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from buildtool.adapters import host

SECRETS = {"FLEET_REGISTRY_TOKEN": "reg-t0ken", "FLEET_PIP_INDEX_URL": "https://u:p@index.example/simple", "GITHUB_TOKEN": "ghs_x",
           "AWS_SECRET_ACCESS_KEY": "k", "DOCKER_PASSWORD": "p"}  # fmt: skip
DUMP = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


def test_programs_and_daemons_get_no_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, real_subprocess: None) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FLEET_ORG", "acme")
    seen = json.loads(host.run(DUMP).stdout)
    assert not set(SECRETS) & set(seen) and seen["FLEET_ORG"] == "acme" and seen["PATH"] == os.environ["PATH"]
    explicit = json.loads(host.run(DUMP, env={"GIT_CONFIG_VALUE_0": "AUTHORIZATION: basic x"}, keep=["FLEET_PIP_INDEX_URL"]).stdout)
    assert explicit["GIT_CONFIG_VALUE_0"] == "AUTHORIZATION: basic x"  # what a call hands over on purpose
    assert explicit["FLEET_PIP_INDEX_URL"] == SECRETS["FLEET_PIP_INDEX_URL"] and "FLEET_REGISTRY_TOKEN" not in explicit
    monkeypatch.setenv("TRIVY_SEVERITY", "LOW")
    dropped = json.loads(host.run(DUMP, env={"TRIVY_SKIP_VERSION_CHECK": "true"}, drop=("TRIVY_",)).stdout)
    assert "TRIVY_SEVERITY" not in dropped and dropped["TRIVY_SKIP_VERSION_CHECK"] == "true"  # the toolkit's own settings stay
    spawned = host.spawn(DUMP, stdout=host.PIPE)
    out, _ = spawned.communicate(timeout=30)
    assert not set(SECRETS) & set(json.loads(out))
    daemon = host.start_detached([*DUMP], tmp_path / "daemon.log")
    daemon.wait(timeout=30)
    assert not set(SECRETS) & set(json.loads((tmp_path / "daemon.log").read_text()))


def test_a_build_hands_its_index_secret_to_buildx_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from buildtool.adapters import engine

    spawned: list[tuple[list[str], tuple[str, ...]]] = []

    class Stop(Exception):
        pass

    def spawn(argv, *, keep=(), **kwargs):
        spawned.append((list(argv), tuple(keep)))
        raise Stop

    monkeypatch.setattr(host, "spawn", spawn)
    argv = ["docker", "buildx", "build", "--secret", "id=pip_ca,src=/ca.crt", "--secret", "id=pip_index,env=FLEET_PIP_INDEX_URL", "ctx"]
    with pytest.raises(Stop), open(os.devnull, "wb") as log:
        engine._build_and_load(argv, log)
    assert spawned == [(argv, ("FLEET_PIP_INDEX_URL",))]


def test_tools_are_found_next_to_the_interpreter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    tool = venv_bin / "trivy"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated
    assert host.which("trivy") == str(tool)
    assert host.which("sh") in ("/usr/bin/sh", "/bin/sh")
    assert host.which("no-such-tool-here") is None
