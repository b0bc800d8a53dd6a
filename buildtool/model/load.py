"""Read a fleet from disk into a validated :class:`Fleet`: the one place the fleet's files are read.

fleet.toml, machines/, families/ and services/ are parsed and checked; the source folders the
services name, the builder scripts and the lock files are read once, into memory, so that what
is planned and hashed is what is written into a build context. Every problem is collected with
its file and key, and all of them are raised together as one :class:`ConfigError`. Warnings (a
profile key no program reads) do not stop the read: the fleet carries them in ``Fleet.warnings``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Any

from buildtool.core.errors import Problem
from buildtool.core.names import did_you_mean, image_slug
from buildtool.model.allowlist import read_allowlist
from buildtool.model.archives import read_archives
from buildtool.model.checks import check_env_names, check_requirements
from buildtool.model.deploy import check_deployment, read_layers
from buildtool.model.families import read_families
from buildtool.model.locks import LOCK_DIR, Lock, LockSyntax, parse_lock
from buildtool.model.oslocks import OS_LOCK_DIR, OsLock, OsLockSyntax, parse_os_lock
from buildtool.model.profiles import check_profile
from buildtool.model.schema import (
    ARCH_RE,
    CUDA_ARCHES,
    FLEET_SCHEMA,
    MACHINE_SCHEMA,
    NAME_RE,
    SERVICE_DEFAULTS_SCHEMA,
    SERVICE_RE,
    SERVICE_SCHEMA,
    SETTINGS_SCHEMA,
    Collector,
    check_source,
    file_names,
)
from buildtool.model.sources import SourceProblem, SourceTree, read_regular, read_tree
from buildtool.model.types import GENERATED_PROFILE_KEYS, Family, Fleet, Machine, Service, Settings

# What a fleet is made of (tests and the bench work on copies of these).
FLEET_PARTS = ("fleet.toml", "families", "machines", "services", "lockfiles", "agents", "security")
# Set by the toolkit in every service image; a service's env cannot replace them (nor the profile's keys).
SERVICE_ENV_NAMES = frozenset({"SERVICE_NAME", "SERVICE_PORT", "HEALTH_PORT"})
DEFAULT_SUITES = (("bookworm", "3.11"), ("jammy", "3.10"), ("trixie", "3.13"))


def _read_settings(c: Collector) -> tuple[Settings, dict[str, Any] | None, dict[str, tuple[str, ...]]]:
    """The settings, the service defaults (None when fleet.toml could not be read) and the startup layers."""
    file = "fleet.toml"
    path = c.root / file
    exists = path.exists() or path.is_symlink()
    data = c.load_toml(path) if exists else None
    if not exists:
        c.add(file, "", "is missing; the repository root must hold fleet.toml")
    top = c.table(file, "", data or {}, FLEET_SCHEMA, "fleet")
    s = c.table(file, "settings", top.get("settings", {}), SETTINGS_SCHEMA, "settings")
    d = c.table(file, "service_defaults", top.get("service_defaults", {}), SERVICE_DEFAULTS_SCHEMA, "service_defaults")
    settings = Settings(
        registry=s.get("registry", "127.0.0.1:5000"),
        org=s.get("org", "fleet"),
        suite_python=s.get("suite_python", DEFAULT_SUITES),
        ignore=s.get("ignore", ()),
        source_date_epoch=s.get("source_date_epoch", 0),
        archives=read_archives(c, file, top["archives"]) if "archives" in top else (),
    )
    if "source" in d and not check_source(c, file, "service_defaults.source", d["source"]):
        d["source"] = ""  # reported here; services that use the default get no follow-up
    return settings, (d if data is not None else None), read_layers(c, top["layers"]) if "layers" in top else {}


def _read_machines(c: Collector) -> tuple[dict[str, Machine], set[str]]:
    """Valid machines, and the names of all machine files (so a broken one causes no follow-ups)."""
    machines: dict[str, Machine] = {}
    defined: set[str] = set()
    for path in file_names(c, "machines"):
        file = path.relative_to(c.root).as_posix()
        name = path.stem
        if not NAME_RE.fullmatch(name):
            c.add(repr(file) if "\n" in file else file, "", f"machine name {name!r} must be lowercase letters, digits and '-'; rename the file")
            continue
        defined.add(name)
        data = c.load_toml(path)
        if data is None:
            continue
        v = c.table(file, "", data, MACHINE_SCHEMA, "machine")
        arch = v.get("cuda_arch", "")
        if arch and not ARCH_RE.fullmatch(arch):
            c.add(file, "cuda_arch", f"{arch!r} is not a CUDA compute capability like '8.9'")
            arch = ""
        elif arch and arch not in CUDA_ARCHES:
            c.add(file, "cuda_arch", f"{arch!r} is no GPU's compute capability; one of {', '.join(CUDA_ARCHES)} (RTX 4090: 8.9, RTX 3060: 8.6)")
            arch = ""
        if v.get("gpu") and not arch and "cuda_arch" not in data:
            c.add(file, "cuda_arch", 'a machine with a GPU needs its compute capability, e.g. cuda_arch = "8.6"')
        if v.get("gpu") and "vram_gb" not in data:
            c.add(file, "vram_gb", "a machine with a GPU needs its GPU memory, e.g. vram_gb = 12")
        if not v.get("gpu") and "cuda_arch" in v:
            c.add(file, "cuda_arch", 'a machine without a GPU has no compute capability; set gpu = "MODEL" or remove cuda_arch')
        machine = Machine(
            name=name,
            file=file,
            description=v.get("description", ""),
            gpu=v.get("gpu", ""),
            vram_gb=v.get("vram_gb", 0),
            cuda_arch=arch,
            profile=v.get("profile", ()),
            informational=v.get("informational", ()),
            ram_gb=v.get("ram_gb", 0),
            vram_overcommit_reason=v.get("vram_overcommit_reason", ""),
            publish_address=v.get("publish_address", "127.0.0.1"),
        )
        generated = dict.fromkeys(GENERATED_PROFILE_KEYS, "the toolkit (from the machine's name, gpu, vram_gb and cuda_arch)")
        generated |= dict.fromkeys(SERVICE_ENV_NAMES, "the toolkit in every service image (from the service's port)")
        check_env_names(c, file, "profile", machine.profile, generated)
        # A [profile] or informational list reported as invalid above is not judged again (None).
        keys = [k for k, _ in machine.profile] if "profile" in v or "profile" not in data else None
        declared = machine.informational if "informational" in v or "informational" not in data else None
        check_profile(c, file, keys, declared)
        machines[name] = machine
    if not defined:
        c.add("machines/", "", "no machine definitions found; add machines/NAME.toml")
    return machines, defined


def _read_services(
    c: Collector,
    families: dict[str, Family],
    defined: set[str],
    machines: dict[str, Machine],
    machine_files: set[str],
    defaults: dict[str, Any] | None,
) -> tuple[dict[str, Service], dict[str, tuple[str, str]]]:
    """Services, and where each source folder is first named. ``defined``/``machine_files``: every family and machine file, including those dropped for a
    reported fault, so a broken file causes no follow-up problems here."""
    known_defaults = defaults is not None
    defaults = defaults or {}
    services: dict[str, Service] = {}
    origins: dict[str, tuple[str, str]] = {}
    slugs: dict[str, str] = {}
    for path in file_names(c, "services"):
        file = path.relative_to(c.root).as_posix()
        name = path.stem
        if not SERVICE_RE.fullmatch(name):
            shown = repr(file) if "\n" in file else file
            c.add(shown, "", f"service name {name!r} must start with a letter and use letters, digits, '_'; rename the file")
            continue
        slug = image_slug(name)
        if slug in slugs:
            c.add(file, "", f"service {name!r} has the same image name {slug!r} as {slugs[slug]!r}; rename one of them")
            continue
        slugs[slug] = file
        data = c.load_toml(path)
        if data is None:
            continue
        v = c.table(file, "", data, SERVICE_SCHEMA, "service")
        family = v.get("family", "")
        if "family" in v and family not in defined:
            c.add(file, "family", f"unknown family {family!r}; {did_you_mean(family, defined)}")
        ms = v.get("machines", ())
        if "machines" in v and not ms:
            c.add(file, "machines", "must name at least one machine")
        for i, m in enumerate(ms):
            if m not in machine_files:
                c.add(file, f"machines[{i}]", f"unknown machine {m!r}; {did_you_mean(m, machine_files)}")
        if len(set(ms)) != len(ms):
            c.add(file, "machines", "lists a machine twice")
        for key in ("port", "health_port"):
            if key in v and v[key] < 1024:
                c.add(file, key, f"{v[key]} is a privileged port; UID 10001 without capabilities cannot bind it, use 1024 or above")
        if "port" in v and v.get("port") == v.get("health_port"):
            c.add(file, "health_port", "equals port; the health endpoint needs its own port")
        source = v.get("source", defaults.get("source", ""))
        if "source" in v and not check_source(c, file, "source", source):
            source = ""
        elif not source and known_defaults and "source" not in defaults:
            c.add(file, "source", "no source given and fleet.toml has no service_defaults.source")
        if source:
            origins.setdefault(source, (file, "source") if "source" in v else ("fleet.toml", "service_defaults.source"))
        entrypoint = v.get("entrypoint", defaults.get("entrypoint", ()))
        if not entrypoint and known_defaults:
            c.add(file, "entrypoint", "must name the command that starts the service")
        reqs = v.get("requirements", ())
        check_requirements(c, file, "requirements", reqs)
        env = v.get("env", ())
        reserved = dict.fromkeys(SERVICE_ENV_NAMES, "the toolkit in every service image")
        for m in ms:
            if m in machines:
                reserved.update(dict.fromkeys(machines[m].profile_dict(), f"the machine profile of {m}"))
        check_env_names(c, file, "env", env, reserved)
        services[name] = Service(
            name=name,
            file=file,
            family=family,
            machines=tuple(ms),
            port=v.get("port", 0),
            health_port=v.get("health_port", 0),
            needs=v.get("needs", ""),
            vram_gb=v.get("vram_gb", families[family].vram_gb if family in families else 0),
            source=source,
            entrypoint=tuple(entrypoint),
            requirements=reqs,
            env=env,
            layer=v.get("layer", ""),
            memory_mb=v.get("memory_mb", 0),
            volumes=v.get("volumes", ()),
            secrets=v.get("secrets", ()),
        )
    if not slugs:
        c.add("services/", "", "no service definitions found; add services/NAME.toml")
    return services, origins


def _check_placement(c: Collector, fleet: Fleet) -> None:
    """Ports unique per machine; GPU services only where a GPU with enough memory is."""
    used: dict[tuple[str, int], tuple[str, str]] = {}
    for svc in fleet.services.values():
        for m in svc.machines:
            for key in ("port", "health_port"):
                port = getattr(svc, key)
                if not port:  # missing: reported as required already
                    continue
                other = used.get((m, port))
                if other and other[0] != svc.name:
                    c.add(svc.file, key, f"port {port} on {m} is already used by {other[0]} ({other[1]}); pick a free port")
                else:
                    used[(m, port)] = (svc.name, key)
        fam = fleet.families.get(svc.family)
        if fam is None:  # unknown or dropped family: reported already
            continue
        if not fam.gpu:
            if svc.vram_gb:
                c.add(svc.file, "vram_gb", f"family {svc.family!r} uses no GPU; remove vram_gb or pick a GPU family")
            continue
        for i, m in enumerate(svc.machines):
            machine = fleet.machines.get(m)
            if machine is None:
                continue
            if not machine.has_gpu:
                c.add(svc.file, f"machines[{i}]", f"GPU family {fam.name!r} cannot run on {m}, which has no GPU; gets no CUDA image there")
            elif svc.vram_gb > machine.vram_gb:
                c.add(svc.file, "vram_gb", f"needs {svc.vram_gb} GB of GPU memory but {m} has {machine.vram_gb} GB")


def _read_sources(c: Collector, origins: dict[str, tuple[str, str]], ignore: tuple[str, ...]) -> dict[str, SourceTree]:
    """Every source folder the services name, read once; a bad file is reported once, where the
    folder is first named (a service file, or fleet.toml for the default source)."""
    trees: dict[str, SourceTree] = {}
    for rel, (file, key) in sorted(origins.items()):
        try:
            trees[rel] = read_tree(c.root, rel, ignore)
        except SourceProblem as exc:
            c.add(file, key, f"{exc.path} {exc.message}")
    return trees


def _read_scripts(c: Collector, families: dict[str, Family]) -> dict[str, bytes]:
    scripts: dict[str, bytes] = {}
    for fam in families.values():
        setup = fam.builder.setup if fam.builder else ""
        if setup and setup not in scripts:
            try:
                scripts[setup] = read_regular(c.root / setup, setup)
            except SourceProblem as exc:
                c.add(fam.file, "builder.setup", f"{exc.path} {exc.message}")
    return scripts


def _read_locks(root: Path) -> tuple[dict[str, Lock], dict[str, OsLock], dict[str, str]]:
    """Every lock file under lockfiles/ (OS package locks under lockfiles/os/), by path; those that
    cannot be read, with why."""
    locks: dict[str, Lock] = {}
    os_locks: dict[str, OsLock] = {}
    faults: dict[str, str] = {}
    base = root / LOCK_DIR
    if not base.is_dir() or base.is_symlink():
        return locks, os_locks, faults
    for dirpath, _, names in os.walk(base):
        for name in sorted(names):
            if not name.endswith(".txt"):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            try:
                text = read_regular(root / rel, rel).decode("utf-8")
            except SourceProblem as exc:
                faults[rel] = f"{exc.path}: {exc.message}; regenerate it with `nox -s lock`"
            except UnicodeDecodeError as exc:
                faults[rel] = f"{rel}: is not UTF-8 (byte {exc.start}); regenerate it with `nox -s lock`"
            else:
                if not rel.startswith(OS_LOCK_DIR + "/"):
                    try:
                        locks[rel] = parse_lock(rel, text)
                    except LockSyntax as exc:
                        faults[rel] = f"{exc}; regenerate it with `nox -s lock`"
                    continue
                try:
                    os_locks[rel] = parse_os_lock(rel, text)
                except OsLockSyntax as exc:
                    faults[rel] = f"{exc}; regenerate it with `nox -s lock`"
    return locks, os_locks, faults


def load_fleet(root: Path, *, today: dt.date | None = None) -> Fleet:
    """Read and validate the fleet under ``root``. Raises :class:`ConfigError` listing every problem.

    ``today`` (default: the UTC date) bounds the allowlist's expiry dates.
    """
    root = root.resolve()
    c = Collector(root)
    settings, defaults, layers = _read_settings(c)
    machines, machine_files = _read_machines(c)
    families, defined = read_families(c, settings)
    services, origins = _read_services(c, families, defined, machines, machine_files, defaults)
    locks, os_locks, lock_faults = _read_locks(root)
    fleet = Fleet(
        root=root,
        settings=settings,
        machines=machines,
        families=families,
        services=services,
        sources=_read_sources(c, origins, settings.ignore),
        scripts=_read_scripts(c, families),
        locks=locks,
        os_locks=os_locks,
        lock_faults=lock_faults,
        allowlist=read_allowlist(c, defined, today or dt.datetime.now(dt.UTC).date()),
        layers=layers,
        warnings=tuple(sorted(c.warnings, key=lambda p: (p.file, p.key, p.message))),
    )
    _check_placement(c, fleet)
    check_deployment(c, fleet, layers_known=defaults is not None)  # an unreadable fleet.toml: no follow-ups
    c.raise_if_any()
    eol = _past_end_of_life(fleet, today or dt.datetime.now(dt.UTC).date())
    return dataclasses.replace(fleet, warnings=tuple(sorted([*c.warnings, *eol], key=lambda p: (p.file, p.key, p.message))))  # the checks' too


def _past_end_of_life(fleet: Fleet, today: dt.date) -> list[Problem]:
    """A warning for each family past its declared end of life, naming the services still on it
    (a family inherits its parent's end of life, so only the one that declares it is named)."""
    out = []
    for family in fleet.families.values():
        parent = fleet.families[family.parent] if family.parent else None
        if family.end_of_life is None or family.end_of_life >= today or (parent and parent.end_of_life == family.end_of_life):
            continue
        on_it = sorted(s.name for s in fleet.services.values() if family.name in {f.name for f in fleet.lineage(s.family)})
        still = f"{len(on_it)} service(s) still on it: {', '.join(on_it)}" if on_it else "no service is on it any more; remove the family"
        message = f"{family.name} is past its end of life ({family.end_of_life.isoformat()}): {family.end_of_life_reason}; {still}"
        out.append(Problem(file=family.file, key="end_of_life", message=message))
    return out
