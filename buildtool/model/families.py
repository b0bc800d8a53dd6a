"""Reading families/: the family tree, roots, build tools and smoke checks."""

from __future__ import annotations

import re
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from buildtool.core.graph import CycleError, toposort
from buildtool.core.names import did_you_mean
from buildtool.model.archives import root_archive
from buildtool.model.checks import check_env_names, check_requirements
from buildtool.model.schema import (
    BUILDER_SCHEMA,
    CUDA_RE,
    DEB_RE,
    FAMILY_SCHEMA,
    IMAGE_RE,
    NAME_RE,
    PYTHON_RE,
    ROOT_SCHEMA,
    SMOKE_SCHEMA,
    TAG_RE,
    Collector,
    check_source,
    file_names,
)
from buildtool.model.types import CHECKED_TOOLS, UBUNTU_SUITES, Archive, Builder, Family, Root, Settings, SmokeCheck

# Set by the toolkit in every family image; a family's env cannot replace them.
ROOT_ENV_NAMES = frozenset({"LANG", "PATH", "PIP_DISABLE_PIP_VERSION_CHECK", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "VIRTUAL_ENV"})


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
        for key in ("packages", "builder_packages"):
            _check_debs(c, file, f"root.{key}", v.get(key, ()))
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
    distribution = "ubuntu" if v.get("suite") in UBUNTU_SUITES else "debian"
    archive = dict(settings.archives).get(distribution, Archive())
    if "archive" in v and source != "bootstrap":
        c.add(file, "root.archive", 'an apt archive belongs to a bootstrapped root (source = "bootstrap"); remove it')
    elif "archive" in v:
        archive = root_archive(c, file, v["archive"], archive, distribution=distribution)
    return Root(source=source, image=v.get("image", ""), suite=v.get("suite", ""), packages=v.get("packages", ()),
                builder_packages=v.get("builder_packages", ()), archive=archive if source == "bootstrap" else Archive())  # fmt: skip


def _check_debs(c: Collector, file: str, key: str, packages: tuple[str, ...]) -> None:
    for i, pkg in enumerate(packages):
        if not DEB_RE.fullmatch(pkg):
            pinned = " (name the package only: its version is locked in lockfiles/os)" if "=" in pkg else ""
            c.add(file, f"{key}[{i}]", f"{pkg!r} is not a Debian package name{pinned}")


def read_families(c: Collector, settings: Settings) -> tuple[dict[str, Family], set[str]]:
    """Valid families parents-first, and the names of all family files."""
    raw: dict[str, tuple[str, dict[str, Any], Any]] = {}
    defined: set[str] = set()
    for path in file_names(c, "families", also=(".sh",)):  # builder setup scripts live beside the families
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
    order = _order(c, {n: v.get("parent") for n, (_, v, _) in raw.items()}, {n: f for n, (f, _, _) in raw.items()})

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
        check_requirements(c, file, "requirements", reqs)
        _check_debs(c, file, "os_packages", v.get("os_packages", ()))
        if v.get("os_packages") and "root" in data:
            c.add(file, "os_packages", "a root family's Debian packages are its root.packages; move them there (children add os_packages)")
        env = v.get("env", ())
        check_env_names(c, file, "env", env, dict.fromkeys(ROOT_ENV_NAMES, "the toolkit in every family image"), allow=frozenset({"LD_LIBRARY_PATH"}))
        builder = _read_builder(c, file, data["builder"], bool(reqs), machine_specific) if "builder" in data else None
        vuln_policy = v.get("vuln_policy", parent.vuln_policy if parent else "enforce")
        if v.get("vuln_policy") == "warn" and not v.get("vuln_policy_reason", "").strip():
            c.add(file, "vuln_policy_reason", 'a family that downgrades the gate to "warn" says why (and until when) in vuln_policy_reason')
        if v.get("budget_policy") == "warn" and not v.get("budget_reason", "").strip():
            c.add(file, "budget_reason", 'a family whose images may exceed budget_mb (budget_policy = "warn") says why in budget_reason')
        if "end_of_life" in v and not v.get("end_of_life_reason", "").strip():
            c.add(file, "end_of_life_reason", "a family with an end of life says why, and where its services should move, in end_of_life_reason")
        if "end_of_life_reason" in v and "end_of_life" not in data:
            c.add(file, "end_of_life", "end_of_life_reason needs the date it explains: add end_of_life = YYYY-MM-DD, or remove the reason")
        own_eol = "end_of_life" in v
        tools = v.get("runtime_tools", ())
        for i, tool in enumerate(tools):
            if tool not in CHECKED_TOOLS:
                c.add(file, f"runtime_tools[{i}]", f"{tool!r} is not a tool the structure checks refuse; {did_you_mean(tool, CHECKED_TOOLS)}")
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
            time_limit_minutes=v.get("time_limit_minutes", parent.time_limit_minutes if parent else 60),
            vram_gb=v.get("vram_gb", parent.vram_gb if parent else 0),
            group=v.get("group", parent.group if parent and parent.group != "cpu" else ("gpu" if gpu else "cpu")),
            builder=builder,
            vuln_policy=vuln_policy,
            budget_policy=v.get("budget_policy", parent.budget_policy if parent else "enforce"),
            runtime_tools=tuple(sorted({*(parent.runtime_tools if parent else ()), *tools})),
            end_of_life=v.get("end_of_life") if own_eol else parent.end_of_life if parent else None,
            end_of_life_reason=v.get("end_of_life_reason", "") if own_eol else parent.end_of_life_reason if parent else "",
            memory_mb=v.get("memory_mb", parent.memory_mb if parent else 0),
            volumes=(*(parent.volumes if parent else ()), *v.get("volumes", ())),  # a family's services mount its ancestors' volumes too
        )
    return families, defined


def _read_builder(c: Collector, file: str, data: Any, has_requirements: bool, machine_specific: bool) -> Builder:
    v = c.table(file, "builder", data, BUILDER_SCHEMA, "builder")
    if not has_requirements:
        c.add(file, "builder", "build tools serve a family's own requirements, and this family has none; remove [builder]")
    reqs = v.get("requirements", ())
    check_requirements(c, file, "builder.requirements", reqs)
    for i, line in enumerate(reqs):
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # reported above
        specs = list(req.specifier)
        if not req.url and (len(specs) != 1 or specs[0].operator != "=="):
            fix = "build requirements are locked without their dependencies, so pin each exactly (name==version)"
            c.add(file, f"builder.requirements[{i}]", f"{line!r}: {fix}")
    _check_debs(c, file, "builder.os_packages", v.get("os_packages", ()))
    check_env_names(c, file, "builder.env", v.get("env", ()), dict.fromkeys(ROOT_ENV_NAMES, "the toolkit in every build"), build=True)
    for name, value in v.get("env", ()):
        refs = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", value)
        allowed = {"CMAKE_CUDA_ARCHITECTURES", "TORCH_CUDA_ARCH_LIST"} if machine_specific else set()
        stray = [r for r in refs if r not in allowed or f"${{{r}}}" not in value]
        if stray:
            fix = "${CMAKE_CUDA_ARCHITECTURES} and ${TORCH_CUDA_ARCH_LIST} (machine_specific families only)"
            c.add(file, f"builder.env.{name}", f"refers to ${stray[0]}; the only substitutions are {fix}, every other '$' would be literal")
    setup = v.get("setup", "")
    if setup and not check_source(c, file, "builder.setup", setup, want_file=True):
        setup = ""
    return Builder(os_packages=v.get("os_packages", ()), requirements=reqs, setup=setup, env=v.get("env", ()))


def _read_smoke(c: Collector, file: str, data: Any) -> tuple[SmokeCheck, ...]:
    if not isinstance(data, list):
        c.add(file, "smoke", 'must be an array of tables: [[smoke]] name = "..." run = [...]')
        return ()
    checks = []
    for i, item in enumerate(data):
        v = c.table(file, f"smoke[{i}]", item, SMOKE_SCHEMA, "smoke")
        if isinstance(v.get("name"), str) and not v["name"].strip():
            c.add(file, f"smoke[{i}].name", "is empty; name the check")
        elif "run" in v and not v["run"]:
            c.add(file, f"smoke[{i}].run", "must name a command to run")
        elif "name" in v and "run" in v:
            checks.append(SmokeCheck(name=v["name"], run=v["run"], gpu=v.get("gpu", False)))
    return tuple(checks)


def _order(c: Collector, parents: dict[str, str | None], files: dict[str, str]) -> list[str]:
    """Parents before children; each cycle is reported once, with its path, and left out."""
    parents = dict(parents)
    while True:
        try:
            return toposort(parents)
        except CycleError as exc:
            c.add(files[exc.cycle[0]], "parent", f"cycle in the family tree: {' -> '.join(exc.cycle)}; break it")
            for name in exc.cycle:
                parents.pop(name, None)
