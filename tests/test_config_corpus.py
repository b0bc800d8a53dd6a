"""A corpus of malformed fleet inputs: each one exits 2 and names the file and key at fault."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildtool.__main__ import main


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[Path], None]
    file: str
    key: str
    fragment: str


def replace(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        text = path.read_text()
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1))

    return apply


def write(rel: str, text: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / rel).write_text(text)

    return apply


def append(rel: str, text: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        path.write_text(path.read_text() + text)

    return apply


def prepend(rel: str, text: str) -> Callable[[Path], None]:
    """Top-level keys must come before the file's first [table]."""

    def apply(root: Path) -> None:
        path = root / rel
        path.write_text(text + path.read_text())

    return apply


def both(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        for fn in fns:
            fn(root)

    return apply


SVC = "services/ServiceRegistry.toml"
WEB = "services/UnifiedWebAgent.toml"
TORCH_SVC = "services/STTService.toml"

CASES = [
    Case("toml-syntax", append(SVC, "port = = 1\n"), SVC, "", "not valid TOML"),
    Case("service-unknown-key", replace(SVC, "health_port", "helth_port"), SVC, "helth_port", "did you mean 'health_port'"),
    Case("family-unknown-key", prepend("families/family-web.toml", "requirement = []\n"), "families/family-web.toml", "requirement",
         "did you mean 'requirements'"),
    Case("machine-unknown-key", replace("machines/pc2.toml", "vram_gb", "vram"), "machines/pc2.toml", "vram", "did you mean 'vram_gb'"),
    Case("settings-unknown-key", replace("fleet.toml", 'org = "fleet"', 'orgs = "fleet"'), "fleet.toml", "settings.orgs", "did you mean 'org'"),
    Case("smoke-unknown-key", replace("families/base-utils.toml", 'run = ["test"', 'cmd = ["test"'), "families/base-utils.toml", "smoke[1].cmd", "unknown key"),
    Case("port-as-string", replace(SVC, "port = 7200", 'port = "7200"'), SVC, "port", "must be an integer"),
    Case("machines-as-string", replace(SVC, 'machines = ["mainpc"]', 'machines = "mainpc"'), SVC, "machines", "list of strings"),
    Case("gpu-as-string", prepend("families/family-web.toml", 'gpu = "yes"\n'), "families/family-web.toml", "gpu", "true or false"),
    Case("service-without-family", replace(SVC, 'family = "family-web"', ""), SVC, "family", "is required"),
    Case("service-without-port", replace(SVC, "port = 7200", ""), SVC, "port", "is required"),
    Case("unknown-family", replace(SVC, '"family-web"', '"family-webb"'), SVC, "family", "did you mean 'family-web'"),
    Case("unknown-machine", replace(SVC, '["mainpc"]', '["mainpcc"]'), SVC, "machines[0]", "did you mean 'mainpc'"),
    Case("unknown-parent", replace("families/family-web.toml", '"base-cpu-pydeps"', '"base-cpu-pydep"'), "families/family-web.toml", "parent",
         "did you mean 'base-cpu-pydeps'"),
    Case("cycle-of-two", both(
        replace("families/base-utils.toml", 'parent = "base-python"', 'parent = "base-cpu-pydeps"'),
    ), "families/base-cpu-pydeps.toml", "parent", "base-cpu-pydeps -> base-utils -> base-cpu-pydeps"),
    Case("cycle-of-three", replace("families/base-utils.toml", 'parent = "base-python"', 'parent = "family-web"'),
         "families/base-cpu-pydeps.toml", "parent", " -> "),
    Case("parent-and-root", append("families/base-utils.toml", '\n[root]\nsource = "bootstrap"\n'), "families/base-utils.toml", "parent", "exactly one"),
    Case("neither-parent-nor-root", replace("families/base-utils.toml", 'parent = "base-python"', ""), "families/base-utils.toml", "parent", "exactly one"),
    Case("python-not-a-version", replace("families/base-python.toml", 'python = "3.11"', 'python = "3.x"'), "families/base-python.toml", "python",
         "not a Python version"),
    Case("python-without-dot", replace("families/base-python.toml", 'python = "3.11"', 'python = "311"'), "families/base-python.toml", "python",
         "not a Python version"),
    Case("child-python-differs", prepend("families/base-utils.toml", 'python = "3.12"\n'), "families/base-utils.toml", "python", "keeps its parent's Python"),
    Case("bootstrap-wrong-python",
         replace("families/legacy-py310-cpu.toml", 'source = "image"', 'source = "bootstrap"\nsuite = "bookworm"\npackages = ["tini"]'),
         "families/legacy-py310-cpu.toml", "root.suite", "ships Python 3.11"),
    Case("unknown-root-source", replace("families/base-python.toml", 'source = "bootstrap"', 'source = "docker"'), "families/base-python.toml", "root.source",
         "use \"bootstrap\" or \"image\""),
    Case("unknown-suite", replace("families/base-python.toml", 'suite = "bookworm"', 'suite = "bookwrm"'), "families/base-python.toml", "root.suite",
         "did you mean 'bookworm'"),
    Case("image-without-tag", replace("families/legacy-py310-cpu.toml", '"python:3.10-slim-bookworm"', '"python"'), "families/legacy-py310-cpu.toml",
         "root.image", "no tag or digest"),
    Case("malformed-requirement", replace("families/family-web.toml", '"gunicorn==23.0.0"', '"gunicorn=>23"'), "families/family-web.toml",
         "requirements[2]", "malformed requirement"),
    Case("duplicate-requirement", replace("families/family-web.toml", '"gunicorn==23.0.0"', '"gunicorn==23.0.0", "Gunicorn"'),
         "families/family-web.toml", "requirements[3]", "listed twice"),
    Case("url-requirement", replace("families/family-web.toml", '"gunicorn==23.0.0"', '"gunicorn @ https://example.invalid/g.whl"'),
         "families/family-web.toml", "requirements[2]", "direct URLs"),
    Case("bad-debian-package", replace("families/base-utils.toml", '"dumb-init"', '"Dumb Init"'), "families/base-utils.toml", "os_packages[1]",
         "not a Debian package name"),
    Case("port-clash", replace(WEB, "port = 7126", "port = 7124"), WEB, "port", "already used by RemoteConnectorAgent"),
    Case("health-port-clash-with-other-port", replace(WEB, "health_port = 8126", "health_port = 7124"), WEB, "health_port", "already used"),
    Case("port-equals-health-port", replace(SVC, "health_port = 8200", "health_port = 7200"), SVC, "health_port", "own port"),
    Case("privileged-port", replace(SVC, "port = 7200", "port = 80"), SVC, "port", "privileged port"),
    Case("image-name-collision", write("services/Service_Registry.toml", 'family = "family-web"\nmachines = ["pc2"]\nport = 7300\nhealth_port = 8300\n'),
         "services/Service_Registry.toml", "", "same image name 'service-registry'"),
    Case("vram-too-big", replace("services/VisionProcessingAgent.toml", "vram_gb = 9", "vram_gb = 16"),
         "services/VisionProcessingAgent.toml", "vram_gb", "pc2 has 12 GB"),
    Case("gpu-service-on-cpu-machine", both(
        write("machines/edge.toml", 'description = "CPU-only box"\n'),
        replace(TORCH_SVC, 'machines = ["mainpc"]', 'machines = ["mainpc", "edge"]'),
    ), TORCH_SVC, "machines[1]", "cannot run on edge, which has no GPU"),
    Case("vram-on-cpu-service", append(SVC, "vram_gb = 2\n"), SVC, "vram_gb", "uses no GPU"),
    Case("source-escapes-repo", append(SVC, 'source = "../outside"\n'), SVC, "source", "escapes the repository"),
    Case("source-absolute", append(SVC, 'source = "/etc"\n'), SVC, "source", "escapes the repository"),
    Case("source-missing", append(SVC, 'source = "agents/nope"\n'), SVC, "source", "not a directory"),
    Case("bad-env-name", append(SVC, '[env]\n"BAD-NAME" = "x"\n'), SVC, "env", "invalid entries"),
    Case("bad-cuda-arch", replace("machines/pc2.toml", 'cuda_arch = "8.6"', 'cuda_arch = "sm_86"'), "machines/pc2.toml", "cuda_arch", "compute capability"),
    Case("empty-smoke-run", replace("families/base-utils.toml", 'run = ["test", "-f", "/usr/share/zoneinfo/Europe/Berlin"]', "run = []"),
         "families/base-utils.toml", "smoke[1].run", "must name a command"),
    Case("machine-specific-dropped", write("families/family-llm-extra.toml", 'description = "x"\nparent = "family-llm-cu121"\nmachine_specific = false\n'),
         "families/family-llm-extra.toml", "machine_specific", "built per machine"),
    Case("empty-machines", replace(SVC, 'machines = ["mainpc"]', "machines = []"), SVC, "machines", "at least one machine"),
    Case("bad-service-file-name", write("services/1Bad.toml", 'family = "family-web"\n'), "services/1Bad.toml", "", "must start with a letter"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_reported_with_file_and_key(case: Case, fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case.mutate(fleet_dir)
    code = main(["--root", str(fleet_dir), "validate"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in " ".join(err.split()).split(" - ") if case.file in line]
    assert lines, f"{case.file} not named in:\n{err}"
    assert any(f"{case.file}: {case.key}" in line and case.fragment in line for line in lines), err


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


def test_all_problems_are_reported_at_once(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(SVC, "health_port", "helth_port")(fleet_dir)
    replace("machines/pc2.toml", 'cuda_arch = "8.6"', 'cuda_arch = "x"')(fleet_dir)
    replace("families/family-web.toml", '"gunicorn==23.0.0"', '"gunicorn=>23"')(fleet_dir)
    assert main(["--root", str(fleet_dir), "validate"]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s)" in err  # helth_port is unknown, so health_port is also missing
    for file in (SVC, "machines/pc2.toml", "families/family-web.toml"):
        assert file in err


def test_report_is_stable(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(SVC, "health_port", "helth_port")(fleet_dir)
    replace(WEB, "port = 7126", "port = 7124")(fleet_dir)
    main(["--root", str(fleet_dir), "validate"])
    first = capsys.readouterr().err
    main(["--root", str(fleet_dir), "validate"])
    assert capsys.readouterr().err == first


def test_shipped_fleet_is_valid(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(fleet_dir), "validate"]) == 0
    assert "63 services" in capsys.readouterr().out
