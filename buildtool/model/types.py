"""The fleet as frozen data. Built once by :mod:`buildtool.model.load` (or in memory, by tests);
everything else reads these, never the files."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from buildtool.core.errors import LockError, Problem
from buildtool.core.names import image_slug
from buildtool.model.allowlist import Allowlist
from buildtool.model.locks import Lock
from buildtool.model.oslocks import OsLock, os_lock_path
from buildtool.model.sources import SourceTree

Pairs = tuple[tuple[str, str], ...]
# Ubuntu suites a root can be bootstrapped from (every other suite is Debian's).
UBUNTU_SUITES = frozenset({"focal", "jammy", "noble"})
# Programs no runtime image carries unless its family lists them in runtime_tools (structure checks).
CHECKED_TOOLS = ("apt", "dpkg", "perl", "pip")
# Profile entries the toolkit derives from a machine file; a profile table cannot set them.
GENERATED_PROFILE_KEYS = ("MACHINE", "GPU_MODEL", "GPU_VRAM_GB", "CUDA_ARCH", "TORCH_CUDA_ARCH_LIST", "CMAKE_CUDA_ARCHITECTURES")


@dataclass(frozen=True, kw_only=True)
class SmokeCheck:
    """A command run inside the image (``docker run --network=none``) that must exit 0."""

    name: str
    run: tuple[str, ...]
    gpu: bool = False  # needs a GPU: runs with --gpus all where the engine has one, else is skipped


@dataclass(frozen=True, kw_only=True)
class Archive:
    """Where a bootstrapped root's Debian or Ubuntu packages come from (and what its families
    install with apt): the distribution's archive or a mirror of it, or its snapshot archive at
    one point in time, where no version is ever replaced. Empty values take the defaults
    (:func:`buildtool.adapters.bootstrap.sources`)."""

    mirror: str = ""  # the archive (Ubuntu: every pocket), e.g. http://deb.debian.org/debian
    security: str = ""  # Debian's security archive, e.g. http://deb.debian.org/debian-security
    snapshot: str = ""  # a point in time, YYYYMMDDTHHMMSSZ: every pocket as the snapshot archive served it then
    snapshot_mirror: str = ""  # a snapshot archive in snapshot.debian.org's (or snapshot.ubuntu.com's) URL layout
    keyring: str = ""  # an OpenPGP keyring in the repository that signs it (default: the distribution's archive keyring)

    def declared(self) -> dict[str, str]:
        """The values set (what identities and lock inputs carry: an unset archive changes neither)."""
        return {k: v for k, v in vars(self).items() if v}


@dataclass(frozen=True, kw_only=True)
class Root:
    """Where a root family's filesystem comes from."""

    source: str  # "bootstrap" (mmdebstrap from the Debian archive) or "image" (upstream image reference)
    image: str = ""  # used when source == "image"
    suite: str = ""  # used when source == "bootstrap"
    packages: tuple[str, ...] = ()  # the runtime root keeps these and what they depend on, nothing else
    builder_packages: tuple[str, ...] = ()  # the builder root has these as well (python3-venv: pip)
    archive: Archive = field(default_factory=Archive)  # fleet.toml's [archives.DISTRIBUTION], then [root.archive]

    @property
    def distribution(self) -> str:
        return "ubuntu" if self.suite in UBUNTU_SUITES else "debian"


@dataclass(frozen=True, kw_only=True)
class Builder:
    """Build-only tools of a family that compiles packages from source.

    They live in the builder stage and never reach the image: Debian packages, hash-locked Python
    build requirements (locked without their dependencies, in ``lockfiles/FAMILY.build.txt``), a
    setup script run after they are installed, and the environment of the compile step.
    """

    os_packages: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    setup: str = ""  # script path relative to the repository root
    env: Pairs = ()


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str
    file: str
    description: str
    parent: str | None
    root: Root | None
    python: str
    gpu: bool
    cuda: str
    machine_specific: bool  # built once per machine (compiled code, baked profile)
    os_packages: tuple[str, ...]
    requirements: tuple[str, ...]
    env: Pairs
    smoke: tuple[SmokeCheck, ...]
    budget_mb: int
    vram_gb: int
    group: str  # selection group for build_families: "cpu", "gpu", "legacy", ...
    builder: Builder | None = None
    vuln_policy: str = "enforce"  # "warn": the gate reports this family's findings (and its children's) but fails nothing
    budget_policy: str = "enforce"  # "warn": an image over budget_mb is reported, not failed
    time_limit_minutes: int = 60  # a build, check or push step of its images is ended after this
    runtime_tools: tuple[str, ...] = ()  # tools the structure checks would refuse that this family's images need (its own and inherited)
    end_of_life: dt.date | None = None  # after this date the family is past its end of life (its own, or its parent's)
    end_of_life_reason: str = ""
    memory_mb: int = 0  # its services' memory limit (0: none declared here; the parent's applies)
    volumes: tuple[str, ...] = ()  # "NAME:/path" named volumes its services mount (and its children's)

    @property
    def has_python_deps(self) -> bool:
        return bool(self.requirements)


@dataclass(frozen=True, kw_only=True)
class Machine:
    name: str
    file: str
    description: str
    gpu: str  # GPU model, "" when the machine has none
    vram_gb: int
    cuda_arch: str  # e.g. "8.9"
    profile: Pairs  # baked into /etc/machine-profile.json and the image environment
    informational: tuple[str, ...] = ()  # profile keys only the fleet's own services read (model/profiles.py)
    ram_gb: int = 0  # its memory: the services' declared limits must fit (0: not declared, not checked)
    vram_overcommit_reason: str = ""  # why its services' declared GPU memory may exceed the card's
    publish_address: str = "127.0.0.1"  # where its compose stack publishes the services' ports

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu)

    def generated_profile(self) -> dict[str, str]:
        """The profile entries the toolkit derives from the machine file (a machine without a GPU has no CUDA ones)."""
        if not self.has_gpu:
            return {"MACHINE": self.name}
        return {
            "MACHINE": self.name,
            "GPU_MODEL": self.gpu,
            "GPU_VRAM_GB": str(self.vram_gb),
            "CUDA_ARCH": self.cuda_arch,
            "TORCH_CUDA_ARCH_LIST": self.cuda_arch,
            "CMAKE_CUDA_ARCHITECTURES": self.cuda_arch.replace(".", ""),
        }

    def profile_dict(self) -> dict[str, str]:
        return {**self.generated_profile(), **dict(self.profile)}


@dataclass(frozen=True, kw_only=True)
class Service:
    name: str
    file: str
    family: str
    machines: tuple[str, ...]
    port: int
    health_port: int
    needs: str
    vram_gb: int
    source: str  # build context of the app code, relative to the repository root
    entrypoint: tuple[str, ...]
    requirements: tuple[str, ...]
    env: Pairs
    layer: str = ""  # its startup layer (fleet.toml [layers]): compose starts it once the layers before are healthy
    memory_mb: int = 0  # its container's memory limit (0: its family's, if any)
    volumes: tuple[str, ...] = ()  # named volumes of its own, beside its families'
    secrets: tuple[str, ...] = ()  # compose secrets it reads from /run/secrets/NAME

    @property
    def slug(self) -> str:
        return image_slug(self.name)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """fleet.toml's [settings]: the fleet's own defaults (a run's settings may override registry and org)."""

    registry: str
    org: str
    suite_python: Pairs  # Debian suite -> Python version it ships
    ignore: tuple[str, ...]  # patterns excluded from every build context
    source_date_epoch: int  # timestamps inside images, for reproducible builds
    archives: tuple[tuple[str, Archive], ...] = ()  # [archives.debian], [archives.ubuntu]: defaults of every bootstrapped root


@dataclass(frozen=True, kw_only=True)
class Fleet:
    root: Path
    settings: Settings
    machines: dict[str, Machine] = field(default_factory=dict)
    families: dict[str, Family] = field(default_factory=dict)  # parents before children
    services: dict[str, Service] = field(default_factory=dict)  # sorted by name
    sources: dict[str, SourceTree] = field(default_factory=dict)  # service source folders, read once
    scripts: dict[str, bytes] = field(default_factory=dict)  # builder setup scripts by path, read once
    locks: dict[str, Lock] = field(default_factory=dict)  # lock files by path (lockfiles/...), read once
    os_locks: dict[str, OsLock] = field(default_factory=dict)  # OS package locks by path (lockfiles/os/...), read once
    lock_faults: dict[str, str] = field(default_factory=dict)  # lock files that exist but cannot be read: path -> why
    allowlist: Allowlist = field(default_factory=Allowlist)  # security/allowlist.toml
    layers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # startup layer -> the layers it starts after
    warnings: tuple[Problem, ...] = ()  # found while loading, nothing fails on them: a profile key no program reads

    def lineage(self, family: str) -> list[Family]:
        """The family and its ancestors, root first."""
        chain: list[Family] = []
        name: str | None = family
        while name is not None:
            fam = self.families[name]
            chain.append(fam)
            name = fam.parent
        return chain[::-1]

    def children(self, family: str) -> list[Family]:
        return [f for f in self.families.values() if f.parent == family]

    def lock(self, path: str) -> Lock:
        """The lock file at ``path`` (``lockfiles/...``); LockError when it is missing or unreadable."""
        if path in self.locks:
            return self.locks[path]
        if path in self.lock_faults:
            raise LockError(self.lock_faults[path])
        raise LockError(f"{path} is missing; run `nox -s lock`")

    def os_lock(self, family: str) -> OsLock:
        """The OS package lock of ``family``; LockError when it is missing or unreadable."""
        path = os_lock_path(family)
        if path in self.os_locks:
            return self.os_locks[path]
        if path in self.lock_faults:
            raise LockError(self.lock_faults[path])
        raise LockError(f"{path} is missing; run `nox -s lock`")

    def os_lock_sections(self, family: str) -> tuple[str, ...]:
        """The sections of ``family``'s OS lock (none: it has no lock). Only bootstrapped lineages are locked."""
        fam = self.families[family]
        root = self.root_of(family).root
        if root is None or root.source != "bootstrap":
            return ()
        sections = ("root-builder", "root-runtime") if fam.root else ()
        if fam.os_packages:
            sections += ("runtime",)
        if fam.builder and fam.builder.os_packages:
            sections += ("builder",)
        return sections

    def root_of(self, family: str) -> Family:
        """The root family of ``family``'s lineage: whose builder root its builder stages start from."""
        return self.lineage(family)[0]

    def lock_owner(self, family: str) -> Family | None:
        """The nearest family on ``family``'s lineage (itself included) that has requirements: the
        lock its children and services are compiled against."""
        return next((f for f in reversed(self.lineage(family)) if f.requirements), None)

    def has_os_package(self, family: str, package: str) -> bool:
        return any(package in f.os_packages or package in (f.root.packages if f.root else ()) for f in self.lineage(family))
