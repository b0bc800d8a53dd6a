"""Read the fleet files (fleet.toml, machines/, families/, services/) into a validated :class:`Fleet`.

Every problem is collected with its file and key, and all of them are raised together as one
:class:`ConfigError`. Nothing outside this module reads the TOML files. The source folders the
services name are read here too, once, into memory (:mod:`buildtool.sources`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from buildtool.errors import ConfigError, Problem
from buildtool.model import GENERATED_PROFILE_KEYS, UBUNTU_SUITES, Builder, Family, Fleet, Machine, Root, Service, Settings, SmokeCheck, image_slug
from buildtool.quote import CONTROL
from buildtool.schema import (
    ARCH_RE,
    BUILDER_SCHEMA,
    CUDA_RE,
    DEB_RE,
    FAMILY_SCHEMA,
    FLEET_SCHEMA,
    IMAGE_RE,
    IMAGE_TAG_RE,
    MACHINE_SCHEMA,
    NAME_RE,
    ORG_RE,
    PYTHON_RE,
    REGISTRY_RE,
    ROOT_SCHEMA,
    SERVICE_DEFAULTS_SCHEMA,
    SERVICE_RE,
    SERVICE_SCHEMA,
    SETTINGS_SCHEMA,
    SMOKE_SCHEMA,
    TAG_RE,
    Collector,
    did_you_mean,
)
from buildtool.sources import SourceProblem, SourceTree, check_folder, read_regular, read_tree

# What a copy of the fleet needs (tests and the bench work on copies).
FLEET_PARTS = ("fleet.toml", "families", "machines", "services", "lockfiles", "agents")


def copy_fleet(src: Path, dest: Path) -> None:
    """Copy the fleet's parts from ``src`` into the new or empty folder ``dest``: regular files only,
    read as build contexts are (a symlink out of its part, a FIFO or a device raises ConfigError)."""
    for part in FLEET_PARTS:
        try:
            if (src / part).is_dir():
                files = [(f"{part}/{rel}", data) for rel, data in read_tree(src, part, ()).files]
            else:
                files = [(part, read_regular(src / part, part))]
        except SourceProblem as exc:
            raise ConfigError([Problem(file=exc.path, key="", message=f"{exc.message}; the fleet cannot be copied")]) from None
        for rel, data in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
# Set by the toolkit in every family image; a family's env cannot replace them.
ROOT_ENV_NAMES = frozenset({"LANG", "PATH", "PIP_DISABLE_PIP_VERSION_CHECK", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "VIRTUAL_ENV"})
# Set by the toolkit in every service image; a service's env cannot replace them (nor the profile's keys).
SERVICE_ENV_NAMES = frozenset({"SERVICE_NAME", "SERVICE_PORT", "HEALTH_PORT"})


def _check_requirements(c: Collector, file: str, key: str, reqs: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for i, line in enumerate(reqs):
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            c.add(file, f"{key}[{i}]", f"malformed requirement {line!r}: {exc}")
            continue
        if line != line.strip():
            c.add(file, f"{key}[{i}]", f"{line!r} has surrounding spaces; remove them")
        if req.url:
            c.add(file, f"{key}[{i}]", f"{line!r}: direct URLs cannot be hash-locked from an index; use a version pin")
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            c.add(file, f"{key}[{i}]", f"{req.name} is listed twice; keep one entry")
        seen.add(name)


def _check_env_names(c: Collector, file: str, key: str, env: tuple[tuple[str, str], ...], reserved: Mapping[str, str]) -> None:
    for name, _ in env:
        if name in reserved:
            c.add(file, f"{key}.{name}", f"is set by {reserved[name]} and cannot be replaced here; remove it or rename the variable")


def _source(c: Collector, file: str, key: str, rel: str, *, want_file: bool = False) -> bool:
    why = check_folder(c.root, rel, want_file=want_file)
    if why:
        c.add(file, key, why)
    return why is None


# ---------------------------------------------------------------------------------------------


def _read_settings(c: Collector, env: Mapping[str, str]) -> tuple[Settings, dict[str, Any] | None]:
    """The settings, and the service defaults (None when fleet.toml could not be read)."""
    file = "fleet.toml"
    path = c.root / file
    exists = path.exists() or path.is_symlink()
    data = c.load_toml(path) if exists else None
    if not exists:
        c.add(file, "", "is missing; the repository root must hold fleet.toml")
    top = c.table(file, "", data or {}, FLEET_SCHEMA, "fleet")
    s = c.table(file, "settings", top.get("settings", {}), SETTINGS_SCHEMA, "settings")
    d = c.table(file, "service_defaults", top.get("service_defaults", {}), SERVICE_DEFAULTS_SCHEMA, "service_defaults")
    for var, regex in (("FLEET_REGISTRY", REGISTRY_RE), ("FLEET_ORG", ORG_RE), ("FORCE_IMAGE_TAG", IMAGE_TAG_RE)):
        if env.get(var) and not regex.fullmatch(env[var]):
            c.add("environment", var, f"{env[var]!r} is not valid here; fix or unset {var}")
    for var in ("FLEET_REGISTRY_TOKEN", "FLEET_PIP_INDEX_URL"):
        if CONTROL.search(env.get(var, "")):
            c.add("environment", var, f"holds a line break or control character (value not shown); fix or unset {var}")
    settings = Settings(
        registry=env.get("FLEET_REGISTRY") or s.get("registry", "127.0.0.1:5000"),
        org=env.get("FLEET_ORG") or s.get("org", "fleet"),
        suite_python=s.get("suite_python", (("bookworm", "3.11"), ("jammy", "3.10"), ("trixie", "3.13"))),
        ignore=s.get("ignore", ()),
        source_date_epoch=s.get("source_date_epoch", 0),
    )
    if "source" in d and not _source(c, file, "service_defaults.source", d["source"]):
        d["source"] = ""  # reported here; services that use the default get no follow-up
    return settings, (d if data is not None else None)


def _file_names(c: Collector, folder: str) -> list[Path]:
    """The ``*.toml`` files of ``folder``, sorted; a name that cannot be shown is reported."""
    base = c.root / folder
    return sorted(base.glob("*.toml")) if base.is_dir() and not base.is_symlink() else []


def _read_machines(c: Collector) -> tuple[dict[str, Machine], set[str]]:
    """Valid machines, and the names of all machine files (so a broken one causes no follow-ups)."""
    machines: dict[str, Machine] = {}
    defined: set[str] = set()
    for path in _file_names(c, "machines"):
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
        )
        generated = dict.fromkeys(GENERATED_PROFILE_KEYS, "the toolkit (from the machine's name, gpu, vram_gb and cuda_arch)")
        _check_env_names(c, file, "profile", machine.profile, generated)
        machines[name] = machine
    if not defined:
        c.add("machines/", "", "no machine definitions found; add machines/NAME.toml")
    return machines, defined


def _read_root(c: Collector, file: str, data: Any, settings: Settings, python: str) -> Root | None:
    v = c.table(file, "root", data, ROOT_SCHEMA, "root")
    source = v.get("source")
    if source is None:
        return None
    if source == "bootstrap":
        suites = dict(settings.suite_python)
        suite = v.get("suite", "")
        if suite not in suites:
            c.add(file, "root.suite", f"unknown suite {suite!r}; {did_you_mean(suite, suites)}")
        elif python and suites[suite] != python:
            c.add(
                file,
                "root.suite",
                f"{'Ubuntu' if suite in UBUNTU_SUITES else 'Debian'} {suite} ships Python {suites[suite]}, "
                f"but the family declares python = {python!r}; "
                'use source = "image" with an upstream image of that Python, or change python',
            )
        if not v.get("packages"):
            c.add(file, "root.packages", "a bootstrapped root needs its Debian packages (python3-minimal, tini, ...)")
        for i, pkg in enumerate(v.get("packages", ())):
            if not DEB_RE.fullmatch(pkg):
                c.add(file, f"root.packages[{i}]", f"{pkg!r} is not a Debian package name")
    elif source == "image":
        image = v.get("image", "")
        if not image or not IMAGE_RE.fullmatch(image):
            what = f"; {image!r} has an empty tag" if image.endswith(":") else f"; {image!r} is not one" if image else ""
            c.add(file, "root.image", f'an image root needs an image reference, e.g. "python:3.11-slim-bookworm"{what}')
        elif not TAG_RE.search(image.rsplit("/", 1)[-1]):
            c.add(file, "root.image", f"{image!r} has no tag or digest; pin one, e.g. {image.rstrip(':')}:TAG")
    else:
        c.add(file, "root.source", f'{source!r} is not a root source; use "bootstrap" or "image"')
        return None
    if "image" in v and v["image"] and source == "bootstrap" and not IMAGE_RE.fullmatch(v["image"]):
        c.add(file, "root.image", f"{v['image']!r} is not an image reference")
    return Root(source=source, image=v.get("image", ""), suite=v.get("suite", ""), packages=v.get("packages", ()))


def _read_families(c: Collector, settings: Settings) -> tuple[dict[str, Family], set[str]]:
    """Valid families parents-first, and the names of all family files."""
    raw: dict[str, tuple[str, dict[str, Any], Any]] = {}
    defined: set[str] = set()
    for path in _file_names(c, "families"):
        file = path.relative_to(c.root).as_posix()
        if not NAME_RE.fullmatch(path.stem):
            c.add(repr(file) if "\n" in file else file, "", f"family name {path.stem!r} must be lowercase letters, digits and '-'; rename the file")
            continue
        defined.add(path.stem)
        data = c.load_toml(path)
        if data is not None:
            raw[path.stem] = (file, c.table(file, "", data, FAMILY_SCHEMA, "family"), data)
    if not defined:
        c.add("families/", "", "no family definitions found; add families/NAME.toml")

    # Parents: known, no cycles. Order parents before children.
    for file, v, data in raw.values():
        parent = v.get("parent")
        if parent is not None and parent not in defined:
            c.add(file, "parent", f"unknown family {parent!r}; {did_you_mean(parent, defined)}")
        if (parent is None) == ("root" not in data) and ("parent" in v or "parent" not in data):
            c.add(file, "parent", "a family has either a parent or a [root] table (exactly one of them)")
    order = _topo_order(c, {n: v.get("parent") for n, (_, v, _) in raw.items()}, {n: f for n, (f, _, _) in raw.items()})

    families: dict[str, Family] = {}
    for name in order:
        file, v, data = raw[name]
        declared = v.get("parent")
        parent = families.get(declared) if declared else None
        if declared and parent is None:
            continue  # its parent is broken or missing: reported there, no follow-ups here
        # Values are checked where they are declared, so no descendant is blamed for them.
        python = v.get("python", parent.python if parent else "")
        if "python" in v and not PYTHON_RE.fullmatch(python):
            c.add(file, "python", f'{python!r} is not a Python version like "3.11"')
        elif "python" in v and parent and PYTHON_RE.fullmatch(parent.python) and python != parent.python:
            c.add(file, "python", f"is {python!r} but parent {parent.name!r} has {parent.python!r}; a child keeps its parent's Python")
        elif "python" not in v and "root" in data:
            c.add(file, "python", 'a root family needs its Python version, e.g. python = "3.11"')
        cuda = v.get("cuda", parent.cuda if parent else "")
        if "cuda" in v and cuda and not CUDA_RE.fullmatch(cuda):
            c.add(file, "cuda", f'{cuda!r} is not a CUDA version like "12.1"')
        elif "cuda" in v and parent and parent.cuda and CUDA_RE.fullmatch(parent.cuda) and cuda != parent.cuda:
            c.add(file, "cuda", f"is {cuda!r} but parent {parent.name!r} has {parent.cuda!r}; a child keeps its parent's CUDA")
        machine_specific = v.get("machine_specific", parent.machine_specific if parent else False)
        if parent and parent.machine_specific and not machine_specific:
            c.add(file, "machine_specific", f"parent {parent.name!r} is built per machine, so this family is too; remove it")
        gpu = v.get("gpu", parent.gpu if parent else False)
        if parent and parent.gpu and not gpu:
            c.add(file, "gpu", f"parent {parent.name!r} is a GPU family, so this one is too; remove gpu = false")
        if gpu and not cuda and ("gpu" in v or "cuda" in v):
            c.add(file, "cuda", 'a GPU family needs its CUDA version, e.g. cuda = "12.1"')
        root = _read_root(c, file, data["root"], settings, python) if "root" in data else None
        reqs = v.get("requirements", ())
        _check_requirements(c, file, "requirements", reqs)
        for i, pkg in enumerate(v.get("os_packages", ())):
            if not DEB_RE.fullmatch(pkg):
                c.add(file, f"os_packages[{i}]", f"{pkg!r} is not a Debian package name")
        env = v.get("env", ())
        _check_env_names(c, file, "env", env, dict.fromkeys(ROOT_ENV_NAMES, "the toolkit in every family image"))
        builder = _read_builder(c, file, data["builder"], bool(reqs), machine_specific) if "builder" in data else None
        families[name] = Family(
            name=name,
            file=file,
            description=v.get("description", ""),
            parent=declared,
            root=root,
            python=python,
            gpu=gpu,
            cuda=cuda,
            machine_specific=machine_specific,
            os_packages=v.get("os_packages", ()),
            requirements=reqs,
            env=env,
            smoke=_read_smoke(c, file, data.get("smoke", [])),
            budget_mb=v.get("budget_mb", parent.budget_mb if parent else 100),
            vram_gb=v.get("vram_gb", parent.vram_gb if parent else 0),
            group=v.get("group", parent.group if parent and parent.group != "cpu" else ("gpu" if gpu else "cpu")),
            builder=builder,
        )
    return families, defined


def _read_builder(c: Collector, file: str, data: Any, has_requirements: bool, machine_specific: bool) -> Builder:
    v = c.table(file, "builder", data, BUILDER_SCHEMA, "builder")
    if not has_requirements:
        c.add(file, "builder", "build tools serve a family's own requirements, and this family has none; remove [builder]")
    reqs = v.get("requirements", ())
    _check_requirements(c, file, "builder.requirements", reqs)
    for i, line in enumerate(reqs):
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # reported above
        specs = list(req.specifier)
        if not req.url and (len(specs) != 1 or specs[0].operator != "=="):
            fix = "build requirements are locked without their dependencies, so pin each exactly (name==version)"
            c.add(file, f"builder.requirements[{i}]", f"{line!r}: {fix}")
    for i, pkg in enumerate(v.get("os_packages", ())):
        if not DEB_RE.fullmatch(pkg):
            c.add(file, f"builder.os_packages[{i}]", f"{pkg!r} is not a Debian package name")
    for name, value in v.get("env", ()):
        refs = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", value)
        allowed = {"CMAKE_CUDA_ARCHITECTURES", "TORCH_CUDA_ARCH_LIST"} if machine_specific else set()
        stray = [r for r in refs if r not in allowed or f"${{{r}}}" not in value]
        if stray:
            fix = "${CMAKE_CUDA_ARCHITECTURES} and ${TORCH_CUDA_ARCH_LIST} (machine_specific families only)"
            c.add(file, f"builder.env.{name}", f"refers to ${stray[0]}; the only substitutions are {fix}, every other '$' would be literal")
    setup = v.get("setup", "")
    if setup and not _source(c, file, "builder.setup", setup, want_file=True):
        setup = ""
    return Builder(os_packages=v.get("os_packages", ()), requirements=reqs, setup=setup, env=v.get("env", ()))


def _read_smoke(c: Collector, file: str, data: Any) -> tuple[SmokeCheck, ...]:
    if not isinstance(data, list):
        c.add(file, "smoke", 'must be an array of tables: [[smoke]] name = "..." run = [...]')
        return ()
    checks = []
    for i, item in enumerate(data):
        v = c.table(file, f"smoke[{i}]", item, SMOKE_SCHEMA, "smoke")
        if "run" in v and not v["run"]:
            c.add(file, f"smoke[{i}].run", "must name a command to run")
        elif "name" in v and "run" in v:
            checks.append(SmokeCheck(name=v["name"], run=v["run"], gpu=v.get("gpu", False)))
    return tuple(checks)


def _topo_order(c: Collector, parents: dict[str, str | None], files: dict[str, str]) -> list[str]:
    """Parents before children, alphabetical among siblings; cycles are reported with their path."""
    order: list[str] = []
    done: set[str] = set()
    reported: set[frozenset[str]] = set()

    def visit(name: str, stack: list[str]) -> bool:
        if name in done:
            return True
        if name in stack:
            cycle = stack[stack.index(name) :] + [name]
            key = frozenset(cycle)
            if key not in reported:
                reported.add(key)
                c.add(files[cycle[0]], "parent", f"cycle in the family tree: {' -> '.join(cycle)}; break it")
            return False
        parent = parents.get(name)
        ok = True
        if parent is not None and parent in parents:
            ok = visit(parent, stack + [name])
        if ok:
            done.add(name)
            order.append(name)
        return ok

    for name in sorted(parents):
        visit(name, [])
    return order


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
    for path in _file_names(c, "services"):
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
        if "source" in v and not _source(c, file, "source", source):
            source = ""
        elif not source and known_defaults and "source" not in defaults:
            c.add(file, "source", "no source given and fleet.toml has no service_defaults.source")
        if source:
            origins.setdefault(source, (file, "source") if "source" in v else ("fleet.toml", "service_defaults.source"))
        entrypoint = v.get("entrypoint", defaults.get("entrypoint", ()))
        if not entrypoint and known_defaults:
            c.add(file, "entrypoint", "must name the command that starts the service")
        reqs = v.get("requirements", ())
        _check_requirements(c, file, "requirements", reqs)
        env = v.get("env", ())
        reserved = dict.fromkeys(SERVICE_ENV_NAMES, "the toolkit in every service image")
        for m in ms:
            if m in machines:
                reserved.update(dict.fromkeys(machines[m].profile_dict(), f"the machine profile of {m}"))
        _check_env_names(c, file, "env", env, reserved)
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


def load_fleet(root: Path, env: Mapping[str, str] | None = None) -> Fleet:
    """Read and validate the fleet under ``root``. Raises :class:`ConfigError` listing every problem."""
    root = root.resolve()
    c = Collector(root)
    settings, defaults = _read_settings(c, env or {})
    machines, machine_files = _read_machines(c)
    families, defined = _read_families(c, settings)
    services, origins = _read_services(c, families, defined, machines, machine_files, defaults)
    fleet = Fleet(
        root=root,
        settings=settings,
        machines=machines,
        families=families,
        services=services,
        sources=_read_sources(c, origins, settings.ignore),
        scripts=_read_scripts(c, families),
    )
    _check_placement(c, fleet)
    c.raise_if_any()
    return fleet
