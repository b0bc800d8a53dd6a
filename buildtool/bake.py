"""The plan as a `docker buildx bake` file, for users who drive BuildKit themselves.

Each image is one target with its materialised context; a child names its parent target as the
named context its ``FROM ${PARENT_IMAGE}`` resolves to, and its root's builder target as
``${BUILDER_IMAGE}``, so bake builds the chain in order.
"""

from __future__ import annotations

import json
from pathlib import Path

from buildtool.adapters.files import atomic_write, owned_dir, write_context
from buildtool.plan.plan import BUILDER_SUFFIX, Plan, Step
from buildtool.settings import Settings


def _target_name(step: Step) -> str:
    return step.repository.replace(".", "-")


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
