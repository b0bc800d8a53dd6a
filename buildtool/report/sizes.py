"""Image sizes, measured from the registry: compressed (layer blobs) and uncompressed sizes,
largest layers, change against the previous release, the family budget, CUDA libraries and the
biggest Python packages. :mod:`.tables` shows them and writes them to the state dir."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from buildtool.adapters.files import atomic_write
from buildtool.adapters.protocols import Registry
from buildtool.core.refs import repo_path
from buildtool.plan.plan import MB, Plan
from buildtool.publish import record
from buildtool.publish.release import PREVIOUS


@dataclass(frozen=True, kw_only=True)
class Layer:
    size: int
    created_by: str


@dataclass(frozen=True, kw_only=True)
class ImageSize:
    repository: str
    machine: str
    status: str
    compressed: int
    uncompressed: int | None
    budget_mb: int
    prev_compressed: int | None
    largest: list[Layer] = field(default_factory=list)
    cuda_bytes: int | None = None  # GPU images: bytes of CUDA libraries in the final filesystem
    cuda_duplicates: dict[str, list[str]] = field(default_factory=dict)  # library -> paths, when >1
    packages: list[tuple[str, int]] = field(default_factory=list)  # biggest site-packages entries
    security: dict = field(default_factory=dict)  # the gate's verdict and the SBOM: see security_summary

    @property
    def over_budget(self) -> bool:
        return self.compressed > self.budget_mb * MB

    @property
    def delta(self) -> int | None:
        return None if self.prev_compressed is None else self.compressed - self.prev_compressed


def _config(registry: Registry, repo: str, ref: str, cache_dir: Path) -> dict:
    """The image's config; kept by its digest (a config never changes)."""
    manifest = registry.image_manifest(repo, ref)
    if manifest is None:
        return {}
    cached = cache_dir / (manifest.data["config"]["digest"].replace(":", "-") + ".json")
    if not cached.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, json.dumps(registry.config(repo, ref)))
    return json.loads(cached.read_text())


def _layers(registry: Registry, repo: str, ref: str, cache_dir: Path) -> list[Layer]:
    sizes = registry.layer_sizes(repo, ref)
    history = [h for h in _config(registry, repo, ref, cache_dir).get("history", []) if not h.get("empty_layer")]
    cmds = [h.get("created_by", "") for h in history] if len(history) == len(sizes) else [""] * len(sizes)
    return [Layer(size=s, created_by=" ".join(c.replace("/bin/sh -c ", "").split())[:90]) for s, c in zip(sizes, cmds, strict=True)]


def _uncompressed(registry: Registry, repo: str, ref: str, cache_dir: Path) -> int:
    """Sum of decompressed layer sizes; per-blob results are cached (blobs never change)."""
    manifest = registry.image_manifest(repo, ref)
    total = 0
    for layer in manifest.data.get("layers", []) if manifest else []:
        cached = cache_dir / layer["digest"].replace(":", "-")
        if not cached.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, str(registry.uncompressed_size(repo, layer["digest"])))
        total += int(cached.read_text())
    return total


CUDA_LIB = re.compile(r"^lib(cuda|cudart|cublas|cublasLt|cudnn[a-z_]*|cufft[a-z]*|curand|cusolver[a-zA-Z]*|cusparse[a-zA-Z]*|nccl|nvrtc[a-z-]*|"
                      r"nvJitLink|nvToolsExt|cupti|nvperf[a-z_]*|cufile[a-z_]*)\.so(\.[0-9]+)*$")


def _layer_files(registry: Registry, repo: str, digest: str, cache_dir: Path) -> list[tuple[str, int]]:
    cached = cache_dir / (digest.replace(":", "-") + ".json")
    if not cached.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, json.dumps(registry.layer_files(repo, digest)))
    return [tuple(x) for x in json.loads(cached.read_text())]


def final_files(registry: Registry, repo: str, ref: str, cache_dir: Path) -> dict[str, int]:
    """Path -> size of every regular file in the image's final filesystem (whiteouts applied)."""
    manifest = registry.image_manifest(repo, ref)
    files: dict[str, int] = {}
    for layer in manifest.data.get("layers", []) if manifest else []:
        for path, size in _layer_files(registry, repo, layer["digest"], cache_dir):
            head, _, base = path.rpartition("/")
            if size < 0:  # whiteout: the file (or a whole directory) is gone from here up
                target = f"{head}/{base.removeprefix('.wh.')}" if head else base.removeprefix(".wh.")
                for p in [p for p in files if p == target or p.startswith(target + "/")]:
                    del files[p]
            else:
                files[path] = size
    return files


def cuda_inventory(files: dict[str, int]) -> tuple[int, dict[str, list[str]]]:
    """CUDA library bytes, and libraries present at more than one path."""
    by_name: dict[str, list[str]] = defaultdict(list)
    total = 0
    for path, size in files.items():
        name = path.rsplit("/", 1)[-1]
        if CUDA_LIB.match(name):
            total += size
            by_name[name].append(path)
    return total, {name: sorted(paths) for name, paths in by_name.items() if len(paths) > 1}


# nvidia/ is a namespace shared by every CUDA wheel: count its subfolders (cublas, cudnn, ...) apart.
NAMESPACES = ("nvidia",)


def largest_packages(files: dict[str, int], top: int = 5) -> list[tuple[str, int]]:
    """The biggest top-level folders of the Python environments' site-packages (uncompressed bytes)."""
    sizes: dict[str, int] = defaultdict(int)
    for path, size in files.items():
        _, sep, rest = path.partition("site-packages/")
        if not sep or "/" not in rest:
            continue
        parts = rest.split("/")
        name = "/".join(parts[:2]) if parts[0] in NAMESPACES and len(parts) > 2 else parts[0]
        sizes[name] += size
    return sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


def security_summary(result: object) -> dict[str, object]:
    """What the report shows of an image's gate verdict and SBOM (empty when the run did not scan)."""
    verdict, sbom = getattr(result, "verdict", None), getattr(result, "sbom", None)
    out: dict[str, object] = {}
    if verdict is not None:
        out = {"status": verdict.status, "policy": verdict.policy, "db": verdict.db_version or "none", "counts": verdict.counts,
               "allowlisted": len(verdict.allowlisted), "secrets": len(verdict.secrets)}  # fmt: skip
    if sbom:
        out["sbom"] = {"digest": sbom["digest"], "components": sbom["components"]}
    return out


def measure(plan: Plan, results: dict[str, object], registry: Registry, org: str, state_dir: Path) -> list[ImageSize]:
    """Every image of the plan in the registry, measured concurrently from the manifests the run
    already read; blobs are read once per host (kept under the state dir by digest)."""
    known = record.state(registry, org)
    prevs = known.prev if known else {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(lambda step: _measure(step, results, registry, org, state_dir, prevs.get(step.repository)), plan.steps))
    return [m for m in found if m is not None]


def facts(registry: Registry, repo: str, ref: str, gpu: bool, state_dir: Path) -> dict | None:
    """What an image's manifest alone decides (its layers, their contents): worked out once per
    image digest and kept under the state dir, so a run that built nothing reads no blob."""
    manifest = registry.image_manifest(repo, ref)
    if manifest is None:
        return None
    cached = state_dir / "image-facts" / (manifest.digest.replace(":", "-") + ("-gpu" if gpu else "") + ".json")
    if cached.is_file():
        return json.loads(cached.read_text())
    layers = _layers(registry, repo, ref, state_dir / "configs")
    files = final_files(registry, repo, ref, state_dir / "layer-files")
    cuda_bytes, dupes = cuda_inventory(files) if gpu else (None, {})
    facts = {
        "layers": [dataclasses.asdict(layer) for layer in layers],
        "uncompressed": _uncompressed(registry, repo, ref, state_dir / "blob-sizes"),
        "cuda_bytes": cuda_bytes,
        "cuda_duplicates": dupes,
        "packages": largest_packages(files),
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, json.dumps(facts))
    return facts


def _prev_sizes(registry: Registry, repo: str, digest: str | None, gpu: bool, state_dir: Path) -> list[int]:
    """The layer sizes of the image ``prev`` names: by the digest the release records give, from the
    facts kept of it when it was measured (no request), else from the registry; none when the
    records say there is no prev (""), the tag's when they do not know (None)."""
    if digest == "":
        return []
    if digest:
        kept = state_dir / "image-facts" / (digest.replace(":", "-") + ("-gpu" if gpu else "") + ".json")
        try:
            sizes = [layer["size"] for layer in json.loads(kept.read_text())["layers"]] if kept.is_file() else None
        except (OSError, ValueError, KeyError, TypeError):
            sizes = None  # not what the toolkit kept there: ask the registry
        if sizes is not None and all(type(size) is int and size >= 0 for size in sizes):
            return sizes
    return registry.layer_sizes(repo, digest or PREVIOUS)


def _measure(step, results: dict[str, object], registry: Registry, org: str, state_dir: Path, prev_digest: str | None = None) -> ImageSize | None:
    repo = repo_path(org, step.repository)
    found = facts(registry, repo, step.id_tag, step.gpu, state_dir)
    if not found or not found["layers"]:
        return None  # not in the registry (failed or never built)
    layers = [Layer(**layer) for layer in found["layers"]]
    prev = _prev_sizes(registry, repo, prev_digest, step.gpu, state_dir)
    return ImageSize(
        repository=step.repository,
        machine=step.machine or "any",
        status=getattr(results.get(step.key), "status", ""),
        compressed=sum(layer.size for layer in layers),
        uncompressed=found["uncompressed"],
        budget_mb=step.budget_mb,
        prev_compressed=sum(prev) if prev else None,
        largest=sorted(layers, key=lambda layer: -layer.size)[:3],
        cuda_bytes=found["cuda_bytes"],
        cuda_duplicates=found["cuda_duplicates"],
        packages=[tuple(p) for p in found["packages"]],
        security=security_summary(results.get(step.key)),
    )


def load(state_dir: Path) -> list[ImageSize]:
    data = json.loads((state_dir / "reports" / "sizes.json").read_text())
    return [
        ImageSize(**{**d, "largest": [Layer(**layer) for layer in d["largest"]], "packages": [tuple(p) for p in d.get("packages", [])]})
        for d in data
    ]
