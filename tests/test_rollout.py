"""The deploy's decisions, with the command runner faked: the preflight's GPU checks (blueprint R1),
what a failed `up` brings back, and what the deploy folder keeps. Real compose runs in
tests/engine/test_deploy.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from buildtool.adapters.files import owned_dir
from buildtool.core.errors import CommandError, DeployError, MissingToolError
from buildtool.deploy import rollout
from buildtool.model.load import load_fleet
from tests.conftest import REPO

STACK = "# The compose stack of pc2 for release 20261204-aaaaaaa, written by the fleet toolkit: regenerate, do not edit.\nname: \"fleet-pc2\"\n"


class Host:
    """Stands in for host.run: scripted answers by the words in argv ("|" between words; a list:
    one answer per call, the last one repeated), every call recorded."""

    def __init__(self, answers: dict[str, tuple[int, str] | list[tuple[int, str]]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, check: bool = True, timeout=None, **kwargs) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        for words, answer in self.answers.items():
            if all(w in argv for w in words.split("|")):
                code, out = (answer.pop(0) if len(answer) > 1 else answer[0]) if isinstance(answer, list) else answer
                if code == 127:
                    raise MissingToolError(f"{argv[0]} is not installed")
                if check and code:
                    raise CommandError(argv, code, out)
                return subprocess.CompletedProcess(argv, code, out, "")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def ran(self, *words: str) -> list[list[str]]:
        return [c for c in self.calls if all(w in c for w in words)]


@pytest.fixture(scope="module")
def fleet():
    return load_fleet(REPO)


@pytest.mark.parametrize(("answer", "outcome"), [
    ((0, "550.54.14\n"), "NVIDIA driver 550.x"),
    ((0, "525.147.05\n"), "525.x; CUDA 12.1 needs 535"),
    ((127, ""), "GPU checks skipped: this host has no NVIDIA driver"),
])  # fmt: skip
def test_a_gpu_deploy_checks_the_driver_and_names_a_skip(monkeypatch, fleet, answer, outcome) -> None:
    fake = Host({"nvidia-smi": answer, "{{json .Runtimes}}": (0, '{"nvidia":{},"runc":{}}')})
    monkeypatch.setattr(rollout.host, "run", fake)
    try:
        notes = rollout.preflight(fleet, "pc2", ["VisionProcessingAgent", "CacheManager"])
    except DeployError as exc:
        notes = [str(exc)]
        assert exc.exit_code == 16
    assert outcome in notes[0]


def test_a_gpu_deploy_without_the_nvidia_runtime_is_refused(monkeypatch, fleet) -> None:
    monkeypatch.setattr(rollout.host, "run", Host({"nvidia-smi": (0, "550.1\n"), "{{json .Runtimes}}": (0, '{"runc":{}}')}))
    with pytest.raises(DeployError, match="no NVIDIA container runtime"):
        rollout.preflight(fleet, "pc2", ["VisionProcessingAgent"])


def test_a_cpu_deploy_needs_no_gpu_check(monkeypatch, fleet) -> None:
    fake = Host({})
    monkeypatch.setattr(rollout.host, "run", fake)
    assert rollout.preflight(fleet, "pc2", ["CacheManager"]) == ["preflight: GPU checks skipped: no GPU service in this deploy"]
    assert not fake.ran("nvidia-smi")


def test_an_engine_that_does_not_answer_stops_the_preflight(monkeypatch, fleet) -> None:
    monkeypatch.setattr(rollout.host, "run", Host({"docker|info": (1, "Cannot connect to the Docker daemon")}))
    with pytest.raises(DeployError, match="does not answer"):
        rollout.preflight(fleet, "pc2", ["CacheManager"])


def ps(*rows: dict) -> tuple[int, str]:
    return 0, "\n".join(json.dumps(r) for r in rows)


def test_a_failed_up_names_the_service_and_brings_back_what_ran(monkeypatch, tmp_path: Path) -> None:
    folder = owned_dir(tmp_path / "deploy", what="test deploy folder")  # a folder an earlier deploy made
    (folder / "deployed.yaml").write_text("the stack that runs\n")
    unhealthy = {"Service": "cache-manager", "ID": "0123456789ab", "State": "running", "Health": "unhealthy"}
    fake = Host({"up": [(1, "dependency failed to start"), (0, "")], "ps": ps(unhealthy),
                 "inspect": (0, json.dumps({"Log": [{"Output": "connection refused on 8102"}]}))})  # fmt: skip
    monkeypatch.setattr(rollout.host, "run", fake)
    with pytest.raises(DeployError) as info:
        rollout.deploy(folder, STACK, "20261204-aaaaaaa", services=[], overrides=[], timeout=90)
    message = str(info.value)
    assert "cache-manager: running, unhealthy; last health check: connection refused on 8102" in message
    assert "runs the stack that ran before again" in message
    ups = fake.ran("up")
    assert len(ups) == 2 and str(folder / "deployed.yaml") in ups[1]  # the second up is the stack that ran before
    assert (folder / "deployed.yaml").read_text() == "the stack that runs\n"  # still what runs
    assert not fake.ran("down")


@pytest.mark.parametrize("state", ["exited", "restarting"])
def test_a_failed_first_deploy_removes_its_containers_and_never_volumes(monkeypatch, tmp_path: Path, state: str) -> None:
    fake = Host({"up": (1, "container cache-manager exited (137)"), "ps": ps({"Service": "cache-manager", "ID": "0123456789ab", "State": state,
                                                                             "Health": "", "ExitCode": 137})})  # fmt: skip
    monkeypatch.setattr(rollout.host, "run", fake)
    with pytest.raises(DeployError, match=f"cache-manager: {state}, exit code 137"):
        rollout.deploy(tmp_path / "deploy", STACK, "20261204-aaaaaaa", services=[], overrides=[], timeout=90)
    downs = fake.ran("down")
    assert len(downs) == 1 and "-v" not in downs[0] and "--volumes" not in downs[0]
    assert not (tmp_path / "deploy" / "deployed.yaml").exists()


def test_a_deploy_that_comes_up_keeps_the_stack_it_replaced_for_rollback(monkeypatch, tmp_path: Path) -> None:
    folder = owned_dir(tmp_path / "deploy", what="test deploy folder")  # a folder an earlier deploy made
    (folder / "deployed.yaml").write_text("the old stack\n")
    healthy = {"Service": "cache-manager", "ID": "0123456789ab", "State": "running", "Health": "healthy"}
    monkeypatch.setattr(rollout.host, "run", Host({"ps": ps(healthy)}))
    outcome = rollout.deploy(folder, STACK, "20261204-aaaaaaa", services=[], overrides=[], timeout=90)
    assert outcome.kept == ["cache-manager"] and outcome.started == []
    assert (folder / "previous.yaml").read_text() == "the old stack\n" and (folder / "deployed.yaml").read_text() == STACK
