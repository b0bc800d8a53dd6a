"""The plan as a `docker buildx bake` file, for users who drive BuildKit themselves.

Each image is one target with its materialised context; a child names its parent target as the
named context its ``FROM ${PARENT_IMAGE}`` resolves to, and its root's builder target as
``${BUILDER_IMAGE}``, so bake builds the chain in order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.engine import IDENTITY_LABEL
from buildtool.adapters.files import atomic_write, owned_dir, write_context
from buildtool.core.errors import CommandError, EngineError, ToolError
from buildtool.locking import aptsource
from buildtool.plan.plan import BUILDER_SUFFIX, Plan, Step
from buildtool.settings import Settings


def _target_name(step: Step) -> str:
    return step.repository.replace(".", "-")


# The oldest buildx seen to run this file's per-target host network (0.13's bake cannot). Older
# engines get Debian sid's docker-buildx as a CLI plugin of the toolkit's own DOCKER_CONFIG.
KNOWN_GOOD = (0, 29)
PLUGIN_SUITE = "sid"
# What bake must be allowed for this file: host network (apt, PyPI); and reading the pip CA bundle
# and the contexts, given per call.
ALLOW = ("network.host",)


@dataclass(frozen=True, kw_only=True)
class Bake:
    """A ``docker buildx`` whose bake runs the toolkit's bake file, and how to call it."""

    docker_config: Path | None  # None: the host's own buildx
    buildx: str  # ``docker buildx version``
    buildkit: str  # the builder's BuildKit, as it reports itself, and the engine it runs in

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_CONFIG": str(self.docker_config)} if self.docker_config else {}

    def argv(self, file: Path, *extra: str, reads: tuple[Path, ...] = ()) -> list[str]:
        allow = [*ALLOW, *(f"fs.read={p}" for p in reads)]
        return ["docker", "buildx", "bake", *(f"--allow={a}" for a in allow), "-f", str(file), *extra]


def _version(text: str) -> tuple[int, ...]:
    found = re.search(r"\bv?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(n) for n in found.groups()) if found else ()


def _describe(docker_config: Path | None) -> Bake:
    env = {"DOCKER_CONFIG": str(docker_config)} if docker_config else {}
    version = host.run(["docker", "buildx", "version"], env=env, timeout=60).stdout.strip()
    inspect = host.run(["docker", "buildx", "inspect"], env=env, timeout=60).stdout
    buildkit = re.search(r"^BuildKit version:\s*(\S+)", inspect, re.M)
    driver = re.search(r"^Driver:\s*(\S+)", inspect, re.M)
    engine = host.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, timeout=60).stdout.strip()
    where = f"{driver[1] if driver else 'unknown'} driver, Docker Engine {engine}"
    return Bake(docker_config=docker_config, buildx=version, buildkit=f"{buildkit[1] if buildkit else 'unknown'} ({where})")


def ensure_bake(state_dir: Path) -> Bake:
    """The host's buildx when it is new enough, else Debian sid's ``docker-buildx`` unpacked as a
    CLI plugin under ``state_dir``/buildx (downloaded once, signature-checked by apt; nothing is
    installed on the host). Its client talks to the running engine's BuildKit."""
    try:
        found = _describe(None)
        if _version(found.buildx) >= KNOWN_GOOD:
            return found
    except CommandError:
        pass
    config = (state_dir / "buildx").absolute()
    plugin = config / "cli-plugins" / "docker-buildx"
    if not plugin.is_file():
        try:
            deb, version = aptsource.download(suite=PLUGIN_SUITE, package="docker-buildx", cache=state_dir / "apt")
        except (CommandError, ToolError) as exc:
            oldest = ".".join(map(str, KNOWN_GOOD))
            raise EngineError(
                f"no buildx whose bake runs the bake file: the host's is older than {oldest} and Debian {PLUGIN_SUITE}'s docker-buildx was not fetched ({exc})"
            ) from exc
        with tempfile.TemporaryDirectory(dir=state_dir) as tmp:
            host.run(["dpkg-deb", "-x", str(deb), tmp], timeout=300)
            binary = Path(tmp) / "usr/libexec/docker/cli-plugins/docker-buildx"
            if not binary.is_file():
                raise EngineError(f"{deb.name} ({version}) holds no usr/libexec/docker/cli-plugins/docker-buildx")
            plugin.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(binary, plugin.with_suffix(".tmp"))
            os.chmod(plugin.with_suffix(".tmp"), 0o755)
            os.replace(plugin.with_suffix(".tmp"), plugin)
    return _describe(config)


def bake_file(plan: Plan, settings: Settings, contexts: Path) -> dict[str, object]:
    """One target per image, and per root family one for its builder root (stage ``builder-root``)."""
    targets: dict[str, object] = {}
    for step in plan.steps:
        args = {"SOURCE_DATE_EPOCH": str(settings.source_date_epoch)}
        target: dict[str, object] = {
            "context": str(contexts / step.repository),
            "dockerfile": "Dockerfile",
            "args": args,
            "tags": [str(settings.ref(step.repository, step.id_tag))],
            "labels": {IDENTITY_LABEL: step.identity},  # as the toolkit's own builds: prune and the bench know them by it
            "secret": settings.secrets(),
            "entitlements": ["network.host"],
            "cache-from": [f"type=registry,ref={settings.cache_ref(step.repository)}"],
            "output": ["type=docker"],
        }
        named: dict[str, str] = {}
        if step.parent:
            parent = plan.step(step.parent)
            arg = "FAMILY_IMAGE" if step.kind == "service" else "PARENT_IMAGE"
            args[arg] = f"parent-{_target_name(parent)}"
            named[args[arg]] = f"target:{_target_name(parent)}"
        if step.root is None and step.builder:
            root = _target_name(plan.step(step.builder)) + BUILDER_SUFFIX
            args["BUILDER_IMAGE"] = f"builder-{root}"
            named[args["BUILDER_IMAGE"]] = f"target:{root}"
        if named:
            target["contexts"] = named
        if step.root is not None:
            builder = {**target, "target": "builder-root", "tags": [str(settings.ref(step.builder_repository, step.id_tag))]}
            targets[_target_name(step) + BUILDER_SUFFIX] = builder
        targets[_target_name(step)] = target
    return {"group": {"default": {"targets": list(targets)}}, "target": targets}


def write(plan: Plan, settings: Settings, dest: Path, *, bootstrap=None) -> Path:
    """Materialise every context under ``dest``/contexts and write ``dest``/docker-bake.json."""
    dest = owned_dir(dest, what="bake --out", clear=True)
    contexts = dest / "contexts"
    for step in plan.steps:
        needs_root = step.root is not None and step.root.source == "bootstrap" and bootstrap is not None
        write_context(contexts / step.repository, step.rendered.context_files(), links=bootstrap(step) if needs_root else None)
    path = dest / "docker-bake.json"
    atomic_write(path, json.dumps(bake_file(plan, settings, contexts.resolve()), indent=2) + "\n")
    return path
