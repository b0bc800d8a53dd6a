"""Render Dockerfiles and build contexts from the fleet model, in memory. Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2

from buildtool.core import dpkg
from buildtool.core.hashing import sha256
from buildtool.model.locks import Lock, build_lock_name, family_lock_path, install_set, service_lock_path
from buildtool.model.oslocks import apt_requests, os_lock_path, pins_file
from buildtool.model.types import Family, Fleet, Machine, Service
from buildtool.render import quote
from buildtool.render.quote import Quoted

LOCK_DIR = "lockfiles"
REGENERATE = "nox -s render"

ROOT_ENV = (
    ("LANG", "C.UTF-8"),
    ("PATH", "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("PYTHONUNBUFFERED", "1"),
    ("VIRTUAL_ENV", "/opt/venv"),
)
# A family's build tools ([builder] requirements) are installed here, in its builder stage only:
# on PATH and PYTHONPATH for the setup script and the compile step, and out of pip check's view.
BUILD_TOOLS = "/opt/build-tools"
# A child's builder stage sees its parent's venv bound read-only here, in the steps that need it
# (setup, install, pip check), never copied into a layer: a CUDA parent's venv is gigabytes, and a
# copy of it was one more layer in BuildKit's cache and the registry cache for every child.
PARENT_VENV = "/opt/parent"


def parent_mount(stage: str) -> Quoted:
    """The RUN option binding ``stage``'s /opt/venv at PARENT_VENV ("" without a stage)."""
    return Quoted(f"--mount=type=bind,from={quote.token(stage)},source=/opt/venv,target={PARENT_VENV}" if stage else "")


def _with_parent(python: str, stage: str) -> str:
    """A shell assignment putting the parent's site-packages on PYTHONPATH, after what is there."""
    return f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{PARENT_VENV}/lib/python{quote.token(python)}/site-packages" ' if stage else ""


def build_tools_env(python: str) -> list[tuple[str, str]]:
    """The builder stage's environment once its build tools are installed."""
    path = dict(ROOT_ENV)["PATH"]
    return [("BUILD_TOOLS", BUILD_TOOLS), ("PATH", f"{BUILD_TOOLS}/bin:{path}"), ("PYTHONPATH", f"{BUILD_TOOLS}/lib/python{python}/site-packages")]


@dataclass(frozen=True, kw_only=True)
class Rendered:
    """Everything one image build reads, in memory: its Dockerfile, generated files and app sources.

    The bytes hashed into the identity (:meth:`digest`) are the bytes :meth:`write` puts on disk.
    """

    dockerfile: str
    files: tuple[tuple[str, bytes], ...]  # generated context files, by path in the context
    app_files: tuple[tuple[str, bytes], ...] = ()  # copied to app/ in the context (services only)
    # Build targets whose layers are bootstrap tarballs only, file times clamped by mmdebstrap:
    # their export needs no timestamp-rewrite pass ("runtime" is the default target).
    clamped: tuple[str, ...] = ()

    def digest(self) -> str:
        """The content hash of the context (each file by path and sha256, in a fixed order)."""
        parts = [b"Dockerfile\0" + self.dockerfile.encode() + b"\0"]
        parts += [path.encode() + b"\0" + sha256(data).encode() + b"\0" for path, data in self.files]
        parts += [b"app/" + path.encode() + b"\0" + sha256(data).encode() + b"\0" for path, data in self.app_files]
        return sha256(b"".join(parts))

    def context_files(self) -> list[tuple[str, bytes]]:
        """(path in the context, bytes) of every file: what the materialiser writes."""
        return [("Dockerfile", self.dockerfile.encode()), *self.files, *((f"app/{p}", d) for p, d in self.app_files)]


def _finalize(value: object) -> object:
    """Every ``{{ }}`` of a template must be quoted for its place (:mod:`buildtool.quote`) or a number."""
    if isinstance(value, Quoted) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise quote.Unrepresentable(f"template value {value!r} was not quoted for its place in the Dockerfile")


def apt_install(packages: Iterable[str], mounts: Iterable[str] = ()) -> Quoted:
    """One RUN step installing Debian packages (``name=version`` when locked), with apt's caches as
    cache mounts, its logs removed and no setuid or setgid bit left (services run as 10001 and
    need none). ``mounts``: context files bound read-only at /tmp/NAME for what follows."""
    binds = "".join(f"    --mount=type=bind,source={quote.token(m)},target=/tmp/{quote.token(m)} \\\n" for m in mounts)
    words = " \\\n      ".join(quote.shell_word(p) for p in packages)
    return Quoted(
        "RUN --network=host --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n"
        "    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \\\n"
        f"{binds}"
        "    apt-get update \\\n"
        f" && apt-get install -y --no-install-recommends \\\n      {words} \\\n"
        " && rm -rf /var/log/apt /var/log/dpkg.log /var/log/alternatives.log /var/cache/ldconfig/aux-cache \\\n"
        " && find / -xdev -perm /6000 -type f -exec chmod ug-s {} +"
    )


def pip_install(requirements: str = "requirements.txt", prefix: str = "/install", compile: bool = False, parent: str = "", python: str = "") -> Quoted:
    """One RUN step installing a hash-locked requirements file of the context.

    The CA bundle and an index URL with its token reach pip only as BuildKit secrets.
    ``compile``: packages may be built from source, with the build tools of the stage (no build
    isolation) and without pip's wheel cache, which does not key on compiler flags or the target
    architecture. Into a prefix, pip ignores what the stage's venv holds (the parent's packages,
    pip itself, build tools): the prefix gets exactly the file's packages. ``prefix=""``: into the
    stage's own venv. ``parent``: the stage whose venv a build from source sees (PARENT_VENV, on
    PYTHONPATH for Python ``python``).
    """
    name = quote.token(requirements)
    mount = f"    {parent_mount(parent)} \\\n" if parent else ""
    options = " --no-build-isolation --no-cache-dir" if compile else ""
    if prefix:
        # Exactly the listed packages into the prefix, whatever the stage's venv already holds.
        options += f" --ignore-installed --prefix={quote.token(prefix)}"
    return Quoted(
        "RUN --network=host --mount=type=cache,target=/root/.cache/pip,sharing=locked \\\n"
        "    --mount=type=secret,id=pip_ca,required=true \\\n"
        "    --mount=type=secret,id=pip_index,required=false \\\n"
        f"    --mount=type=bind,source={name},target=/tmp/{name} \\\n"
        f"{mount}"
        '    if [ -s /run/secrets/pip_index ]; then PIP_INDEX_URL="$(cat /run/secrets/pip_index)"; export PIP_INDEX_URL; fi \\\n'
        f" && {_with_parent(python, parent)}PIP_CERT=/run/secrets/pip_ca /opt/venv/bin/python -m pip install \\\n"
        f"      --no-deps --require-hashes --disable-pip-version-check{options} -r /tmp/{name}"
    )


def pip_check(python: str, parent: str = "") -> Quoted:
    """One RUN step: pip check over /install and, given ``parent``, the parent's venv (where pip is)."""
    site = f"/install/lib/python{quote.token(python)}/site-packages"
    mount = f"{parent_mount(parent)} \\\n    " if parent else ""
    path = f"{site}:{PARENT_VENV}/lib/python{quote.token(python)}/site-packages" if parent else site
    return Quoted(f"RUN --network=none {mount}PYTHONPATH={path} /opt/venv/bin/python -m pip check")


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("buildtool.render", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters.update(
        token=quote.token,
        comment=quote.comment,
        exec_form=quote.exec_form,
        shell_words=quote.shell_words,
        key_values=quote.key_values,
        build_env=lambda pairs: quote.key_values(pairs, build_args=True),
    )
    env.globals.update(apt_install=apt_install, pip_install=pip_install, pip_check=pip_check, parent_mount=parent_mount)
    return env


def _inherited_lock(fleet: Fleet, family: str | None) -> Lock | None:
    """The lock of the nearest family on ``family``'s lineage (itself included) that has requirements."""
    owner = fleet.lock_owner(family) if family else None
    return fleet.lock(family_lock_path(owner.name)) if owner else None


def _header(source: str, what: str) -> Quoted:
    return Quoted(f"# {quote.comment(what)}, generated by buildtool from {quote.comment(source)}; do not edit.\n# Regenerate with: {REGENERATE}")


def dockerignore(fleet: Fleet) -> bytes:
    lines = ["# Generated by buildtool from fleet.toml settings.ignore; do not edit."]
    for pattern in fleet.settings.ignore:
        lines.append(f"**/{pattern.rstrip('/')}" if pattern.endswith("/") else f"**/{pattern}")
    return ("\n".join(lines) + "\n").encode()


def machine_profile(machine: Machine) -> bytes:
    return (json.dumps(machine.profile_dict(), indent=2, sort_keys=True) + "\n").encode()


def _os_files(fleet: Fleet, family: Family) -> tuple[dict[str, object] | None, list[str], list[tuple[str, bytes]]]:
    """The OS package export of ``family`` (its requests and names), its builder stage's requests, and the context files they read.

    Under a bootstrapped root every request is ``name=version`` from the family's OS lock; under
    an image root (not locked) the names are requested as they are.
    """
    sections = fleet.os_lock_sections(family.name)
    lock = fleet.os_lock(family.name) if sections else None
    files: list[tuple[str, bytes]] = []
    export = None
    if family.os_packages:
        if lock is not None:
            root_lock = fleet.os_lock(fleet.root_of(family.name).name)
            requests = apt_requests(lock.sections.get("runtime", ()))
            files.append(("os-pins.txt", pins_file({**root_lock.pins("root-builder"), **lock.pins("runtime")})))
        else:
            requests = list(family.os_packages)
            files.append(("os-pins.txt", b""))  # not locked: nothing to hold the export to
        files.append(("dpkg.py", dpkg_script()))
        export = {"requests": requests, "packages": list(family.os_packages)}
    builder: list[str] = []
    if family.builder and family.builder.os_packages:
        builder = apt_requests(lock.sections.get("builder", ())) if lock is not None else list(family.builder.os_packages)
    return export, builder, files


@cache
def dpkg_script() -> bytes:
    """buildtool/core/dpkg.py, which the export step runs in the builder root."""
    return Path(dpkg.__file__).read_bytes()


def render_family(fleet: Fleet, family: Family, machine: Machine | None) -> Rendered:
    """The Dockerfile and context of one family (``machine`` only for machine-specific families)."""
    env = (ROOT_ENV if family.root else ()) + family.env
    labels = [
        ("org.opencontainers.image.title", family.name),
        ("org.opencontainers.image.description", family.description),
        ("fleet.family", family.name),
        ("fleet.python", family.python),
    ]
    if family.cuda:
        labels.append(("fleet.cuda", family.cuda))
    if family.machine_specific and machine is not None:
        labels.append(("fleet.machine", machine.name))
    export, builder_requests, files = _os_files(fleet, family)
    root = fleet.root_of(family.name)
    text = _env().get_template("family.Dockerfile.j2").render(
        header=_header(family.file, f"Dockerfile of family {family.name}"),
        family=family,
        machine=machine,
        lineage_root=root.name,
        os_lock=os_lock_path(family.name),
        builder_base=Quoted("builder-root" if family.root else "${BUILDER_IMAGE}"),
        runtime_base=Quoted("root" if family.root else "parent"),
        os_export=export,
        builder_requests=builder_requests,
        parent_venv=PARENT_VENV,
        cmake_arch=machine.cuda_arch.replace(".", "") if machine else "",
        root_env=list(ROOT_ENV),
        build_tools=BUILD_TOOLS,
        build_tools_env=build_tools_env(family.python),
        env=sorted(env),
        labels=labels,
    )
    files.insert(0, (".dockerignore", dockerignore(fleet)))
    # The family's packages and its build tools (builder stage only), minus what the parent holds.
    parent = _inherited_lock(fleet, family.parent)
    if family.requirements:
        files.append(("requirements.txt", install_set(fleet.lock(family_lock_path(family.name)), parent).encode()))
    if family.machine_specific and machine is not None:
        files.append(("machine-profile.json", machine_profile(machine)))
    if family.builder and family.builder.requirements:
        tools = fleet.lock(family_lock_path(build_lock_name(family.name)))
        files.append(("build-requirements.txt", install_set(tools, parent).encode()))
    if family.builder and family.builder.setup:
        files.append(("builder-setup.sh", fleet.scripts[family.builder.setup]))
    clamped: tuple[str, ...] = ()
    # A bootstrapped root's targets are its ADDed tarballs, except where the template's runtime
    # stage also copies in files built now: OS exports, requirements, the machine profile.
    if family.root and family.root.source == "bootstrap":
        clamped = ("builder-root",) if export or family.requirements or family.machine_specific else ("builder-root", "runtime")
    return Rendered(dockerfile=text, files=tuple(files), clamped=clamped)


# The health contract (seed 002 §5): GET /health answers HTTP 200 with the JSON {"status": "ok"}.
# An answer of 200 alone (a proxy's page, {"status": "degrading"}) is not healthy.
HEALTH_PROBE = (
    "import json, sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:\n"
    "    body = json.load(answer)\n"
    "sys.exit(0 if isinstance(body, dict) and body.get('status') == 'ok' else 1)"
)


def healthcheck(fleet: Fleet, service: Service) -> list[str]:
    """An exec-form health probe (the image's Python, which every family has): the service's
    health port answers ``{"status": "ok"}``."""
    # -I: isolated, so an app file named json.py or a PYTHON* variable cannot change what the probe runs.
    return ["python", "-I", "-c", HEALTH_PROBE, f"http://127.0.0.1:{service.health_port}/health"]


def service_requirements(fleet: Fleet, service: Service) -> str:
    if not service.requirements:
        return ""
    return install_set(fleet.lock(service_lock_path(service.name)), _inherited_lock(fleet, service.family))


def render_service(fleet: Fleet, service: Service, machine: Machine) -> Rendered:
    family = fleet.families[service.family]
    env = {
        "SERVICE_NAME": service.name,
        "SERVICE_PORT": str(service.port),
        "HEALTH_PORT": str(service.health_port),
        **machine.profile_dict(),
        **dict(service.env),
    }
    labels = [
        ("org.opencontainers.image.title", service.name),
        ("org.opencontainers.image.description", f"{service.name} ({service.needs or family.name}) for {machine.name}"),
        ("fleet.family", family.name),
        ("fleet.machine", machine.name),
        ("fleet.service", service.name),
    ]
    requirements = service_requirements(fleet, service)
    text = _env().get_template("service.Dockerfile.j2").render(
        header=_header(service.file, f"Dockerfile of service {service.name} for {machine.name}"),
        service=service,
        family_image=f"{family.name} for {machine.name}" if family.machine_specific else family.name,
        lineage_root=fleet.root_of(family.name).name,
        python=family.python,
        machine=machine,
        env=sorted(env.items()),
        labels=labels,
        requirements=bool(service.requirements),
        healthcheck=healthcheck(fleet, service),
    )
    files: list[tuple[str, bytes]] = [(".dockerignore", dockerignore(fleet)), ("machine-profile.json", machine_profile(machine))]
    if service.requirements:
        files.append(("requirements.txt", requirements.encode()))
    return Rendered(dockerfile=text, files=tuple(files), app_files=fleet.sources[service.source].files)
