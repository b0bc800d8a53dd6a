"""The build plan: a pure function from the fleet to ordered steps with content identities.

A step's identity hashes everything its image is made of: the rendered Dockerfile and context
files (its requirements files from the locks, its machine profile where it is baked, its app
sources), its root source, its smoke checks, and its parent's identity. Changing one lock
therefore changes exactly that family and its descendants. The fleet is read already (files,
locks, sources in memory): planning reads nothing. Dry runs, the bake file, the CI workflow
and the executor all read this plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from buildtool.core.errors import ConfigError, Problem, UsageError
from buildtool.core.hashing import sha256_json
from buildtool.core.names import did_you_mean
from buildtool.core.refs import CACHE_REPOSITORY, RELEASES_REPOSITORY
from buildtool.model.allowlist import FILE as ALLOWLIST_FILE
from buildtool.model.oslocks import Pins
from buildtool.model.types import Family, Fleet, Root, Service, SmokeCheck
from buildtool.render.dockerfile import Rendered, render_family, render_service

# Bump when the meaning of an identity changes (template semantics not visible in the text).
# 2: locks count through the requirements files of the context only (a lock's comments rebuild nothing).
# 3: every image passes the structure checks (no setuid/setgid files); bootstrapped roots drop setuid bits.
# 4: lean runtime roots and builder roots from OS locks; images exported with rewritten timestamps.
# 5: bootstrapped roots exported as their clamped tarballs, without a timestamp-rewrite pass.
IDENTITY_VERSION = "5"
BUILDER_SUFFIX = "-builder"  # a root family's builder root is pushed as REPOSITORY-builder
MB = 1_000_000  # sizes and budgets are in decimal megabytes of compressed layers, as a registry stores them


@dataclass(frozen=True, kw_only=True)
class Step:
    key: str  # "family:NAME", "family:NAME@MACHINE" or "service:NAME@MACHINE"
    kind: str  # "family" or "service"
    name: str
    machine: str | None  # None: one image serves every machine
    repository: str  # image name below REGISTRY/ORG/
    identity: str
    parent: str | None  # key of the step this image builds FROM
    root: Root | None
    gpu: bool
    budget_mb: int
    smoke: tuple[SmokeCheck, ...]  # this family's checks and all its ancestors'
    health_port: int = 0  # services: where the HEALTHCHECK probes
    lineage: tuple[str, ...] = ()  # the families the image is built on, root first (itself included)
    builder: str | None = None  # key of the root step whose builder root this step's builder stages start from (root steps: their own)
    budget_policy: str = "enforce"  # "warn": over budget_mb is reported, not failed
    runtime_tools: tuple[str, ...] = ()  # tools the structure checks let this image carry
    time_limit_minutes: int = 60  # its family's: how long its build, checks or push may take
    root_pins: Mapping[str, Pins] = field(default_factory=dict, repr=False, compare=False)  # bootstrapped roots: their OS lock sections
    rendered: Rendered = field(repr=False, compare=False)

    def budget_problem(self, compressed: int) -> str:
        """What to say when ``compressed`` bytes exceed this image's budget ("" within it)."""
        if compressed <= self.budget_mb * MB:
            return ""
        family = self.lineage[-1] if self.lineage else self.name
        return (f"{self.repository} is {compressed / MB:.1f} MB compressed, over its budget of {self.budget_mb} MB "
                f"(budget_mb of families/{family}.toml or its parents); make it smaller or raise the budget")  # fmt: skip

    @property
    def builder_repository(self) -> str:
        """Where a root step pushes its builder root ("" for other steps)."""
        return self.repository + BUILDER_SUFFIX if self.root is not None else ""

    @property
    def id_tag(self) -> str:
        return f"id-{self.identity[:24]}"

    def as_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "kind": self.kind,
            "name": self.name,
            "machine": self.machine,
            "repository": self.repository,
            "identity": self.identity,
            "id_tag": self.id_tag,
            "parent": self.parent,
            "gpu": self.gpu,
            "budget_mb": self.budget_mb,
        }


@dataclass(frozen=True, kw_only=True)
class Plan:
    steps: tuple[Step, ...]
    machines: tuple[str, ...]

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)

    def levels(self) -> list[list[Step]]:
        """Steps grouped so that each group depends only on earlier groups (concurrency waves)."""
        depth: dict[str, int] = {}
        for s in self.steps:
            depth[s.key] = 0 if s.parent is None else depth[s.parent] + 1
        waves: list[list[Step]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for s in self.steps:
            waves[depth[s.key]].append(s)
        return waves

    def as_json(self) -> dict[str, object]:
        return {"machines": list(self.machines), "steps": [s.as_json() for s in self.steps]}


def family_repository(family: Family, machine: str | None) -> str:
    return f"{family.name}-{machine}" if family.machine_specific and machine else family.name


def service_repository(fleet: Fleet, service: Service, machine: str) -> str:
    family = fleet.families[service.family]
    cuda = f"-cu{family.cuda.replace('.', '')}" if family.gpu else ""
    return f"{service.slug}{cuda}-{machine}"


def _family_step(fleet: Fleet, family: Family, machine: str, parent: Step | None) -> Step:
    specific = family.machine_specific
    rendered = render_family(fleet, family, fleet.machines[machine] if specific else None)
    root = family.root
    root_pins = {s: fleet.os_lock(family.name).sections.get(s, ()) for s in ("root-builder", "root-runtime")} if root and root.source == "bootstrap" else {}
    identity = sha256_json(
        {
            "v": IDENTITY_VERSION,
            "epoch": fleet.settings.source_date_epoch,
            "kind": "family",
            "name": family.name,
            "machine": machine if specific else None,
            "context": rendered.digest(),
            "root": [root.source, root.image if root.source == "image" else "", root.suite, list(root.packages), list(root.builder_packages)]
            + ([root.archive.declared()] if root.archive.declared() else [])
            if root
            else None,
            # A bootstrapped root is its OS lock; children's locked packages are in their Dockerfiles.
            "os": {section: [list(pin) for pin in pins] for section, pins in root_pins.items()} or None,
            "parent": parent.identity if parent else None,
            # The identity tag vouches for "built and verified": new checks mean a new identity.
            "smoke": [[*c.run, "gpu"] if c.gpu else list(c.run) for c in family.smoke],
            "tools": list(family.runtime_tools),
        }
    )
    key = f"family:{family.name}@{machine}" if specific else f"family:{family.name}"
    return Step(
        key=key,
        kind="family",
        name=family.name,
        machine=machine if specific else None,
        repository=family_repository(family, machine),
        identity=identity,
        parent=parent.key if parent else None,
        root=root,
        gpu=family.gpu,
        budget_mb=family.budget_mb,
        smoke=tuple(check for f in fleet.lineage(family.name) for check in f.smoke),
        lineage=tuple(f.name for f in fleet.lineage(family.name)),
        builder=key if root else (parent.builder if parent else None),
        budget_policy=family.budget_policy,
        runtime_tools=family.runtime_tools,
        time_limit_minutes=family.time_limit_minutes,
        root_pins=root_pins,
        rendered=rendered,
    )


def _service_step(fleet: Fleet, service: Service, machine: str, family_step: Step) -> Step:
    rendered = render_service(fleet, service, fleet.machines[machine])
    family = fleet.families[service.family]
    identity = sha256_json(
        {
            "v": IDENTITY_VERSION,
            "epoch": fleet.settings.source_date_epoch,
            "kind": "service",
            "name": service.name,
            "machine": machine,
            "context": rendered.digest(),
            "parent": family_step.identity,
        }
    )
    return Step(
        key=f"service:{service.name}@{machine}",
        kind="service",
        name=service.name,
        machine=machine,
        repository=service_repository(fleet, service, machine),
        identity=identity,
        parent=family_step.key,
        root=None,
        gpu=family.gpu,
        budget_mb=family.budget_mb,
        smoke=family_step.smoke,
        health_port=service.health_port,
        lineage=family_step.lineage,
        builder=family_step.builder,
        budget_policy=family_step.budget_policy,
        runtime_tools=family_step.runtime_tools,
        time_limit_minutes=family_step.time_limit_minutes,
        rendered=rendered,
    )


TOOLKIT = "the toolkit"


def check_repositories(fleet: Fleet) -> None:
    """Every image of the fleet (each family, builder root and service on each machine) has a
    repository of its own, and none is one the toolkit keeps for itself (the build cache, the release records); two
    that would share one are a ConfigError naming both files. ``validate`` and every plan run it."""
    owners: dict[str, tuple[str, str]] = {CACHE_REPOSITORY: (TOOLKIT, "the registry build cache"), RELEASES_REPOSITORY: (TOOLKIT, "the release records")}
    problems: list[Problem] = []

    def claim(repository: str, file: str, what: str) -> None:
        other = owners.setdefault(repository, (file, what))
        if other[0] == TOOLKIT:
            problems.append(Problem(file=file, key="", message=f"its image {what} would be pushed to {repository!r}, which is {other[1]}, "
                                                               "the toolkit's own repository (prune deletes its tags); rename the file"))  # fmt: skip
        elif other != (file, what) and other[0] != file:
            message = f"its image {what} would be pushed to {repository!r}, as {other[1]} of {other[0]} is; rename one of them"
            problems.append(Problem(file=file, key="", message=message))

    for family in fleet.families.values():
        for machine in fleet.machines if family.machine_specific else (None,):
            repository = family_repository(family, machine)
            claim(repository, family.file, repository)
            if family.root:
                claim(repository + BUILDER_SUFFIX, family.file, f"{repository}{BUILDER_SUFFIX} (its builder root)")
    for service in fleet.services.values():
        for machine in service.machines:
            repository = service_repository(fleet, service, machine)
            claim(repository, service.file, repository)
    images = [r for r, (file, _) in owners.items() if file != TOOLKIT]
    for entry in fleet.allowlist.entries:  # an image scope names an image of the plan, or it silently allows nothing
        if entry.scope == "image" and entry.value not in images:
            problems.append(Problem(file=ALLOWLIST_FILE, key=f"{entry.where}.image",
                                    message=f"{entry.value!r} is no image of the fleet; {did_you_mean(entry.value, images, listing='images')}"))  # fmt: skip
    if problems:
        raise ConfigError(problems)


def _check_names(kind: str, names: Iterable[str], known: Iterable[str]) -> None:
    known = list(known)
    for name in names:
        if name not in known:
            raise UsageError(f"unknown {kind} {name!r}; {did_you_mean(name, known)}")


def make_plan(
    fleet: Fleet,
    *,
    machines: Iterable[str] = (),
    families: Iterable[str] = (),
    groups: Iterable[str] = (),
    services: Iterable[str] = (),
    all_families: bool = False,
    all_services: bool = False,
) -> Plan:
    """Order the selected images: families parents-first, then services, for each selected machine.

    With no selection at all, every family is planned. ``groups`` selects families by group. Families named (or needed by a named
    service) pull in their ancestors, nothing else.
    """
    check_repositories(fleet)
    machines, families, services = list(machines), list(families), list(services)
    _check_names("machine", machines, fleet.machines)
    _check_names("family", families, fleet.families)
    named_families = list(families)
    groups = list(groups)
    _check_names("family group", groups, {f.group for f in fleet.families.values()})
    families += [f.name for f in fleet.families.values() if f.group in groups]
    _check_names("service", services, fleet.services)
    machine_names = tuple(machines) or tuple(fleet.machines)
    if all_services:
        services = list(fleet.services)
    if not (families or services) or all_families:
        families = list(fleet.families)

    gpu_machines = [m for m in machine_names if fleet.machines[m].has_gpu]
    for name in named_families:
        if fleet.families[name].gpu and not gpu_machines:
            raise UsageError(f"family {name!r} is a GPU family, and none of the selected machine(s) {', '.join(machine_names)} has a GPU")
    chosen_services = [fleet.services[s] for s in sorted(set(services))]
    for svc in chosen_services:
        if not set(svc.machines) & set(machine_names) and not all_services:
            raise UsageError(f"service {svc.name!r} runs on {', '.join(svc.machines)}, not on the selected machine(s) {', '.join(machine_names)}")

    steps: dict[str, Step] = {}
    for machine in machine_names:
        needed: set[str] = set()
        for name in families:
            needed.update(f.name for f in fleet.lineage(name))
        for svc in chosen_services:
            if machine in svc.machines:
                needed.update(f.name for f in fleet.lineage(svc.family))
        by_family: dict[str, Step] = {}
        for family in fleet.families.values():  # parents before children
            if family.name not in needed or (family.gpu and not fleet.machines[machine].has_gpu):
                continue  # a machine without a GPU gets no CUDA image
            parent = by_family.get(family.parent) if family.parent else None
            step = _family_step(fleet, family, machine, parent)
            step = steps.setdefault(step.key, step)
            by_family[family.name] = step
        for svc in chosen_services:
            if machine in svc.machines:
                step = _service_step(fleet, svc, machine, by_family[svc.family])
                steps[step.key] = step
    ordered = [s for s in steps.values() if s.kind == "family"] + [s for s in steps.values() if s.kind == "service"]
    return Plan(steps=tuple(ordered), machines=machine_names)


def replan(fleet: Fleet, plan: Plan) -> Plan:
    """The same images planned again on a changed fleet (a lock moved): the same steps, their
    identities from the fleet as it is now."""
    keys = {s.key for s in plan.steps}
    again = make_plan(fleet, machines=plan.machines, families={s.name for s in plan.steps if s.kind == "family"},
                      services={s.name for s in plan.steps if s.kind == "service"})  # fmt: skip
    return Plan(steps=tuple(s for s in again.steps if s.key in keys), machines=plan.machines)
