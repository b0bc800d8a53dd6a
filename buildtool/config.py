"""Read the fleet files (fleet.toml, machines/, families/, services/) into a validated :class:`Fleet`.

Every problem is collected with its file and key, and all of them are raised together as one
:class:`ConfigError`. Nothing outside this module reads the TOML files.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from buildtool.bootstrap import UBUNTU_SUITES
from buildtool.errors import ConfigError, Problem
from buildtool.model import Builder, Family, Fleet, Machine, Root, Service, Settings, SmokeCheck, image_slug

# What a copy of the fleet needs (tests and the bench work on copies).
FLEET_PARTS = ("fleet.toml", "families", "machines", "services", "lockfiles", "agents")

# ---------------------------------------------------------------------------------------------
# A small schema language: each key maps to a checker that returns (value, error message or None).

Checker = Callable[[Any], tuple[Any, str | None]]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SERVICE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PYTHON_RE = re.compile(r"^3\.[0-9]{1,2}$")
CUDA_RE = re.compile(r"^[0-9]{2}\.[0-9]$")
ARCH_RE = re.compile(r"^[0-9]{1,2}\.[0-9]$")
TAG_RE = re.compile(r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$")
ORG_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
REGISTRY_RE = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
DEB_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")


def _str(v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, str) else (None, f"must be a string, got {type(v).__name__}")


def _bool(v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, bool) else (None, f"must be true or false, got {v!r}")


def _int(lo: int, hi: int) -> Checker:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, int):
            return None, f"must be an integer, got {v!r}"
        if not lo <= v <= hi:
            return None, f"must be between {lo} and {hi}, got {v}"
        return v, None

    return check


def _strlist(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return None, "must be a list of strings"
    return tuple(v), None


def _env(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, dict):
        return None, "must be a table of NAME = \"value\""
    bad = [k for k, x in v.items() if not ENV_RE.match(k) or not isinstance(x, str | int | bool)]
    if bad:
        return None, f"invalid entries {bad}: names are [A-Za-z_][A-Za-z0-9_]*, values strings"
    return tuple(sorted((k, str(x).lower() if isinstance(x, bool) else str(x)) for k, x in v.items())), None


def _any(v: Any) -> tuple[Any, str | None]:
    return v, None


def _pattern(regex: re.Pattern[str], what: str) -> Checker:
    def check(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, str) or not regex.match(v):
            return None, f"{v!r} is not {what}"
        return v, None

    return check


SETTINGS_SCHEMA: dict[str, Checker] = {
    "registry": _pattern(REGISTRY_RE, "a registry host[:port], e.g. \"127.0.0.1:5000\""),
    "org": _pattern(ORG_RE, "an image path of lowercase letters, digits, '.', '_', '-' and '/'"),
    "suite_python": _env,
    "ignore": _strlist,
    "source_date_epoch": _int(0, 2**32),
}
SERVICE_DEFAULTS_SCHEMA: dict[str, Checker] = {"source": _str, "entrypoint": _strlist}
FLEET_SCHEMA: dict[str, Checker] = {"settings": _any, "service_defaults": _any}
MACHINE_SCHEMA: dict[str, Checker] = {
    "description": _str,
    "gpu": _str,
    "vram_gb": _int(0, 1024),
    "cuda_arch": _str,
    "profile": _env,
}
ROOT_SCHEMA: dict[str, Checker] = {"source": _str, "image": _str, "suite": _str, "packages": _strlist}
SMOKE_SCHEMA: dict[str, Checker] = {"name": _str, "run": _strlist, "gpu": _bool}
BUILDER_SCHEMA: dict[str, Checker] = {"os_packages": _strlist, "requirements": _strlist, "setup": _str, "env": _env}
FAMILY_SCHEMA: dict[str, Checker] = {
    "description": _str,
    "parent": _str,
    "root": _any,
    "python": _str,
    "gpu": _bool,
    "cuda": _str,
    "machine_specific": _bool,
    "os_packages": _strlist,
    "requirements": _strlist,
    "env": _env,
    "smoke": _any,
    "budget_mb": _int(1, 100_000),
    "vram_gb": _int(0, 1024),
    "group": _str,
    "builder": _any,
}
SERVICE_SCHEMA: dict[str, Checker] = {
    "family": _str,
    "machines": _strlist,
    "port": _int(1, 65535),
    "health_port": _int(1, 65535),
    "needs": _str,
    "vram_gb": _int(0, 1024),
    "source": _str,
    "entrypoint": _strlist,
    "requirements": _strlist,
    "env": _env,
}
REQUIRED = {
    "machine": ("description",),
    "family": ("description",),
    "service": ("family", "machines", "port", "health_port"),
    "root": ("source",),
    "smoke": ("name", "run"),
}


class _Collector:
    """Accumulates problems while reading; ``raise_if_any`` ends the read with all of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []

    def add(self, file: str, key: str, message: str) -> None:
        self.problems.append(Problem(file=file, key=key, message=message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def load_toml(self, path: Path) -> dict[str, Any] | None:
        rel = path.relative_to(self.root).as_posix()
        try:
            with path.open("rb") as fh:
                return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            self.add(rel, "", f"not valid TOML ({exc}); fix the syntax")
        except (OSError, UnicodeDecodeError) as exc:
            self.add(rel, "", f"cannot be read: {exc}")
        return None

    def table(self, file: str, prefix: str, data: Any, schema: dict[str, Checker], kind: str) -> dict[str, Any]:
        """Check ``data`` against ``schema``; return the converted values of the keys that passed."""
        if not isinstance(data, dict):
            self.add(file, prefix, f"must be a table, got {type(data).__name__}")
            return {}
        out: dict[str, Any] = {}
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in schema:
                hint = difflib.get_close_matches(key, schema, n=1)
                fix = f"did you mean '{hint[0]}'?" if hint else f"allowed keys: {', '.join(sorted(schema))}"
                self.add(file, path, f"unknown key; {fix}")
                continue
            converted, err = schema[key](value)
            if err:
                self.add(file, path, err)
            else:
                out[key] = converted
        for key in REQUIRED.get(kind, ()):
            if key not in data:
                self.add(file, f"{prefix}.{key}" if prefix else key, f"is required in a {kind} definition")
        return out


def _did_you_mean(name: str, known: Mapping[str, Any] | list[str]) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean '{hint[0]}'?" if hint else f"known: {', '.join(sorted(known))}"


def _check_requirements(c: _Collector, file: str, key: str, reqs: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for i, line in enumerate(reqs):
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            c.add(file, f"{key}[{i}]", f"malformed requirement {line!r}: {exc}")
            continue
        if req.url:
            c.add(file, f"{key}[{i}]", f"{line!r}: direct URLs cannot be hash-locked from an index; use a version pin")
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            c.add(file, f"{key}[{i}]", f"{req.name} is listed twice; keep one entry")
        seen.add(name)


def _source_path(c: _Collector, file: str, key: str, source: str, *, want_file: bool = False) -> None:
    p = PurePosixPath(source)
    if p.is_absolute() or ".." in p.parts:
        c.add(file, key, f"{source!r} escapes the repository; use a path inside it, relative to the repository root")
        return
    full = (c.root / p).resolve()
    if not full.is_relative_to(c.root.resolve()):
        c.add(file, key, f"{source!r} resolves outside the repository (symlink?); use a path inside it")
    elif want_file and not full.is_file():
        c.add(file, key, f"{source!r} is not a file in the repository; create it or fix the path")
    elif not want_file and not full.is_dir():
        c.add(file, key, f"{source!r} is not a directory in the repository; create it or fix the path")


# ---------------------------------------------------------------------------------------------


def _read_settings(c: _Collector, env: Mapping[str, str]) -> tuple[Settings, dict[str, Any] | None]:
    """The settings, and the service defaults (None when fleet.toml could not be read)."""
    file = "fleet.toml"
    data = c.load_toml(c.root / file) if (c.root / file).is_file() else None
    if data is None and not (c.root / file).is_file():
        c.add(file, "", "is missing; the repository root must hold fleet.toml")
    top = c.table(file, "", data or {}, FLEET_SCHEMA, "fleet")
    s = c.table(file, "settings", top.get("settings", {}), SETTINGS_SCHEMA, "settings")
    d = c.table(file, "service_defaults", top.get("service_defaults", {}), SERVICE_DEFAULTS_SCHEMA, "service_defaults")
    for var, regex in (("FLEET_REGISTRY", REGISTRY_RE), ("FLEET_ORG", ORG_RE)):
        if env.get(var) and not regex.match(env[var]):
            c.add("environment", var, f"{env[var]!r} is not valid here; fix or unset {var}")
    settings = Settings(
        registry=env.get("FLEET_REGISTRY") or s.get("registry", "127.0.0.1:5000"),
        org=env.get("FLEET_ORG") or s.get("org", "fleet"),
        suite_python=s.get("suite_python", (("bookworm", "3.11"), ("trixie", "3.13"), ("jammy", "3.10"))),
        ignore=s.get("ignore", ()),
        source_date_epoch=s.get("source_date_epoch", 0),
    )
    if "source" in d:
        _source_path(c, file, "service_defaults.source", d["source"])
    return settings, (d if data is not None else None)


def _read_machines(c: _Collector) -> dict[str, Machine]:
    machines: dict[str, Machine] = {}
    for path in sorted((c.root / "machines").glob("*.toml")):
        file = path.relative_to(c.root).as_posix()
        name = path.stem
        if not NAME_RE.match(name):
            c.add(file, "", f"machine name {name!r} must be lowercase letters, digits and '-'; rename the file")
        data = c.load_toml(path)
        if data is None:
            continue
        v = c.table(file, "", data, MACHINE_SCHEMA, "machine")
        arch = v.get("cuda_arch", "")
        if arch and not ARCH_RE.match(arch):
            c.add(file, "cuda_arch", f"{arch!r} is not a CUDA compute capability like '8.9'")
        if v.get("gpu") and not arch:
            c.add(file, "cuda_arch", "a machine with a GPU needs its compute capability, e.g. cuda_arch = \"8.6\"")
        if v.get("gpu") and "vram_gb" not in v and "vram_gb" not in data:
            c.add(file, "vram_gb", "a machine with a GPU needs its GPU memory, e.g. vram_gb = 12")
        machines[name] = Machine(
            name=name,
            file=file,
            description=v.get("description", ""),
            gpu=v.get("gpu", ""),
            vram_gb=v.get("vram_gb", 0),
            cuda_arch=arch,
            profile=v.get("profile", ()),
        )
    if not machines:
        c.add("machines/", "", "no machine definitions found; add machines/NAME.toml")
    return machines


def _read_root(c: _Collector, file: str, data: Any, settings: Settings, python: str) -> Root | None:
    v = c.table(file, "root", data, ROOT_SCHEMA, "root")
    source = v.get("source")
    if source is None:
        return None
    if source == "bootstrap":
        suites = dict(settings.suite_python)
        suite = v.get("suite", "")
        if suite not in suites:
            c.add(file, "root.suite", f"unknown suite {suite!r}; {_did_you_mean(suite, suites)}")
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
            if not DEB_RE.match(pkg):
                c.add(file, f"root.packages[{i}]", f"{pkg!r} is not a Debian package name")
    elif source == "image":
        image = v.get("image", "")
        if not image or any(ch.isspace() for ch in image) or image != image.strip():
            c.add(file, "root.image", "an image root needs an image reference, e.g. \"python:3.11-slim-bookworm\"")
        elif not TAG_RE.search(image.rsplit("/", 1)[-1]):
            c.add(file, "root.image", f"{image!r} has no tag or digest; pin one, e.g. {image.rstrip(':')}:TAG")
    else:
        c.add(file, "root.source", f"{source!r} is not a root source; use \"bootstrap\" or \"image\"")
        return None
    return Root(source=source, image=v.get("image", ""), suite=v.get("suite", ""), packages=v.get("packages", ()))


def _read_families(c: _Collector, settings: Settings) -> tuple[dict[str, Family], set[str]]:
    """Valid families parents-first, and the names of all family files."""
    raw: dict[str, tuple[str, dict[str, Any], Any]] = {}
    for path in sorted((c.root / "families").glob("*.toml")):
        file = path.relative_to(c.root).as_posix()
        if not NAME_RE.match(path.stem):
            c.add(file, "", f"family name {path.stem!r} must be lowercase letters, digits and '-'; rename the file")
        data = c.load_toml(path)
        if data is not None:
            raw[path.stem] = (file, c.table(file, "", data, FAMILY_SCHEMA, "family"), data)
    if not raw:
        c.add("families/", "", "no family definitions found; add families/NAME.toml")

    # Parents: known, no cycles. Order parents before children.
    for file, v, _ in raw.values():
        parent = v.get("parent")
        if parent is not None and parent not in raw:
            c.add(file, "parent", f"unknown family {parent!r}; {_did_you_mean(parent, raw)}")
        if (parent is None) == ("root" not in v):
            c.add(file, "parent", "a family has either a parent or a [root] table (exactly one of them)")
    order = _topo_order(c, {n: v.get("parent") for n, (_, v, _) in raw.items()}, {n: f for n, (f, _, _) in raw.items()})

    families: dict[str, Family] = {}
    for name in order:
        file, v, data = raw[name]
        declared = v.get("parent")
        parent = families.get(declared) if declared else None
        # A missing parent (unknown, or dropped in a cycle) is reported once, on its own key;
        # values are checked where they are declared, so no descendant is blamed for them.
        python = v.get("python", parent.python if parent else "")
        if "python" in v and not PYTHON_RE.match(python):
            c.add(file, "python", f"{python!r} is not a Python version like \"3.11\"")
        elif "python" in v and parent and PYTHON_RE.match(parent.python) and python != parent.python:
            c.add(file, "python", f"is {python!r} but parent {parent.name!r} has {parent.python!r}; a child keeps its parent's Python")
        elif "python" not in v and "root" in data:
            c.add(file, "python", "a root family needs its Python version, e.g. python = \"3.11\"")
        cuda = v.get("cuda", parent.cuda if parent else "")
        if "cuda" in v and cuda and not CUDA_RE.match(cuda):
            c.add(file, "cuda", f"{cuda!r} is not a CUDA version like \"12.1\"")
        elif "cuda" in v and parent and parent.cuda and CUDA_RE.match(parent.cuda) and cuda != parent.cuda:
            c.add(file, "cuda", f"is {cuda!r} but parent {parent.name!r} has {parent.cuda!r}; a child keeps its parent's CUDA")
        machine_specific = v.get("machine_specific", parent.machine_specific if parent else False)
        if parent and parent.machine_specific and not machine_specific:
            c.add(file, "machine_specific", f"parent {parent.name!r} is built per machine, so this family is too; remove it")
        gpu = v.get("gpu", parent.gpu if parent else False)
        if parent and parent.gpu and not gpu:
            c.add(file, "gpu", f"parent {parent.name!r} is a GPU family, so this one is too; remove gpu = false")
        if gpu and not cuda and ("gpu" in v or "cuda" in v):
            c.add(file, "cuda", "a GPU family needs its CUDA version, e.g. cuda = \"12.1\"")
        root = _read_root(c, file, data["root"], settings, python) if "root" in data else None
        reqs = v.get("requirements", ())
        _check_requirements(c, file, "requirements", reqs)
        for i, pkg in enumerate(v.get("os_packages", ())):
            if not DEB_RE.match(pkg):
                c.add(file, f"os_packages[{i}]", f"{pkg!r} is not a Debian package name")
        builder = _read_builder(c, file, data["builder"], bool(reqs)) if "builder" in data else None
        families[name] = Family(
            name=name,
            file=file,
            description=v.get("description", ""),
            parent=v.get("parent"),
            root=root,
            python=python,
            gpu=gpu,
            cuda=cuda,
            machine_specific=machine_specific,
            os_packages=v.get("os_packages", ()),
            requirements=reqs,
            env=v.get("env", ()),
            smoke=_read_smoke(c, file, data.get("smoke", [])),
            budget_mb=v.get("budget_mb", parent.budget_mb if parent else 100),
            vram_gb=v.get("vram_gb", parent.vram_gb if parent else 0),
            group=v.get("group", parent.group if parent and parent.group != "cpu" else ("gpu" if gpu else "cpu")),
            builder=builder,
        )
    return families, set(raw)


def _read_builder(c: _Collector, file: str, data: Any, has_requirements: bool) -> Builder:
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
        if not DEB_RE.match(pkg):
            c.add(file, f"builder.os_packages[{i}]", f"{pkg!r} is not a Debian package name")
    if "setup" in v:
        _source_path(c, file, "builder.setup", v["setup"], want_file=True)
    return Builder(os_packages=v.get("os_packages", ()), requirements=reqs, setup=v.get("setup", ""), env=v.get("env", ()))


def _read_smoke(c: _Collector, file: str, data: Any) -> tuple[SmokeCheck, ...]:
    if not isinstance(data, list):
        c.add(file, "smoke", "must be an array of tables: [[smoke]] name = \"...\" run = [...]")
        return ()
    checks = []
    for i, item in enumerate(data):
        v = c.table(file, f"smoke[{i}]", item, SMOKE_SCHEMA, "smoke")
        if "run" in v and not v["run"]:
            c.add(file, f"smoke[{i}].run", "must name a command to run")
        elif "name" in v and "run" in v:
            checks.append(SmokeCheck(name=v["name"], run=v["run"], gpu=v.get("gpu", False)))
    return tuple(checks)


def _topo_order(c: _Collector, parents: dict[str, str | None], files: dict[str, str]) -> list[str]:
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
    c: _Collector, families: dict[str, Family], defined: set[str], machines: dict[str, Machine], defaults: dict[str, Any] | None
) -> dict[str, Service]:
    """``defined``: every family file, including those dropped for a reported fault (no follow-ups)."""
    known_defaults = defaults is not None
    defaults = defaults or {}
    services: dict[str, Service] = {}
    slugs: dict[str, str] = {}
    for path in sorted((c.root / "services").glob("*.toml")):
        file = path.relative_to(c.root).as_posix()
        name = path.stem
        if not SERVICE_RE.match(name):
            c.add(file, "", f"service name {name!r} must start with a letter and use letters, digits, '_'; rename the file")
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
            c.add(file, "family", f"unknown family {family!r}; {_did_you_mean(family, defined)}")
        ms = v.get("machines", ())
        if "machines" in v and not ms:
            c.add(file, "machines", "must name at least one machine")
        for i, m in enumerate(ms):
            if m not in machines:
                c.add(file, f"machines[{i}]", f"unknown machine {m!r}; {_did_you_mean(m, machines)}")
        if len(set(ms)) != len(ms):
            c.add(file, "machines", "lists a machine twice")
        for key in ("port", "health_port"):
            if key in v and v[key] < 1024:
                c.add(file, key, f"{v[key]} is a privileged port; UID 10001 without capabilities cannot bind it, use 1024 or above")
        if "port" in v and v.get("port") == v.get("health_port"):
            c.add(file, "health_port", "equals port; the health endpoint needs its own port")
        source = v.get("source", defaults.get("source", ""))
        if "source" in v:
            _source_path(c, file, "source", source)
        elif not source and known_defaults:
            c.add(file, "source", "no source given and fleet.toml has no service_defaults.source")
        entrypoint = v.get("entrypoint", defaults.get("entrypoint", ()))
        if not entrypoint and known_defaults:
            c.add(file, "entrypoint", "must name the command that starts the service")
        reqs = v.get("requirements", ())
        _check_requirements(c, file, "requirements", reqs)
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
            env=v.get("env", ()),
        )
    if not services:
        c.add("services/", "", "no service definitions found; add services/NAME.toml")
    return services


def _check_placement(c: _Collector, fleet: Fleet) -> None:
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
                c.add(svc.file, f"machines[{i}]", f"GPU family {fam.name!r} cannot run on {m}, which has no GPU")
            elif svc.vram_gb > machine.vram_gb:
                c.add(svc.file, "vram_gb", f"needs {svc.vram_gb} GB of GPU memory but {m} has {machine.vram_gb} GB")


def load_fleet(root: Path, env: Mapping[str, str] | None = None) -> Fleet:
    """Read and validate the fleet under ``root``. Raises :class:`ConfigError` listing every problem."""
    root = root.resolve()
    c = _Collector(root)
    settings, defaults = _read_settings(c, env or {})
    machines = _read_machines(c)
    families, defined = _read_families(c, settings)
    services = _read_services(c, families, defined, machines, defaults)
    fleet = Fleet(root=root, settings=settings, machines=machines, families=families, services=services)
    _check_placement(c, fleet)
    c.raise_if_any()
    return fleet
