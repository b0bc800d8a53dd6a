"""A corpus of malformed fleet inputs: each one exits 2 and names the file, the key and the fault.

Every case mutates a writable copy of the shipped fleet (``fleet_dir``) with one or two small
text edits, runs ``python -m buildtool --root COPY validate`` in-process and checks that

* the exit code is 2 (ConfigError) and no traceback is printed,
* one reported problem reads ``FILE: KEY: MESSAGE`` with the expected file and key and a
  message containing the expected fragment,
* where ``count`` is given, exactly that many problems are reported (no cascade of follow-ups).

Follow-up problems are not reported: one fault gives one problem (checked where ``count`` is set).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from buildtool.cli.main import main

Mutation = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    file: str  # relative posix path the problem must be reported against
    key: str  # the exact key of the problem ("" for a problem with the whole file)
    fragment: str  # must occur in the message
    count: int | None = None  # exact number of problems reported, when that is worth pinning
    marks: tuple[Any, ...] = field(default=())


# --- mutation helpers -------------------------------------------------------------------------


def replace(rel: str, old: str, new: str) -> Mutation:
    """Replace the first occurrence of ``old`` (which must be there) in ``rel``."""

    def apply(root: Path) -> None:
        path = root / rel
        text = path.read_text()
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1))

    return apply


def write(rel: str, text: str) -> Mutation:
    def apply(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)

    return apply


def write_bytes(rel: str, data: bytes) -> Mutation:
    def apply(root: Path) -> None:
        (root / rel).write_bytes(data)

    return apply


def append(rel: str, text: str) -> Mutation:
    """Append at the end of the file: lands in the file's last table, or top level if it has none."""

    def apply(root: Path) -> None:
        path = root / rel
        path.write_text(path.read_text() + text)

    return apply


def prepend(rel: str, text: str) -> Mutation:
    """Top-level keys must come before the file's first [table]."""

    def apply(root: Path) -> None:
        path = root / rel
        path.write_text(text + path.read_text())

    return apply


def delete(rel: str) -> Mutation:
    def apply(root: Path) -> None:
        (root / rel).unlink()

    return apply


def mkdir(rel: str) -> Mutation:
    def apply(root: Path) -> None:
        (root / rel).mkdir(parents=True)

    return apply


def symlink(rel: str, target: str) -> Mutation:
    def apply(root: Path) -> None:
        (root / rel).symlink_to(target)

    return apply


def both(*fns: Mutation) -> Mutation:
    def apply(root: Path) -> None:
        for fn in fns:
            fn(root)

    return apply


# --- reading the report -----------------------------------------------------------------------

HEADER_RE = re.compile(r"error: (\d+) problem\(s\) in the fleet definition:")


def problems(err: str) -> list[str]:
    """The ``FILE: KEY: MESSAGE`` lines of a ConfigError report, in printed order."""
    return [line[len("  - ") :] for line in err.splitlines() if line.startswith("  - ")]


def validate(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--root", str(root), "validate"])
    return code, capsys.readouterr().err


def matches(line: str, file: str, key: str, fragment: str) -> bool:
    prefix = f"{file}: {key}: " if key else f"{file}: "
    return line.startswith(prefix) and fragment in line[len(prefix) :]


# --- the corpus -------------------------------------------------------------------------------

FLEET = "fleet.toml"
PC2 = "machines/pc2.toml"
MAINPC = "machines/mainpc.toml"
BASE = "families/base-python.toml"
UTILS = "families/base-utils.toml"
PYDEPS = "families/base-cpu-pydeps.toml"
WEB_FAM = "families/family-web.toml"
LEGACY = "families/legacy-py310-cpu.toml"
LEGACY_IMAGE = replace(LEGACY, 'source = "bootstrap"', 'source = "image"')  # its root from an upstream image instead
GPU_FAM = "families/base-gpu-cu121.toml"
SVC = "services/ServiceRegistry.toml"  # family-web on mainpc, 7200 / 8200
WEB = "services/UnifiedWebAgent.toml"  # family-web on pc2, 7126 / 8126 (RemoteConnectorAgent: 7124 / 8124 on pc2)
TORCH_SVC = "services/STTService.toml"  # family-torch-cu121 on mainpc
VISION_SVC = "services/VisionProcessingAgent.toml"  # family-vision-cu121 on pc2, vram_gb = 9
NEW_FAM = "families/family-llm-extra.toml"
LLM = "families/family-llm-cu121.toml"
LLM_CHILD = 'description = "a child of the machine-specific LLM family"\nparent = "family-llm-cu121"\n'


def informational(value: str) -> Mutation:
    """pc2's informational list replaced by ``value`` (TOML)."""
    return replace(PC2, 'informational = ["MODEL_EVICT_THRESHOLD_PCT"]', f"informational = {value}")


CASES = [
    # --- TOML syntax and unreadable files
    Case("toml-syntax-service", append(SVC, "port = = 1\n"), SVC, "", "not valid TOML", count=1),
    Case("toml-duplicate-key-machine", append(PC2, 'OMP_NUM_THREADS = "2"\n'), PC2, "", "not valid TOML"),
    Case("toml-unclosed-table-fleet", replace(FLEET, "\n[settings]\n", "\n[settings\n"), FLEET, "", "not valid TOML"),
    Case("not-utf8", write_bytes("services/Latin1Agent.toml", b'family = "family-web" # caf\xe9\n'), "services/Latin1Agent.toml", "",
         "cannot be read", count=1),
    Case("toml-is-a-directory", mkdir("services/DirAgent.toml"), "services/DirAgent.toml", "", "cannot be read", count=1),
    # --- unknown keys (with did-you-mean where a key is close)
    Case("service-unknown-key", replace(SVC, "health_port", "helth_port"), SVC, "helth_port", "did you mean 'health_port'",
         count=2),  # and health_port: is required
    Case("family-unknown-key", prepend(WEB_FAM, "requirement = []\n"), WEB_FAM, "requirement", "did you mean 'requirements'", count=1),
    Case("machine-unknown-key", replace(PC2, "vram_gb", "vram"), PC2, "vram", "did you mean 'vram_gb'"),
    Case("settings-unknown-key", replace(FLEET, 'org = "fleet"', 'orgs = "fleet"'), FLEET, "settings.orgs", "did you mean 'org'", count=1),
    Case("fleet-unknown-table", append(FLEET, '\n[servce_defaults]\nsource = "agents"\n'), FLEET, "servce_defaults", "did you mean 'service_defaults'",
         count=1),
    Case("settings-unknown-key-no-hint", replace(FLEET, 'org = "fleet"', 'org = "fleet"\nzzz = 1'), FLEET, "settings.zzz", "allowed keys: ignore, org",
         count=1),
    Case("root-unknown-key", both(LEGACY_IMAGE, replace(LEGACY, 'image = "python', 'imgae = "python')), LEGACY, "root.imgae", "did you mean 'image'",
         count=2),  # and root.image: needs an image reference
    Case("smoke-unknown-key", replace(UTILS, 'run = ["test"', 'cmd = ["test"'), UTILS, "smoke[1].cmd", "unknown key", count=2),  # and run: is required
    # --- wrong types
    Case("port-as-string", replace(SVC, "port = 7200", 'port = "7200"'), SVC, "port", "must be an integer", count=1),
    Case("port-as-bool", replace(SVC, "port = 7200", "port = true"), SVC, "port", "must be an integer", count=1),
    Case("port-out-of-range", replace(SVC, "port = 7200", "port = 72000"), SVC, "port", "between 1 and 65535", count=1),
    Case("machines-as-string", replace(SVC, 'machines = ["mainpc"]', 'machines = "mainpc"'), SVC, "machines", "list of strings", count=1),
    Case("gpu-as-string", prepend(WEB_FAM, 'gpu = "yes"\n'), WEB_FAM, "gpu", "true or false", count=1),
    Case("machine-gpu-as-bool", replace(PC2, 'gpu = "RTX 3060"', "gpu = true"), PC2, "gpu", "must be a string"),
    Case("vram-negative", replace(PC2, "vram_gb = 12", "vram_gb = -12"), PC2, "vram_gb", "between 0 and 1024"),
    Case("budget-zero", replace(BASE, "budget_mb = 45", "budget_mb = 0"), BASE, "budget_mb", "between 1 and 100000", count=1),
    Case("time-limit-zero", replace(BASE, "budget_mb = 45", "budget_mb = 45\ntime_limit_minutes = 0"), BASE, "time_limit_minutes", "between 1 and 1440",
         count=1),
    Case("time-limit-text", replace(BASE, "budget_mb = 45", "budget_mb = 45\ntime_limit_minutes = \"1h\""), BASE, "time_limit_minutes", "integer", count=1),
    Case("epoch-as-string", replace(FLEET, "source_date_epoch = 1735689600", 'source_date_epoch = "2025-01-01"'), FLEET,
         "settings.source_date_epoch", "must be an integer", count=1),
    Case("settings-not-a-table", replace(FLEET, "\n[settings]\n", '\nsettings = "x"\n[old_settings]\n'), FLEET, "settings",
         "must be a table", count=2),  # and old_settings: unknown key
    Case("smoke-not-an-array", write(NEW_FAM, LLM_CHILD + 'smoke = "python -c pass"\n'), NEW_FAM, "smoke", "must be an array of tables",
         count=1),
    Case("smoke-gpu-as-string", replace(WEB_FAM, 'run = ["gunicorn", "--version"]', 'run = ["gunicorn", "--version"]\ngpu = "yes"'),
         WEB_FAM, "smoke[1].gpu", "true or false", count=1),
    Case("root-not-a-table", write("families/family-flat.toml", 'description = "x"\npython = "3.11"\nroot = "python:3.11"\n'),
         "families/family-flat.toml", "root", "must be a table", count=1),
    # --- required keys
    Case("service-without-family", replace(SVC, 'family = "family-web"', ""), SVC, "family", "is required", count=1),
    Case("service-without-port", replace(SVC, "port = 7200", ""), SVC, "port", "is required", count=1),
    Case("service-without-machines", replace(SVC, 'machines = ["mainpc"]', ""), SVC, "machines", "is required", count=1),
    Case("machine-without-description", replace(PC2, "description =", "# description ="), PC2, "description", "is required", count=1),
    Case("smoke-without-name", replace(WEB_FAM, 'name = "gunicorn runs"\n', ""), WEB_FAM, "smoke[1].name", "is required", count=1),
    Case("root-without-source", replace(LEGACY, 'source = "bootstrap"\n', ""), LEGACY, "root.source", "is required", count=1),
    Case("fleet-toml-missing", delete(FLEET), FLEET, "", "is missing"),
    Case("no-services", lambda root: [p.unlink() for p in (root / "services").glob("*.toml")], "services/", "", "no service definitions",
         count=1),
    # --- references by name
    Case("unknown-family", replace(SVC, '"family-web"', '"family-webb"'), SVC, "family", "did you mean 'family-web'", count=1),
    Case("unknown-machine", replace(SVC, '["mainpc"]', '["mainpcc"]'), SVC, "machines[0]", "did you mean 'mainpc'", count=1),
    Case("machine-listed-twice", replace(SVC, '["mainpc"]', '["mainpc", "mainpc"]'), SVC, "machines", "lists a machine twice", count=1),
    Case("empty-machines", replace(SVC, 'machines = ["mainpc"]', "machines = []"), SVC, "machines", "at least one machine", count=1),
    Case("unknown-parent", replace(WEB_FAM, '"base-cpu-pydeps"', '"base-cpu-pydep"'), WEB_FAM, "parent", "did you mean 'base-cpu-pydeps'"),
    # --- the family tree
    Case("cycle-of-one", replace(UTILS, 'parent = "base-python"', 'parent = "base-utils"'), UTILS, "parent", "base-utils -> base-utils"),
    Case("cycle-of-two", replace(UTILS, 'parent = "base-python"', 'parent = "base-cpu-pydeps"'), PYDEPS, "parent",
         "cycle in the family tree: base-cpu-pydeps -> base-utils -> base-cpu-pydeps"),
    Case("cycle-of-three", replace(UTILS, 'parent = "base-python"', 'parent = "family-web"'), PYDEPS, "parent",
         "cycle in the family tree: base-cpu-pydeps -> base-utils -> family-web -> base-cpu-pydeps"),
    Case("parent-and-root", append(UTILS, '\n[root]\nsource = "bootstrap"\n'), UTILS, "parent", "exactly one"),
    Case("neither-parent-nor-root", replace(UTILS, 'parent = "base-python"', ""), UTILS, "parent", "exactly one"),
    Case("python-not-a-version", replace(BASE, 'python = "3.11"', 'python = "3.x"'), BASE, "python", "not a Python version"),
    Case("python-without-dot", replace(BASE, 'python = "3.11"', 'python = "311"'), BASE, "python", "not a Python version"),
    Case("child-python-differs", prepend(UTILS, 'python = "3.12"\n'), UTILS, "python", "a child keeps its parent's Python", count=1),
    Case("child-cuda-differs", write(NEW_FAM, LLM_CHILD + 'cuda = "12.4"\n'), NEW_FAM, "cuda", "a child keeps its parent's CUDA", count=1),
    Case("cuda-malformed", replace(GPU_FAM, 'cuda = "12.1"', 'cuda = "cu121"'), GPU_FAM, "cuda", "not a CUDA version"),
    Case("gpu-family-without-cuda", write("families/family-gpu-nocuda.toml", 'description = "x"\nparent = "base-utils"\ngpu = true\n'),
         "families/family-gpu-nocuda.toml", "cuda", "needs its CUDA version", count=1),
    Case("gpu-dropped-under-gpu-parent", write(NEW_FAM, LLM_CHILD + "gpu = false\n"), NEW_FAM, "gpu", "is a GPU family", count=1),
    Case("machine-specific-dropped", write(NEW_FAM, LLM_CHILD + "machine_specific = false\n"), NEW_FAM, "machine_specific",
         "built per machine", count=1),
    Case("family-file-name", write("families/Family-Web2.toml", 'description = "x"\nparent = "family-web"\n'), "families/Family-Web2.toml", "",
         "lowercase letters", count=1),
    # --- roots
    Case("bootstrap-wrong-python", replace(LEGACY, 'suite = "jammy"', 'suite = "bookworm"'),
         LEGACY, "root.suite", "Debian bookworm ships Python 3.11, but the family declares python = '3.10'", count=1),
    Case("bootstrap-wrong-python-ubuntu", replace(BASE, 'suite = "bookworm"', 'suite = "jammy"'),
         BASE, "root.suite", "Ubuntu jammy ships Python 3.10, but the family declares python = '3.11'", count=1),
    Case("unknown-root-source", replace(BASE, 'source = "bootstrap"', 'source = "docker"'), BASE, "root.source", 'use "bootstrap" or "image"',
         count=1),
    Case("unknown-suite", replace(BASE, 'suite = "bookworm"', 'suite = "bookwrm"'), BASE, "root.suite", "did you mean 'bookworm'", count=1),
    Case("bootstrap-without-packages", replace(BASE, '\npackages = [\n    "python3-minimal", "libpython3.11-stdlib", "tini", "ca-certificates", "base-files",\n'
                                               '    "dash", "coreutils", "libc-bin", "libstdc++6", "libgcc-s1",\n]', ""),
         BASE, "root.packages", "needs its Debian packages", count=1),
    Case("bootstrap-bad-package", replace(BASE, '"tini"', '"tini!"'), BASE, "root.packages[2]", "not a Debian package name", count=1),
    Case("bootstrap-pinned-package", replace(BASE, '"tini"', '"tini=0.19.0-1"'), BASE, "root.packages[2]", "its version is locked in lockfiles/os",
         count=1),
    Case("builder-bad-package", replace(BASE, '"python3-venv"', '"python3 venv"'), BASE, "root.builder_packages[0]", "not a Debian package name",
         count=1),
    Case("root-with-os-packages", replace(BASE, "[root]", 'os_packages = ["curl"]\n\n[root]'), BASE, "os_packages", "move them there", count=1),
    Case("runtime-tool-unknown", replace(BASE, "[root]", 'runtime_tools = ["bash"]\n\n[root]'), BASE, "runtime_tools[0]",
         "not a tool the structure checks refuse", count=1),
    Case("budget-policy-warn-without-reason", replace(BASE, "[root]", 'budget_policy = "warn"\n\n[root]'), BASE, "budget_reason", "says why",
         count=1),
    Case("budget-policy-unknown", replace(BASE, "[root]", 'budget_policy = "ignore"\n\n[root]'), BASE, "budget_policy", '"enforce" or "warn"',
         count=1),
    Case("image-without-tag", both(LEGACY_IMAGE, replace(LEGACY, '"python:3.10-slim-bookworm"', '"python"')), LEGACY, "root.image", "no tag or digest",
         count=1),
    Case("image-registry-port-without-tag", both(LEGACY_IMAGE, replace(LEGACY, '"python:3.10-slim-bookworm"', '"localhost:5000/library/python"')), LEGACY,
         "root.image", "no tag or digest", count=1),
    Case("image-with-space", both(LEGACY_IMAGE, replace(LEGACY, '"python:3.10-slim-bookworm"', '"python:3.10 slim"')), LEGACY, "root.image",
         "needs an image reference", count=1),
    Case("image-root-without-image", both(LEGACY_IMAGE, replace(LEGACY, 'image = "python:3.10-slim-bookworm"\n', "")), LEGACY, "root.image",
         "needs an image reference", count=1),
    Case("image-empty-tag", both(LEGACY_IMAGE, replace(LEGACY, '"python:3.10-slim-bookworm"', '"python:"')), LEGACY, "root.image", "tag"),
    # --- requirements and packages
    Case("malformed-requirement", replace(WEB_FAM, '"gunicorn==23.0.0"', '"gunicorn=>23"'), WEB_FAM, "requirements[2]", "malformed requirement",
         count=1),
    Case("duplicate-requirement", replace(WEB_FAM, '"gunicorn==23.0.0"', '"gunicorn==23.0.0", "Gunicorn"'), WEB_FAM, "requirements[3]",
         "listed twice", count=1),
    Case("duplicate-requirement-normalized", replace(PYDEPS, '"uvicorn==0.30.6"', '"uvicorn==0.30.6", "Pydantic_Core", "pydantic.core"'),
         PYDEPS, "requirements[5]", "listed twice", count=1),
    Case("url-requirement", replace(WEB_FAM, '"gunicorn==23.0.0"', '"gunicorn @ https://example.invalid/g.whl"'), WEB_FAM, "requirements[2]",
         "direct URLs", count=1),
    Case("pip-option-requirement", replace(WEB_FAM, '"gunicorn==23.0.0"', '"-r extra.txt"'), WEB_FAM, "requirements[2]", "malformed requirement",
         count=1),
    Case("service-malformed-requirement", append(SVC, 'requirements = ["requests>="]\n'), SVC, "requirements[0]", "malformed requirement",
         count=1),
    Case("bad-debian-package", replace(UTILS, '"dumb-init"', '"Dumb Init"'), UTILS, "os_packages[1]", "not a Debian package name", count=1),
    # --- ports and placement
    Case("port-clash", replace(WEB, "port = 7126", "port = 7124"), WEB, "port", "port 7124 on pc2 is already used by RemoteConnectorAgent",
         count=1),
    Case("health-port-clash", replace(WEB, "health_port = 8126", "health_port = 8124"), WEB, "health_port",
         "already used by RemoteConnectorAgent (health_port)", count=1),
    Case("port-equals-health-port", replace(SVC, "health_port = 8200", "health_port = 7200"), SVC, "health_port", "own port", count=1),
    Case("privileged-port", replace(SVC, "port = 7200", "port = 80"), SVC, "port", "privileged port", count=1),
    Case("privileged-health-port", replace(SVC, "health_port = 8200", "health_port = 1023"), SVC, "health_port", "privileged port", count=1),
    Case("image-name-collision", write("services/Service_Registry.toml", 'family = "family-web"\nmachines = ["pc2"]\nport = 7300\nhealth_port = 8300\n'),
         "services/Service_Registry.toml", "", "same image name 'service-registry' as 'services/ServiceRegistry.toml'", count=1),
    Case("service-file-name", write("services/1Bad.toml", 'family = "family-web"\n'), "services/1Bad.toml", "", "must start with a letter", count=1),
    Case("vram-too-big", replace(VISION_SVC, "vram_gb = 9", "vram_gb = 16"), VISION_SVC, "vram_gb", "needs 16 GB of GPU memory but pc2 has 12 GB",
         count=1),
    Case("gpu-service-on-cpu-machine", both(
        write("machines/edge.toml", 'description = "CPU-only box"\n'),
        replace(TORCH_SVC, 'machines = ["mainpc"]', 'machines = ["mainpc", "edge"]'),
    ), TORCH_SVC, "machines[1]", "cannot run on edge, which has no GPU", count=1),
    Case("vram-on-cpu-service", append(SVC, "vram_gb = 2\n"), SVC, "vram_gb", "uses no GPU", count=1),
    Case("gpu-machine-without-cuda-arch", replace(PC2, 'cuda_arch = "8.6"\n', ""), PC2, "cuda_arch", "needs its compute capability", count=1),
    Case("gpu-machine-without-vram", replace(PC2, "vram_gb = 12\n", ""), PC2, "vram_gb", "GPU"),
    # --- source paths
    Case("source-escapes-repo", append(SVC, 'source = "../outside"\n'), SVC, "source", "escapes the repository", count=1),
    Case("source-absolute", append(SVC, 'source = "/etc"\n'), SVC, "source", "escapes the repository", count=1),
    Case("source-missing", append(SVC, 'source = "agents/nope"\n'), SVC, "source", "not a directory", count=1),
    Case("source-is-a-file", append(SVC, 'source = "agents/reference_agent/agent.py"\n'), SVC, "source", "not a directory", count=1),
    Case("source-symlink-outside", both(symlink("agents/elsewhere", "/"), append(SVC, 'source = "agents/elsewhere"\n')), SVC, "source",
         "resolves outside the repository", count=1),
    Case("default-source-escapes", replace(FLEET, 'source = "agents/reference_agent"', 'source = "../agents"'), FLEET,
         "service_defaults.source", "escapes the repository", count=1),
    Case("empty-entrypoint", append(SVC, "entrypoint = []\n"), SVC, "entrypoint", "must name the command", count=1),
    # --- env, machines, smoke checks, settings values
    Case("bad-env-name", append(SVC, '[env]\n"BAD-NAME" = "x"\n'), SVC, "env", "invalid entries ['BAD-NAME']", count=1),
    Case("bad-env-value", append(SVC, '[env]\nRATIO = 0.5\n'), SVC, "env", "invalid entries ['RATIO']", count=1),
    Case("bad-profile-name", append(PC2, '"1THREADS" = "4"\n'), PC2, "profile", "invalid entries ['1THREADS']", count=1),
    Case("bad-cuda-arch", replace(PC2, 'cuda_arch = "8.6"', 'cuda_arch = "sm_86"'), PC2, "cuda_arch", "compute capability", count=1),
    # the informational list: profile keys only the fleet's own services read (model/profiles.py)
    Case("informational-known-reader", informational('["MODEL_EVICT_THRESHOLD_PCT", "CUDA_VISIBLE_DEVICES"]'), PC2, "informational[1]",
         "read by the CUDA runtime, so it is not informational", count=1),
    Case("informational-not-in-profile", informational('["MODEL_EVICT_THRESHOLD_PCT", "NO_SUCH"]'), PC2, "informational[1]",
         "'NO_SUCH' is not in [profile]", count=1),
    Case("informational-generated-key", informational('["MODEL_EVICT_THRESHOLD_PCT", "GPU_MODEL"]'), PC2, "informational[1]",
         "the toolkit's own entry", count=1),
    Case("informational-twice", informational('["MODEL_EVICT_THRESHOLD_PCT", "MODEL_EVICT_THRESHOLD_PCT"]'), PC2, "informational[1]",
         "twice", count=1),
    Case("informational-not-a-list", informational('"MODEL_EVICT_THRESHOLD_PCT"'), PC2, "informational", "must be a list of strings",
         count=1),
    Case("informational-with-bad-profile", replace(PC2, 'OMP_NUM_THREADS = "4"', "OMP_NUM_THREADS = 0.5"), PC2, "profile",
         "invalid entries ['OMP_NUM_THREADS']", count=1),
    Case("empty-smoke-run", replace(UTILS, 'run = ["test", "-f", "/usr/share/zoneinfo/Europe/Berlin"]', "run = []"), UTILS, "smoke[1].run",
         "must name a command", count=1),
    # --- [builder]: build-only tools of a family that compiles from source
    Case("builder-unknown-key", replace(LLM, 'setup = "families/', 'set_up = "families/'), LLM, "builder.set_up", "did you mean 'setup'",
         count=1),
    Case("builder-unpinned-requirement", replace(LLM, '"cmake==4.4.4"', '"cmake>=3.21"'), LLM, "builder.requirements[4]", "pin each exactly",
         count=1),
    Case("builder-malformed-requirement", replace(LLM, "\"cmake==4.4.4\"", "\"cmake=4.4.4\""), LLM, "builder.requirements[4]", "malformed requirement",
         count=1),
    Case("builder-setup-missing", replace(LLM, 'setup = "families/cuda-clang-root.sh"', 'setup = "families/nope.sh"'), LLM, "builder.setup",
         "not a file", count=1),
    Case("builder-setup-escapes", replace(LLM, 'setup = "families/cuda-clang-root.sh"', 'setup = "../x.sh"'), LLM, "builder.setup",
         "escapes the repository", count=1),
    Case("builder-bad-os-package", replace(LLM, 'os_packages = ["clang-19"]', 'os_packages = ["Clang 19"]'), LLM, "builder.os_packages[0]",
         "not a Debian package name", count=1),
    Case("builder-without-requirements", append(UTILS, '\n[builder]\nos_packages = ["clang-19"]\n'), UTILS, "builder", "has none",
         count=1),
    Case("org-not-a-repository-namespace", replace(FLEET, 'org = "fleet"', 'org = "My Fleet"'), FLEET, "settings.org", ""),
    # --- apt archives of bootstrapped roots: values that reach apt sources and mmdebstrap's argv
    Case("archives-unknown-distribution", append(FLEET, '\n[archives.fedora]\nmirror = "https://x.example/fedora"\n'), FLEET, "archives.fedora",
         "allowed keys: debian, ubuntu", count=1),
    Case("archive-snapshot-not-a-time", append(FLEET, '\n[archives.debian]\nsnapshot = "2026-11-21"\n'), FLEET, "archives.debian.snapshot",
         "not a snapshot time", count=1),
    Case("archive-snapshot-impossible-date", append(FLEET, '\n[archives.debian]\nsnapshot = "20261341T000000Z"\n'), FLEET,
         "archives.debian.snapshot", "not a snapshot time", count=1),
    Case("archive-mirror-with-query", append(FLEET, '\n[archives.debian]\nmirror = "http://deb.example/debian?x=1"\n'), FLEET,
         "archives.debian.mirror", "not an archive URL", count=1),
    Case("archive-mirror-with-space", append(FLEET, '\n[archives.ubuntu]\nmirror = "http://ubuntu.example/ubuntu jammy main"\n'), FLEET,
         "archives.ubuntu.mirror", "not an archive URL", count=1),
    Case("archive-mirror-with-newline", append(FLEET, '\n[archives.debian]\nmirror = "http://deb.example/debian\\n[trusted=yes]"\n'), FLEET,
         "archives.debian.mirror", "not an archive URL", count=1),
    Case("archive-mirror-file-scheme", append(FLEET, '\n[archives.debian]\nmirror = "file:///srv/debian"\n'), FLEET, "archives.debian.mirror",
         "not an archive URL", count=1),
    Case("archive-keyring-escapes", append(FLEET, '\n[archives.debian]\nkeyring = "../keys/archive.gpg"\n'), FLEET, "archives.debian.keyring",
         "escapes the repository", count=1),
    Case("archive-keyring-missing", append(FLEET, '\n[archives.debian]\nkeyring = "keys/none.gpg"\n'), FLEET, "archives.debian.keyring",
         "not a file", count=1),
    Case("archive-ubuntu-security", append(FLEET, '\n[archives.ubuntu]\nsecurity = "http://security.ubuntu.com/ubuntu"\n'), FLEET,
         "archives.ubuntu.security", "from the archive itself", count=1),
    Case("archive-unknown-key", append(FLEET, '\n[archives.debian]\nsnapshots = "20261121T000000Z"\n'), FLEET, "archives.debian.snapshots",
         "did you mean 'snapshot'", count=1),
    Case("root-archive-on-image-root", both(LEGACY_IMAGE, append(LEGACY, '\n[root.archive]\nsnapshot = "20261121T000000Z"\n')), LEGACY,
         "root.archive", "bootstrapped root", count=1),
    Case("root-archive-bad-snapshot", append(BASE, '\n[root.archive]\nsnapshot = "latest"\n'), BASE, "root.archive.snapshot",
         "not a snapshot time", count=1),
    # --- a family's end of life
    Case("end-of-life-without-reason", replace(LEGACY, 'end_of_life_reason = "', 'end_of_lifes_reason = "'), LEGACY, "end_of_life_reason",
         "says why", marks=()),
    Case("end-of-life-a-string", replace(LEGACY, "end_of_life = 2025-12-31", 'end_of_life = "Q4 2025"'), LEGACY, "end_of_life",
         "must be a date", count=1),
    Case("end-of-life-reason-alone", prepend(BASE, 'end_of_life_reason = "soon"\n'), BASE, "end_of_life", "needs the date", count=1),
    # --- running the fleet: startup layers, GPU memory, memory, volumes, secrets
    Case("layer-unknown", replace(SVC, 'layer = "infra-core"', 'layer = "infra-cor"'), SVC, "layer", "did you mean 'infra-core'", count=1),
    Case("layer-cycle", replace(FLEET, '[layers.infra-core]\n', '[layers.infra-core]\nafter = ["web-interface"]\n'), FLEET,
         "layers.async-pipeline.after", "cycle: async-pipeline → memory-stack → infra-core → web-interface → async-pipeline", count=1),
    Case("layer-after-unknown", replace(FLEET, 'after = ["coordination", "memory-stack"]', 'after = ["coordination", "memory"]'), FLEET,
         "layers.language-stack.after[1]", "unknown layer 'memory'", count=1),
    Case("layer-name-with-space", append(FLEET, '\n[layers."web ui"]\n'), FLEET, "layers.'web ui'", "lowercase", count=1),
    Case("vram-over-card", replace(MAINPC, "vram_overcommit_reason = ", "# vram_overcommit_reason = "), MAINPC, "vram_gb",
         "declare 106 GB of GPU memory", count=1),
    Case("memory-over-ram", replace(PC2, "ram_gb = 64", "ram_gb = 8"), PC2, "ram_gb", "add up to 37376 MB", count=1),
    Case("memory-too-small", replace(SVC, 'layer = "infra-core"', 'layer = "infra-core"\nmemory_mb = 1'), SVC, "memory_mb", "", count=1),
    Case("volume-over-the-app", replace(SVC, 'layer = "infra-core"', 'layer = "infra-core"\nvolumes = ["code:/app"]'), SVC, "volumes",
         "mounts outside /data/", count=1),
    Case("volume-dot-dot", replace(SVC, 'layer = "infra-core"', 'layer = "infra-core"\nvolumes = ["x:/data/../etc"]'), SVC, "volumes",
         "is not a named volume", count=1),
    Case("volume-two-at-one-path", replace(SVC, 'layer = "infra-core"', 'layer = "infra-core"\nvolumes = ["a:/data/x", "b:/data/x"]'), SVC,
         "volumes", "mount point of both 'a' and 'b'", count=1),
    Case("secret-a-path", replace(SVC, 'layer = "infra-core"', 'layer = "infra-core"\nsecrets = ["../../etc/shadow"]'), SVC, "secrets",
         "is not a secret name", count=1),
    Case("publish-address-a-name", prepend(PC2, 'publish_address = "0.0.0.0; rm -rf /"\n'), PC2, "publish_address", "not an IPv4", count=1),
    Case("publish-address-out-of-range", prepend(PC2, 'publish_address = "127.0.0.256"\n'), PC2, "publish_address", "not an IPv4", count=1),
]

def _params() -> list[Any]:
    return [pytest.param(c, id=c.id, marks=c.marks) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_malformed_input_is_reported_with_file_and_key(case: Case, fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case.mutate(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert "Traceback" not in err
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    found = problems(err)
    header = HEADER_RE.search(err)
    assert header and int(header.group(1)) == len(found), err
    assert any(line.startswith(f"{case.file}: ") or line == case.file for line in found), f"{case.file} not named in:\n{err}"
    assert any(matches(line, case.file, case.key, case.fragment) for line in found), (
        f"no problem '{case.file}: {case.key}: ...{case.fragment}...' in:\n{err}"
    )
    if case.count is not None:
        assert len(found) == case.count, err


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def test_all_problems_are_reported_at_once(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Four independent faults in four files: all four reported in one run, nothing else."""
    replace(FLEET, 'org = "fleet"', 'orgs = "fleet"')(fleet_dir)
    replace(PC2, 'cuda_arch = "8.6"', 'cuda_arch = "x"')(fleet_dir)
    replace(WEB_FAM, '"gunicorn==23.0.0"', '"gunicorn=>23"')(fleet_dir)
    replace(SVC, "port = 7200", "port = 80")(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert code == 2
    assert "4 problem(s)" in err
    found = problems(err)
    assert len(found) == 4, err
    assert [line.split(": ", 2)[:2] for line in found] == [
        ["families/family-web.toml", "requirements[2]"],
        ["fleet.toml", "settings.orgs"],
        ["machines/pc2.toml", "cuda_arch"],
        ["services/ServiceRegistry.toml", "port"],
    ]


def test_shipped_fleet_is_valid(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--root", str(fleet_dir), "validate"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "fleet is valid: 9 families, 2 machines, 63 services, 1 warning(s)" in out
    # Blueprint R2's date has passed: the legacy family warns, naming the services still on it.
    assert err.splitlines() == [
        "warning: families/legacy-py310-cpu.toml: end_of_life: legacy-py310-cpu is past its end of life (2025-12-31): blueprint R2 moves the "
        "legacy agents to Python 3.11 (family-web) by Q4 2025, and upstream CPython 3.10 reached its end of life in October 2026; 5 service(s) "
        "still on it: AdvancedCommandHandler, ChitchatAgent, FeedbackHandler, IntentionValidatorAgent, NLUAgent"
    ]


def test_report_is_sorted_and_stable(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(SVC, "health_port", "helth_port")(fleet_dir)
    replace(WEB, "port = 7126", "port = 7124")(fleet_dir)
    replace(UTILS, '"dumb-init"', '"Dumb Init"')(fleet_dir)
    append(PC2, '"1THREADS" = "4"\n')(fleet_dir)
    first_code, first = validate(fleet_dir, capsys)
    # Touch the files in another order: nothing about the report may depend on it.
    for rel in (PC2, WEB, SVC, UTILS):
        (fleet_dir / rel).write_text((fleet_dir / rel).read_text())
    second_code, second = validate(fleet_dir, capsys)
    assert first_code == second_code == 2
    assert first == second
    found = problems(first)
    assert len(found) == 5, first  # helth_port unknown, so health_port missing too
    keyed = [tuple(line.split(": ", 2)) for line in found]
    assert keyed == sorted(keyed)


VALID_VARIANTS = [
    pytest.param(replace(SVC, "port = 7200", "port = 1024"), id="lowest-unprivileged-port"),
    pytest.param(replace(SVC, '["mainpc"]', '["mainpc", "pc2"]'), id="service-on-both-machines"),
    pytest.param(both(LEGACY_IMAGE, replace(LEGACY, '"python:3.10-slim-bookworm"', '"localhost:5000/library/python:3.10-slim-bookworm"')),
                 id="image-with-registry-port"),
    pytest.param(both(LEGACY_IMAGE, replace(LEGACY, '"python:3.10-slim-bookworm"', '"python@sha256:' + "0" * 64 + '"')), id="image-by-digest"),
    pytest.param(append(SVC, '[env]\nDEBUG = true\nWORKERS = 4\n'), id="env-bool-and-int-values"),
    pytest.param(append(SVC, 'requirements = ["httpx[http2]==0.27.0; python_version >= \'3.8\'"]\n'), id="requirement-with-extras-and-marker"),
    pytest.param(replace(MAINPC, 'cuda_arch = "8.9"', 'cuda_arch = "12.0"'), id="two-digit-compute-capability"),
]


@pytest.mark.parametrize("mutate", VALID_VARIANTS)
def test_valid_variants_are_accepted(mutate: Mutation, fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mutate(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert code == 0, err


# --- no cascades: one fault, one problem ------------------------------------------------------


def test_missing_ports_do_not_clash(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(SVC, "port = 7200\n", "")(fleet_dir)
    replace(TORCH_SVC, "port = 5800\n", "")(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert code == 2
    assert problems(err) == [
        "services/STTService.toml: port: is required in a service definition",
        "services/ServiceRegistry.toml: port: is required in a service definition",
    ]


def test_cycle_is_reported_once(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(UTILS, 'parent = "base-python"', 'parent = "base-cpu-pydeps"')(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert code == 2
    assert problems(err) == [
        "families/base-cpu-pydeps.toml: parent: cycle in the family tree: base-cpu-pydeps -> base-utils -> base-cpu-pydeps; break it"
    ]


def test_unknown_parent_is_reported_once(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(WEB_FAM, '"base-cpu-pydeps"', '"base-cpu-pydep"')(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert code == 2
    assert problems(err) == ["families/family-web.toml: parent: unknown family 'base-cpu-pydep'; did you mean 'base-cpu-pydeps'?"]


def test_broken_fleet_toml_is_reported_once(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(FLEET, "\n[settings]\n", "\n[settings\n")(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert code == 2
    found = problems(err)
    assert len(found) == 1, err
    assert found[0].startswith("fleet.toml: not valid TOML")


def test_invalid_inherited_value_is_reported_once(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(BASE, 'python = "3.11"', 'python = "3.x"')(fleet_dir)
    code, err = validate(fleet_dir, capsys)
    assert code == 2
    assert {line.split(": ", 1)[0] for line in problems(err)} == {BASE}, err
