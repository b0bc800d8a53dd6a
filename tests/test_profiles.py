"""Machine profiles whose settings do what they say: every key has a reader, or is declared
informational; the blueprint's misspellings are named; the command line shows the warnings; and the
torch smoke check fails when torch does not apply PYTORCH_CUDA_ALLOC_CONF."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest

from buildtool.cli import commands, console
from buildtool.cli.main import main
from buildtool.model.load import load_fleet
from buildtool.model.profiles import GENERATED_READERS, KNOWN_READERS, MISSPELLINGS, check_profile
from buildtool.model.schema import Collector
from buildtool.model.types import GENERATED_PROFILE_KEYS
from tests.conftest import REPO
from tests.test_config_corpus import replace

PC2 = "machines/pc2.toml"
NAME = "PYTORCH_CUDA_ALLOC_CONF"
FIX = "Rename it, or list it in informational = [...] if your own services read it"


def warnings_of(root: Path) -> list[str]:
    """The fleet's warnings about machine profiles (the shipped fleet also warns of a family past its end of life)."""
    return [str(w) for w in load_fleet(root).warnings if w.key != "end_of_life"]


def profile_lines(text: str) -> list[str]:
    """The lines of ``text`` about profiles: not the family end-of-life notice, not the markers
    that stop and resume workflow commands around a message's readable copy."""
    lines = [line for line in text.splitlines() if not line.startswith("::stop-commands::")]
    markers = {f"::{line.split('::')[2]}::" for line in text.splitlines() if line.startswith("::stop-commands::")}
    return [line for line in lines if "end_of_life" not in line and line not in markers]


def test_the_shipped_machines_name_variables_their_programs_read() -> None:
    for machine in load_fleet(REPO).machines.values():
        profile = dict(machine.profile)
        assert {"CUDA_VISIBLE_DEVICES", NAME} <= set(profile)
        assert not set(profile) & set(MISSPELLINGS)
        assert machine.informational == ("MODEL_EVICT_THRESHOLD_PCT",)


def test_the_blueprint_spellings_warn_and_name_the_real_variable(fleet_dir: Path) -> None:
    replace(PC2, "CUDA_VISIBLE_DEVICES =", "GPU_VISIBLE_DEVICES =")(fleet_dir)
    replace(PC2, f"{NAME} =", "TORCH_CUDA_ALLOC_CONF =")(fleet_dir)
    assert warnings_of(fleet_dir) == [  # a warning: the fleet still loads
        f"{PC2}: profile.GPU_VISIBLE_DEVICES: no program in the images reads it, but CUDA_VISIBLE_DEVICES is read by the CUDA runtime. {FIX}",
        f"{PC2}: profile.TORCH_CUDA_ALLOC_CONF: no program in the images reads it, but {NAME} is read by PyTorch's CUDA caching allocator. {FIX}",
    ]


def test_an_unknown_key_warns_and_an_informational_one_does_not(fleet_dir: Path) -> None:
    replace(PC2, 'OMP_NUM_THREADS = "4"', 'OMP_NUM_THREADS = "4"\nBATCH_SIZE = "8"\nomp_num_threads = "4"')(fleet_dir)
    assert warnings_of(fleet_dir) == [
        f"{PC2}: profile.BATCH_SIZE: no program in the images reads it (buildtool/model/profiles.py lists the variables programs read). "
        "Rename it to the one its program reads, or list it in informational = [...] if your own services read it",
        f"{PC2}: profile.omp_num_threads: no program in the images reads it, but OMP_NUM_THREADS is read by "
        f"OpenMP (torch's CPU thread pool) and numpy's OpenBLAS when OPENBLAS_NUM_THREADS is unset. {FIX}",
    ]
    replace(PC2, 'informational = ["MODEL_EVICT_THRESHOLD_PCT"]', 'informational = ["MODEL_EVICT_THRESHOLD_PCT", "BATCH_SIZE"]')(fleet_dir)
    assert [w.split(": ")[1] for w in warnings_of(fleet_dir)] == ["profile.omp_num_threads"]


def test_an_undeclared_service_setting_warns(fleet_dir: Path) -> None:
    replace(PC2, 'informational = ["MODEL_EVICT_THRESHOLD_PCT"]', "informational = []")(fleet_dir)
    (warning,) = warnings_of(fleet_dir)
    assert warning.startswith(f"{PC2}: profile.MODEL_EVICT_THRESHOLD_PCT: no program in the images reads it")


def test_check_profile_judges_nothing_already_reported() -> None:
    c = Collector(Path("/nonexistent"))
    check_profile(c, "machines/m.toml", None, ["NOT_IN_A_BROKEN_PROFILE"])
    check_profile(c, "machines/m.toml", ["UNREAD"], None)
    assert c.problems == [] and c.warnings == []
    check_profile(c, "machines/m.toml", ["UNREAD", "OMP_NUM_THREADS"], ())
    assert [(w.key, w.message.split(" (")[0]) for w in c.warnings] == [("profile.UNREAD", "no program in the images reads it")]


def test_the_reader_tables_agree() -> None:
    assert set(GENERATED_READERS) == set(GENERATED_PROFILE_KEYS)
    assert not set(GENERATED_READERS) & set(KNOWN_READERS)
    assert set(MISSPELLINGS.values()) <= set(KNOWN_READERS) and not set(MISSPELLINGS) & set(KNOWN_READERS)


# --- the command line ---------------------------------------------------------------------------


def test_validate_prints_the_warnings_on_stderr_and_succeeds(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(PC2, "CUDA_VISIBLE_DEVICES =", "GPU_VISIBLE_DEVICES =")(fleet_dir)
    assert main(["--root", str(fleet_dir), "validate"]) == 0
    out, err = capsys.readouterr()
    assert "fleet is valid: 9 families, 2 machines, 63 services, 2 warning(s)" in out and "warning:" not in out
    assert profile_lines(err) == [
        f"warning: {PC2}: profile.GPU_VISIBLE_DEVICES: no program in the images reads it, but CUDA_VISIBLE_DEVICES is read by the CUDA runtime. {FIX}"
    ]


def test_in_github_actions_a_warning_is_also_an_annotation_on_the_file(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "IN_GITHUB", True)
    replace(PC2, "CUDA_VISIBLE_DEVICES =", "GPU_VISIBLE_DEVICES =")(fleet_dir)
    assert main(["--root", str(fleet_dir), "validate"]) == 0
    annotation = profile_lines(capsys.readouterr().err)[-1]
    assert annotation.startswith(f"::warning file={PC2}::{PC2}: profile.GPU_VISIBLE_DEVICES: no program")


def test_warnings_are_printed_once_per_command(fleet_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    replace(PC2, f"{NAME} =", "TORCH_CUDA_ALLOC_CONF =")(fleet_dir)
    monkeypatch.setattr(console, "IN_GITHUB", True)
    args = argparse.Namespace(root=str(fleet_dir))
    commands.fleet_of(args)
    commands.fleet_of(args)  # a command that reads the fleet again
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.split(": profile.")[0] for line in profile_lines(err)] == ["warning: machines/pc2.toml", "::warning file=machines/pc2.toml::machines/pc2.toml"]


# --- the smoke check that torch applies PYTORCH_CUDA_ALLOC_CONF ---------------------------------


def torch_check() -> str:
    (check,) = [c for c in load_fleet(REPO).families["family-torch-cu121"].smoke if NAME in c.name]
    assert check.gpu and check.run[:2] == ("python", "-c")
    return check.run[2]


def fake_torch(reads: str) -> types.ModuleType:
    """torch's allocator as far as the check sees it: on CUDA's first use it parses ``reads``
    (torch 2.2 reads PYTORCH_CUDA_ALLOC_CONF); memory_stats() is {} before that."""
    torch = types.ModuleType("torch")
    stats: dict[str, int] = {}

    def zeros(*shape: int, device: str) -> None:
        found = re.search(r"max_split_size_mb:(\d+)", os.environ.get(reads, ""))
        stats["max_split_size"] = int(found.group(1)) * 1024 * 1024 if found else -1

    torch.zeros = zeros  # type: ignore[attr-defined]
    torch.cuda = types.SimpleNamespace(memory_stats=lambda: dict(stats))  # type: ignore[attr-defined]
    return torch


def run_check(monkeypatch: pytest.MonkeyPatch, *, profile: dict[str, str] | None, env: dict[str, str], reads: str = NAME) -> None:
    for name in (NAME, "SERVICE_NAME"):
        monkeypatch.setenv(name, "")  # restored to unset afterwards, whatever the check sets
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(sys.modules, "torch", fake_torch(reads))

    def image_open(path: str, *args: object, **kwargs: object) -> io.StringIO:
        assert path == "/etc/machine-profile.json"
        if profile is None:
            raise FileNotFoundError(path)
        return io.StringIO(json.dumps(profile))

    exec(compile(torch_check(), "smoke check", "exec"), {"__name__": "__main__", "open": image_open})


@pytest.mark.parametrize(
    ("profile", "env"),
    [
        pytest.param(None, {}, id="family-image-without-profile"),
        pytest.param({"MACHINE": "pc2", NAME: "max_split_size_mb:32"}, {}, id="machine-specific-family"),
        pytest.param({"MACHINE": "pc2", NAME: "max_split_size_mb:32"}, {"SERVICE_NAME": "S", NAME: "max_split_size_mb:32"}, id="service-image"),
        pytest.param({"MACHINE": "edge"}, {"SERVICE_NAME": "S"}, id="service-on-a-machine-without-the-setting"),
    ],
)
def test_the_torch_check_passes_when_torch_applies_the_setting(monkeypatch: pytest.MonkeyPatch, profile: dict | None, env: dict) -> None:
    run_check(monkeypatch, profile=profile, env=env)


@pytest.mark.parametrize(
    ("profile", "env", "reads", "fragment"),
    [
        pytest.param(None, {}, "TORCH_CUDA_ALLOC_CONF", "torch reports max_split_size -1, expected 50331648", id="torch-reads-another-name"),
        pytest.param({NAME: "max_split_size_mb:64"}, {}, "TORCH_CUDA_ALLOC_CONF", "expected 67108864", id="profile-value-not-applied"),
        pytest.param({"TORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}, {}, NAME, "which torch does not read", id="profile-misspelt"),
        pytest.param({NAME: "max_split_size_mb:64"}, {"SERVICE_NAME": "S"}, NAME, "environment and profile differ", id="service-env-lacks-it"),
    ],
)
def test_the_torch_check_fails_when_torch_does_not_apply_it(
    monkeypatch: pytest.MonkeyPatch, profile: dict | None, env: dict, reads: str, fragment: str
) -> None:
    with pytest.raises(AssertionError, match=re.escape(fragment)):
        run_check(monkeypatch, profile=profile, env=env, reads=reads)
