"""What there is to lock: one target per family with requirements, per family's build tools, and
per service with extras. Pure: a function of the loaded fleet and its locks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from buildtool.core.errors import LockError
from buildtool.core.hashing import sha256_json
from buildtool.model.locks import INPUTS_KEY, Lock, build_lock_name, family_lock_path, service_lock_path
from buildtool.model.types import Fleet

INDEX_URL = "https://pypi.org/simple"
# Images run Debian bookworm (glibc 2.36) on x86_64.
PLATFORM = "x86_64-manylinux_2_36"
COMPILE_COMMAND = "nox -s lock"


@dataclass(frozen=True, kw_only=True)
class Target:
    """One lock to produce: a family's, its build tools', or a service's extras on top of its family."""

    name: str
    path: str  # the lock file, relative to the repository root
    python: str
    requirements: tuple[str, ...]
    constraints: str | None  # the lock this one is compiled against (the nearest ancestor's)
    no_deps: bool = False  # build requirements: exactly the listed packages, each pinned

    def inputs_hash(self, parent: Lock | None) -> str:
        """Everything the resolution depends on: Python, platform, index, requirements, the parent's pins."""
        data: dict[str, object] = {
            "python": self.python,
            "platform": PLATFORM,
            "index": INDEX_URL,
            "requirements": sorted(self.requirements),
            "constraints": sorted(f"{p.name}=={p.version}" for p in parent.pins.values()) if parent else [],
        }
        if self.no_deps:
            data["no_deps"] = True
        return sha256_json(data)


def targets(fleet: Fleet, names: Iterable[str] | None = None) -> list[Target]:
    """Families parents-first (each followed by its build tools), then services; ``names`` filters them."""
    out: list[Target] = []
    for fam in fleet.families.values():
        if fam.requirements:
            owner = fleet.lock_owner(fam.parent) if fam.parent else None
            out.append(
                Target(
                    name=fam.name,
                    path=family_lock_path(fam.name),
                    python=fam.python,
                    requirements=fam.requirements,
                    constraints=family_lock_path(owner.name) if owner else None,
                )
            )
        if fam.builder and fam.builder.requirements:
            # Build tools are locked against the family's own lock, so a package both need has one version.
            out.append(
                Target(
                    name=build_lock_name(fam.name),
                    path=family_lock_path(build_lock_name(fam.name)),
                    python=fam.python,
                    requirements=fam.builder.requirements,
                    constraints=family_lock_path(fam.name),
                    no_deps=True,
                )
            )
    for svc in fleet.services.values():
        if svc.requirements:
            owner = fleet.lock_owner(svc.family)
            out.append(
                Target(
                    name=svc.name,
                    path=service_lock_path(svc.name),
                    python=fleet.families[svc.family].python,
                    requirements=svc.requirements,
                    constraints=family_lock_path(owner.name) if owner else None,
                )
            )
    if names:
        names = list(names)
        known = {t.name for t in out}
        unknown = sorted(set(names) - known)
        if unknown:
            raise LockError(f"nothing to lock for {', '.join(unknown)}; lockable: {', '.join(sorted(known))}")
        out = [t for t in out if t.name in names]
    return out


def problem(target: Target, locks: Mapping[str, Lock], faults: Mapping[str, str]) -> str | None:
    """Why ``target``'s lock cannot be used as it is, found without resolving; None when it can."""
    for path in (target.path, target.constraints):
        if path in faults:
            return faults[path]
    lock = locks.get(target.path)
    parent = locks.get(target.constraints) if target.constraints else None
    if lock is None:
        return f"{target.path}: missing; run `{COMPILE_COMMAND}`"
    if lock.edited():
        return f"{target.path}: was edited by hand (its content no longer matches its content-sha256); run `{COMPILE_COMMAND} -- {target.name}`"
    if lock.header_value(INPUTS_KEY) != target.inputs_hash(parent):
        return f"{target.path}: stale (its inputs changed since it was compiled); run `{COMPILE_COMMAND} -- {target.name}`"
    unhashed = [p.name for p in lock.pins.values() if "--hash=sha256:" not in p.block]
    if unhashed:
        return f"{target.path}: {', '.join(unhashed)} without a hash; run `{COMPILE_COMMAND} -- {target.name}`"
    for name, pin in (parent.pins if parent else {}).items():
        mine = lock.pins.get(name)
        if mine and mine.version != pin.version:
            return f"{target.path}: pins {name}=={mine.version} but its parent pins {pin.version}; run `{COMPILE_COMMAND} -- {target.name}`"
    return None
