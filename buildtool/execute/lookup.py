"""Which images of a plan the registry holds by identity: one registry request per image, all at
once; the client keeps what it read for the rest of the run."""

from __future__ import annotations

from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import read_manifests
from buildtool.plan.plan import Plan, Step
from buildtool.settings import Settings

LOOKUPS = 16  # registry requests in flight at once when looking images up


def lookup(plan: Plan, settings: Settings, registry: Registry) -> None:
    """Fetch every image's identity manifest (and each root's builder) at once, concurrently:
    the one registry request per image that decides built or cached; the steps, the gate and
    the report read them from the client's memory."""
    refs = [(settings.ref(s.repository).path, s.id_tag) for s in plan.steps]
    refs += [(settings.ref(s.builder_repository).path, s.id_tag) for s in plan.steps if s.root is not None]
    read_manifests(registry, refs, at_once=LOOKUPS)


def found(step: Step, settings: Settings, registry: Registry) -> tuple[str | None, str | None]:
    """(image digest, builder digest) by identity, as looked up: None where missing; a step
    that is not a root has no builder ("")."""
    image = registry.manifest(settings.ref(step.repository).path, step.id_tag)
    digest = image.digest if image else None
    if step.root is None:
        return digest, ""
    builder = registry.manifest(settings.ref(step.builder_repository).path, step.id_tag)
    return digest, builder.digest if builder else None


def to_build(plan: Plan, settings: Settings, registry: Registry) -> list[Step]:
    """The steps whose image (or builder root) is not in the registry by identity: what a run builds."""
    lookup(plan, settings, registry)
    return [s for s in plan.steps if None in found(s, settings, registry)]
