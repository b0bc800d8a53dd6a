"""A machine's compose stack, from the plan and a release's digests: pure, no engine, no registry.

Each service of the machine runs its image by digest (``REGISTRY/ORG/REPO@sha256:…``), so a stack
is exactly a release. Every service gets the same hardening (read-only root, tmpfs ``/tmp``, no
capabilities, no new privileges, UID 10001, ``restart: on-failure`` with a retry limit, rotated
logs), its ports on the machine's publish address, its memory limit, its families' and its own
named volumes, its secrets as compose secrets (files the operator provides next to the stack,
never values in the file), a GPU reservation on a GPU machine, and ``depends_on`` with
``condition: service_healthy`` from the startup layers (:mod:`buildtool.model.deploy`). The
health check is the image's own ``HEALTHCHECK``: the stack does not repeat it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from buildtool.core.errors import ReleaseError
from buildtool.core.refs import ImageRef
from buildtool.model import deploy
from buildtool.model.allowlist import DIGEST_RE
from buildtool.model.deploy import VOLUME_ROOT
from buildtool.model.schema import ADDRESS_RE, IMAGE_TAG_RE, NAME_RE, SECRET_RE, VOLUME_RE
from buildtool.model.types import Fleet, Service
from buildtool.plan.plan import Plan, make_plan

RESTART = "on-failure:5"  # restarts after a crash, at most five times: a crash loop ends
LOGGING = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
SECRETS_DIR = "secrets"  # beside the compose file: deploy/MACHINE/secrets/NAME
RELEASE_LABEL = "fleet.release"
SERVICE_LABEL = "fleet.service"
DEVICE_RE = re.compile(r"[0-9]{1,2}|GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # what the NVIDIA runtime takes


def machine_plan(fleet: Fleet, machine: str) -> Plan:
    """Every service of ``machine`` (and the families under them)."""
    return make_plan(fleet, machines=[machine], services=on_machine_names(fleet, machine))


def on_machine_names(fleet: Fleet, machine: str) -> list[str]:
    return [s.name for s in deploy.on_machine(fleet, machine)]


def service_name(svc: Service) -> str:
    """The compose service: the image's slug (lowercase letters, digits, '-')."""
    return svc.slug


def stack(fleet: Fleet, machine: str, *, registry: str, org: str, digests: Mapping[str, str], release: str) -> dict[str, object]:
    """The compose file of ``machine`` with each service's image at its digest in ``digests``
    (repository → digest). Raises ReleaseError naming the images ``digests`` lacks."""
    if not IMAGE_TAG_RE.fullmatch(release):
        raise ReleaseError(f"{release[:130]!r} is not a release tag; name a published release (YYYYMMDD-GITSHA)")
    bad = sorted(r for r, d in digests.items() if not DIGEST_RE.fullmatch(d))
    if bad:
        raise ReleaseError(f"release {release} gives no sha256 digest for {', '.join(bad)}")
    plan = machine_plan(fleet, machine)
    steps = {s.name: s for s in plan.steps if s.kind == "service"}
    missing = sorted(s.repository for s in steps.values() if s.repository not in digests)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ReleaseError(f"release {release} has no image of {shown}; publish the services of {machine} before composing its stack")
    mach = fleet.machines[machine]
    services: dict[str, object] = {}
    volumes: dict[str, object] = {}
    secrets: dict[str, object] = {}
    for svc in deploy.on_machine(fleet, machine):
        step = steps[svc.name]
        entry: dict[str, object] = {
            "image": str(ImageRef(registry=registry, org=org, repository=step.repository, digest=digests[step.repository])),
            "restart": RESTART,
            "user": "10001:10001",
            "read_only": True,
            "tmpfs": ["/tmp"],
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "ports": [f"{mach.publish_address}:{p}:{p}" for p in (svc.port, svc.health_port)],
            "logging": LOGGING,
            "labels": {RELEASE_LABEL: release, SERVICE_LABEL: svc.name},
        }
        if memory := deploy.memory_mb(fleet, svc):
            entry["mem_limit"] = f"{memory}m"
        if mounts := deploy.volumes(fleet, svc):
            entry["volumes"] = list(mounts)
            volumes.update({spec.split(":", 1)[0]: {} for spec in mounts})
        if svc.secrets:
            entry["secrets"] = list(svc.secrets)
            secrets.update({name: {"file": f"./{SECRETS_DIR}/{name}"} for name in svc.secrets})
        if fleet.families[svc.family].gpu and mach.has_gpu:
            devices = dict(mach.profile).get("CUDA_VISIBLE_DEVICES", "0").split(",")
            if not all(DEVICE_RE.fullmatch(d) for d in devices):
                raise ReleaseError(f"{mach.file}: profile.CUDA_VISIBLE_DEVICES is not GPU indexes or GPU-UUIDs, so no GPU can be reserved for {svc.name}")
            entry["deploy"] = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "device_ids": devices, "capabilities": ["gpu"]}]}}}
        if after := deploy.depends_on(fleet, svc, machine):
            entry["depends_on"] = {service_name(fleet.services[n]): {"condition": "service_healthy"} for n in after}
        services[service_name(svc)] = entry
    out: dict[str, object] = {"name": f"fleet-{machine}", "services": services}
    if volumes:
        out["volumes"] = dict(sorted(volumes.items()))
    if secrets:
        out["secrets"] = dict(sorted(secrets.items()))
    return out


PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
YAML_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}  # YAML 1.1 reads these as booleans or null: quoted


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar: every character escaped


def to_yaml(data: object, indent: int = 0) -> str:
    """Block-style YAML of dicts, lists and scalars; keys plain where they are plain words, every
    string value double-quoted (nothing a fleet file holds can become YAML syntax)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            k = key if PLAIN.fullmatch(key) and key.lower() not in YAML_WORDS else json.dumps(key)
            if isinstance(value, (dict, list)) and value:
                lines.append(f"{pad}{k}:\n{to_yaml(value, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {'{}' if value == {} else '[]' if value == [] else _scalar(value)}")
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, (dict, list)) and item:
                first, *rest = to_yaml(item, indent + 1).split("\n")
                lines.append(f"{pad}- {first.strip()}" + "".join(f"\n{line}" for line in rest))
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return "\n".join(lines)


def as_yaml(data: Mapping[str, object], machine: str, release: str) -> str:
    """The compose file's text: a stack as YAML, under a header naming its machine and release."""
    return f"# The compose stack of {machine} for release {release}, written by the fleet toolkit: regenerate, do not edit.\n{to_yaml(data)}\n"


def render(fleet: Fleet, machine: str, *, registry: str, org: str, digests: Mapping[str, str], release: str) -> str:
    """The compose file's text (see :func:`stack`)."""
    return as_yaml(stack(fleet, machine, registry=registry, org=org, digests=digests, release=release), machine, release)


# -- a stack read back: only what stack() writes ------------------------------------------------

SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
PORT = re.compile(rf"{ADDRESS_RE.pattern}:([0-9]{{4,5}}):([0-9]{{4,5}})")
FIXED = {"restart": RESTART, "user": "10001:10001", "read_only": True, "tmpfs": ["/tmp"], "cap_drop": ["ALL"],
         "security_opt": ["no-new-privileges:true"], "logging": LOGGING}  # fmt: skip
OPTIONAL = {"mem_limit", "volumes", "secrets", "deploy", "depends_on"}


def check(data: object, *, registry: str, org: str, machine: str) -> dict[str, object]:
    """``data`` if it is a stack as :func:`stack` writes it for ``machine`` (images by digest in
    ``registry/org`` only, every service hardened, nothing else); ReleaseError naming what is not."""

    def refuse(where: str, why: str) -> ReleaseError:
        return ReleaseError(f"the stored stack of {machine}: {where[:120]}: {why}; it is not one this toolkit wrote, and nothing was deployed")

    if not isinstance(data, dict) or set(data) - {"name", "services", "volumes", "secrets"} or data.get("name") != f"fleet-{machine}":
        raise refuse("top level", "only name (fleet-MACHINE), services, volumes and secrets belong there")
    services, volumes, secrets = data.get("services"), data.get("volumes", {}), data.get("secrets", {})
    if not isinstance(services, dict) or not services or not isinstance(volumes, dict) or not isinstance(secrets, dict):
        raise refuse("top level", "services, volumes and secrets are tables, services not empty")
    image = re.compile(rf"{re.escape(registry)}/{re.escape(org)}/{SLUG.pattern}@{DIGEST_RE.pattern}")
    for name, entry in services.items():
        where = f"services.{name}"
        if not SLUG.fullmatch(str(name)) or not isinstance(entry, dict):
            raise refuse(where, "a service is a lowercase name with a table")
        if set(entry) - {*FIXED, *OPTIONAL, "image", "ports", "labels"}:
            raise refuse(where, f"keys {sorted(set(entry) - {*FIXED, *OPTIONAL, 'image', 'ports', 'labels'})} are not the toolkit's")
        if any(entry.get(k) != v for k, v in FIXED.items()):
            raise refuse(where, "its hardening (user, read_only, tmpfs, cap_drop, security_opt, restart, logging) is not the toolkit's")
        if not isinstance(entry.get("image"), str) or not image.fullmatch(entry["image"]):
            raise refuse(f"{where}.image", f"an image is {registry}/{org}/NAME@sha256:DIGEST")
        ports = entry.get("ports")
        if not isinstance(ports, list) or not all(isinstance(p, str) and (m := PORT.fullmatch(p)) and m[1] == m[2] for p in ports):
            raise refuse(f"{where}.ports", "ports are ADDRESS:PORT:PORT")
        labels = entry.get("labels")
        if not isinstance(labels, dict) or set(labels) != {RELEASE_LABEL, SERVICE_LABEL} or not all(isinstance(v, str) and IMAGE_TAG_RE.fullmatch(v)
                                                                                                  for v in labels.values()):  # fmt: skip
            raise refuse(f"{where}.labels", "labels are the release and the service name")
        if "mem_limit" in entry and not (isinstance(entry["mem_limit"], str) and re.fullmatch(r"[0-9]{2,8}m", entry["mem_limit"])):
            raise refuse(f"{where}.mem_limit", "a limit is MBm")
        mounts = entry.get("volumes", [])
        if not isinstance(mounts, list) or not all(isinstance(v, str) and VOLUME_RE.fullmatch(v) and v.split(":", 1)[1].startswith(VOLUME_ROOT)
                                                   and v.split(":", 1)[0] in volumes for v in mounts):  # fmt: skip
            raise refuse(f"{where}.volumes", f"volumes are named ones of the stack, mounted below {VOLUME_ROOT}")
        used = entry.get("secrets", [])
        if not isinstance(used, list) or not all(isinstance(v, str) and v in secrets for v in used):
            raise refuse(f"{where}.secrets", "secrets are the stack's own")
        after = entry.get("depends_on", {})
        if not isinstance(after, dict) or not all(k in services and v == {"condition": "service_healthy"} for k, v in after.items()):
            raise refuse(f"{where}.depends_on", "a service depends on others of the stack being healthy")
        if "deploy" in entry and not _gpu(entry["deploy"]):
            raise refuse(f"{where}.deploy", "only a GPU reservation belongs there")
    if not all(SECRET_RE.fullmatch(str(k)) and v == {"file": f"./{SECRETS_DIR}/{k}"} for k, v in secrets.items()):
        raise refuse("secrets", f"a secret is read from ./{SECRETS_DIR}/NAME")
    if not all(NAME_RE.fullmatch(str(k)) and v == {} for k, v in volumes.items()):
        raise refuse("volumes", "volumes are named, with no options")
    return data


def _gpu(value: object) -> bool:
    try:
        (device,) = value["resources"]["reservations"]["devices"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return False
    ids = device.get("device_ids") if isinstance(device, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and DEVICE_RE.fullmatch(i) for i in ids):
        return False
    return value == {"resources": {"reservations": {"devices": [{"driver": "nvidia", "device_ids": ids, "capabilities": ["gpu"]}]}}}
