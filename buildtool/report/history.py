"""What each release is made of, kept beside it, and what changed between two releases.

Every publish that moves tags stores a record of its images as an OCI artifact,
``ORG/releases:<release>.report`` (one JSON layer): per image its digest and identity, the
inputs its identity hashes (each by its own hash, so a later diff can say which one changed), its
layers with their size, what they hold (root, OS packages, Python packages, CUDA, app) and the
image of the lineage that added them, its packages (from the SBOM the gate attached), and its
scan counts and HIGH/CRITICAL advisories. The record also names the release it replaced. Diffs
read records only: nothing is recomputed from images that may be gone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from buildtool.adapters.files import atomic_write
from buildtool.adapters.protocols import Registry
from buildtool.adapters.registry import EMPTY_CONFIG, artifact_manifest
from buildtool.core.errors import UsageError
from buildtool.core.hashing import sha256
from buildtool.core.refs import RELEASES_REPOSITORY, repo_path
from buildtool.execute.security import registry_sbom_data
from buildtool.model.schema import IMAGE_TAG_RE
from buildtool.plan.plan import MB, Plan, Step
from buildtool.report import sizes

RECORD_TYPE = "application/vnd.fleet.report.v1"
LAYER_TYPE = "application/vnd.fleet.report.v1+json"
SUFFIX = ".report"
MAX_RECORD = 16 << 20
ORIGINS = ("root", "os", "python", "cuda", "app", "other")
PURL = re.compile(r"pkg:(pypi|deb)/(?:[^/@]+/)?([^@/]+)@([^?#]+)")


def record_tag(release: str) -> str:
    """Where ``release``'s record is: ``<release>.report`` (UsageError for what is not a release tag)."""
    if not IMAGE_TAG_RE.fullmatch(release + SUFFIX):
        raise UsageError(f"{release[:130]!r} is not a release tag; give one as publish writes it: YYYYMMDD-GITSHA")
    return release + SUFFIX


def inputs(step: Step, plan: Plan) -> dict[str, str]:
    """What the step's identity hashes, by kind of input, each by its own hash (12 hex digits)."""
    rendered = step.rendered
    kinds: dict[str, list[bytes]] = {"Dockerfile": [rendered.dockerfile.encode()] if rendered else []}
    for path, data in rendered.files if rendered else ():
        kind = {"requirements.txt": "Python lock", "build-requirements.txt": "Python lock", "os-pins.txt": "OS lock",
                "machine-profile.json": "machine profile"}.get(path, "toolkit files")  # fmt: skip
        kinds.setdefault(kind, []).append(path.encode() + b"\0" + data)
    kinds["app code"] = [path.encode() + b"\0" + data for path, data in rendered.app_files] if rendered else []
    if step.root_pins:
        kinds.setdefault("OS lock", []).append(json.dumps(step.root_pins, sort_keys=True).encode())
    kinds["checks"] = [json.dumps([list(c.run) for c in step.smoke]).encode()]
    out = {kind: sha256(b"\0\0".join(parts))[:12] for kind, parts in kinds.items() if parts}
    out["parent"] = plan.step(step.parent).identity[:12] if step.parent else ""
    return out


def origin(created_by: str, *, introduces_cuda: bool) -> str:
    """What a layer holds, from the instruction that made it."""
    if "rootfs.tar" in created_by:
        return "root"
    if "/staging/" in created_by:
        return "os"
    if "/opt/venv/" in created_by:
        return "cuda" if introduces_cuda else "python"
    if "/app/" in created_by:
        return "app"
    return "other"


def packages(sbom: bytes | None) -> dict[str, dict[str, str]]:
    """Python and Debian packages of a CycloneDX SBOM, name -> version."""
    out: dict[str, dict[str, str]] = {"python": {}, "debian": {}}
    try:
        components = json.loads(sbom).get("components", []) if sbom else []
    except ValueError:
        return out
    for c in components if isinstance(components, list) else []:
        if isinstance(c, dict) and (m := PURL.match(str(c.get("purl", "")))):
            out["python" if m.group(1) == "pypi" else "debian"][unquote(m.group(2)).lower()] = unquote(m.group(3))
    return out


def image_record(step: Step, plan: Plan, *, digest: str, facts: Mapping, verdict: object, sbom: tuple[str, bytes] | None,
                 inherited: list[str]) -> dict:  # fmt: skip
    """One image's entry: what a report needs of it, later, without the image. ``inherited``: the
    origins of the parent's layers, which this image's first layers are."""
    findings = [*getattr(verdict, "blocking", []), *getattr(verdict, "allowlisted", [])]
    cuda = _introduces_cuda(plan, step)
    layers = [{"size": layer["size"], "created_by": layer["created_by"], "own": i >= len(inherited),
               "origin": inherited[i] if i < len(inherited) else origin(layer["created_by"], introduces_cuda=cuda)}
              for i, layer in enumerate(facts["layers"])]  # fmt: skip
    return {
        "repository": step.repository,
        "kind": step.kind,
        "machine": step.machine or "",
        "parent": plan.step(step.parent).repository if step.parent else "",
        "digest": digest,
        "identity": step.identity,
        "inputs": inputs(step, plan),
        "budget_mb": step.budget_mb,
        "layers": layers,
        "uncompressed": facts.get("uncompressed"),
        "cuda_bytes": facts.get("cuda_bytes"),
        "largest_packages": [list(p) for p in facts.get("packages", [])],
        "packages": packages(sbom[1] if sbom else None),
        "sbom": sbom[0] if sbom else "",
        "vulnerabilities": dict(getattr(verdict, "counts", {}) or {}),
        "advisories": sorted({f"{f.id} {f.target}" for f in findings if f.kind == "vulnerability"}),
        "allowlisted": sorted({f"{f.id} {f.target}" for f in getattr(verdict, "allowlisted", [])}),
    }


def _introduces_cuda(plan: Plan, step: Step) -> bool:
    """Whether ``step`` is the first GPU image of its lineage (the one whose packages are CUDA's)."""
    return step.gpu and step.kind == "family" and not (step.parent and plan.step(step.parent).gpu)


def collect(plan: Plan, results: Mapping[str, object], registry: Registry, org: str, state_dir: Path, *, sboms: bool) -> list[dict]:
    """Every published image's entry, from the facts the size report kept (no blob read again)
    and, with ``sboms``, the SBOM the gate attached (three requests an image)."""
    images, origins = [], {}
    for step in plan.steps:  # parents first
        digest = getattr(results.get(step.key), "digest", "")
        facts = sizes.facts(registry, repo_path(org, step.repository), step.id_tag, step.gpu, state_dir) if digest else None
        if not facts:
            continue
        found = registry_sbom_data(registry, repo_path(org, step.repository), digest) if sboms else None
        entry = image_record(step, plan, digest=digest, facts=facts, verdict=getattr(results[step.key], "verdict", None), sbom=found,
                             inherited=origins.get(step.parent or "", []))  # fmt: skip
        origins[step.key] = [layer["origin"] for layer in entry["layers"]]
        images.append(entry)
    return images


def store(registry: Registry, org: str, release: str, previous: str, images: list[dict]) -> str:
    """Store the record of ``release`` (which replaced ``previous``); a line saying where."""
    name, tag = repo_path(org, RELEASES_REPOSITORY), record_tag(release)
    data = json.dumps({"release": release, "previous": previous, "images": images}, sort_keys=True).encode()
    registry.push_blob(name, EMPTY_CONFIG)
    layer = {"mediaType": LAYER_TYPE, "digest": registry.push_blob(name, data), "size": len(data)}
    registry.put_manifest(name, tag, artifact_manifest(RECORD_TYPE, layer))
    return f"release record of {len(images)} image(s) stored as {name}:{tag}"


def record_release(registry: Registry, org: str, release: str, previous: str, images: list[dict], reports: Path) -> tuple[list[str], str]:
    """Store ``release``'s record and compare it with ``previous``'s (written to ``reports/diff.md``):
    notes, and the diff as Markdown ("" without a previous release on record). A release tag is
    the commit's: when another selection was published under it already, its record is extended
    (this publish's images replace theirs) and keeps the release it replaced."""
    try:
        earlier = fetch(registry, org, release)
    except UsageError:
        earlier = None
    if earlier is not None:
        mine = {i["repository"] for i in images}
        images = [*(i for i in earlier["images"] if i["repository"] not in mine), *images]
        previous = str(earlier.get("previous") or "")
    previous = "" if previous == release else previous
    notes = [store(registry, org, release, previous, images)]
    if not previous:
        return notes, ""
    try:
        old = fetch(registry, org, previous)
    except UsageError as exc:
        return [*notes, f"no diff against {previous}: {exc.message}"], ""
    text = markdown(previous, release, diff(old, {"images": images}))
    atomic_write(reports / "diff.md", text)
    return [*notes, f"what changed since {previous}: {reports / 'diff.md'}"], text


def fetch(registry: Registry, org: str, release: str) -> dict:
    """The record of ``release``, checked; UsageError when there is none or it is not one."""
    name, tag = repo_path(org, RELEASES_REPOSITORY), record_tag(release)
    manifest = registry.manifest(name, tag)
    layers = manifest.data.get("layers", []) if manifest else []
    if not layers:
        raise UsageError(f"no release record of {release} in {name}: it was published before records were kept, or not by this org")
    if not isinstance(layers[0].get("size"), int) or layers[0]["size"] > MAX_RECORD:
        raise UsageError(f"the release record {name}:{tag} is larger than a record the toolkit writes; not read")
    data = registry.blob(name, layers[0]["digest"])
    try:
        doc = json.loads(data or b"")
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("release") != release or not isinstance(doc.get("images"), list):
        raise UsageError(f"{name}:{tag} is not a release record the toolkit wrote; not read")
    return doc


@dataclass(frozen=True, kw_only=True)
class ImageChange:
    repository: str
    status: str  # rebuilt | only in the new release | only in the old one (a publish releases a selection: not in it is not removed)
    why: list[str] = field(default_factory=list)  # the identity inputs that changed
    layers: list[tuple[str, str, int, int]] = field(default_factory=list)  # (origin, instruction, old bytes, new bytes) of layers that differ
    size: tuple[int, int] = (0, 0)
    packages: dict[str, list[str]] = field(default_factory=dict)  # ecosystem -> "+name version", "-name version", "name old -> new"
    fixed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def cells(self, packages: int) -> tuple[list[str], list[str], list[str]]:
        """The lines a table row shows (the command line's, the page's): each moved layer's
        origin and delta, up to ``packages`` package changes per ecosystem, the advisories fixed and new."""
        return ([f"{o} {(b - a) / MB:+.2f} MB" for o, _, a, b in self.layers], [i for items in self.packages.values() for i in items[:packages]],
                [*(f"fixed {a}" for a in self.fixed), *(f"new {a}" for a in self.new)])  # fmt: skip


def diff(old: Mapping, new: Mapping) -> list[ImageChange]:
    """What changed from release record ``old`` to ``new``, image by image (unchanged images left out)."""
    before = {i["repository"]: i for i in old["images"]}
    after = {i["repository"]: i for i in new["images"]}
    out = []
    for repo in sorted(before.keys() | after.keys()):
        a, b = before.get(repo), after.get(repo)
        if a is None or b is None:
            out.append(ImageChange(repository=repo, status="only in the new release" if a is None else "only in the old one", size=(_size(a), _size(b))))
        elif a["digest"] != b["digest"]:
            why = sorted(k for k in a["inputs"].keys() | b["inputs"].keys() if a["inputs"].get(k) != b["inputs"].get(k))
            fixed, found = sorted(set(a["advisories"]) - set(b["advisories"])), sorted(set(b["advisories"]) - set(a["advisories"]))
            out.append(ImageChange(repository=repo, status="rebuilt", why=why or ["the toolkit's identity version"], layers=_layers(a, b),
                                   size=(_size(a), _size(b)), packages=_packages(a["packages"], b["packages"]), fixed=fixed, new=found))  # fmt: skip
    return out


def _size(image: Mapping | None) -> int:
    return sum(layer["size"] for layer in image["layers"]) if image else 0


def _layers(a: Mapping, b: Mapping) -> list[tuple[str, str, int, int]]:
    """Layers by position: each pair whose size differs (a layer only one side has counts as 0 on the other)."""
    out = []
    for i in range(max(len(a["layers"]), len(b["layers"]))):
        x = a["layers"][i] if i < len(a["layers"]) else None
        y = b["layers"][i] if i < len(b["layers"]) else None
        if (x or {}).get("size") != (y or {}).get("size"):
            layer = y or x
            out.append((layer["origin"], layer["created_by"], x["size"] if x else 0, y["size"] if y else 0))
    return out


def _packages(a: Mapping[str, Mapping[str, str]], b: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    out = {}
    for eco in ("python", "debian"):
        x, y = a.get(eco, {}), b.get(eco, {})
        lines = [f"+{n} {y[n]}" for n in sorted(y.keys() - x.keys())] + [f"-{n} {x[n]}" for n in sorted(x.keys() - y.keys())]
        lines += [f"{n} {x[n]} -> {y[n]}" for n in sorted(x.keys() & y.keys()) if x[n] != y[n]]
        if lines:
            out[eco] = lines
    return out


def markdown(old: str, new: str, changes: list[ImageChange]) -> str:
    """The diff as Markdown (the job summary's)."""
    lines = [f"## {old} → {new}", ""]
    if not changes:
        return "\n".join([*lines, "No image changed."]) + "\n"
    lines += ["| image | change | why | size (MB) |", "|---|---|---|---|"]
    for c in changes:
        (x, y) = c.size
        lines.append(f"| {c.repository} | {c.status} | {', '.join(c.why)} | {x / MB:.1f} → {y / MB:.1f} ({(y - x) / MB:+.2f}) |")
    for c in (c for c in changes if c.layers or c.packages or c.fixed or c.new):
        lines += ["", f"### {c.repository}"]
        lines += [f"- layer ({o}) `{cmd}`: {x / MB:.1f} → {y / MB:.1f} MB ({(y - x) / MB:+.2f})" for o, cmd, x, y in c.layers]
        lines += [f"- {eco} packages: {', '.join(items)}" for eco, items in c.packages.items()]
        lines += [f"- advisories fixed: {', '.join(c.fixed)}"] if c.fixed else []
        lines += [f"- advisories new: {', '.join(c.new)}"] if c.new else []
    return "\n".join(lines) + "\n"
