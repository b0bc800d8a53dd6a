"""In-memory stand-ins for the engine and the registry, implementing the Protocols of
:mod:`buildtool.adapters.protocols` (tests/test_architecture.py checks that they keep doing so)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from buildtool.adapters.protocols import Built
from buildtool.adapters.registry import Manifest
from buildtool.core.errors import BuildError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class FakeRegistry:
    """Tags -> manifests in memory; counts requests like the real client does."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], Manifest] = {}
        self.requests = 0
        self.blobs: dict[str, bytes] = {}
        self.referrer_list: dict[tuple[str, str], list[dict]] = {}
        self.reads: list[tuple[str, str]] = []  # (repository, tag or digest) of each manifest read

    def add(self, repo: str, tag: str, content: str) -> Manifest:
        m = image_manifest(content)
        self.entries[(repo, tag)] = m
        return m

    def resolve(self, image: str) -> str | None:
        """The digest an image reference (REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST) names here (not counted)."""
        path = image.split("/", 1)[1]
        if "@" in path:
            repo, digest = path.split("@", 1)
            return digest if any(r == repo and m.digest == digest for (r, _), m in self.entries.items()) else None
        repo, tag = path.rsplit(":", 1)
        m = self.entries.get((repo, tag))
        return m.digest if m else None

    def digest(self, repo: str, ref: str, *, fresh: bool = False) -> str | None:
        self.requests += 1
        m = self.entries.get((repo, ref))
        return m.digest if m else None

    def manifest(self, repo: str, ref: str) -> Manifest | None:
        self.requests += 1
        self.reads.append((repo, ref))
        return self.entries.get((repo, ref)) or next((m for (r, _), m in self.entries.items() if r == repo and m.digest == ref), None)

    def put_manifest(self, repo: str, tag: str, manifest: Manifest) -> None:
        self.requests += 1
        self.entries[(repo, tag)] = manifest

    def image_manifest(self, repo: str, ref: str, platform: str = "linux/amd64") -> Manifest | None:
        return self.manifest(repo, ref)

    def layer_sizes(self, repo: str, ref: str) -> list[int]:
        m = self.image_manifest(repo, ref)  # a request, as the real client's when it has not read the manifest
        return [layer["size"] for layer in m.data.get("layers", [])] if m else []

    def config(self, repo: str, ref: str) -> dict:
        return {}

    def uncompressed_size(self, repo: str, digest: str) -> int:
        return 0

    def layer_files(self, repo: str, digest: str) -> list[tuple[str, int]]:
        return []

    def attach(self, repo: str, subject: Manifest, *, artifact_type: str, data: bytes, annotations: dict[str, str] | None = None) -> Manifest:
        self.requests += 1
        blob = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[blob] = data
        body = json.dumps({"mediaType": OCI_MANIFEST, "artifactType": artifact_type, "layers": [{"digest": blob, "size": len(data)}],
                           "subject": subject.descriptor()}).encode()  # fmt: skip
        artifact = Manifest(digest="sha256:" + hashlib.sha256(body).hexdigest(), media_type=OCI_MANIFEST, body=body)
        self.entries[(repo, artifact.digest)] = artifact
        entry = {"digest": artifact.digest, "artifactType": artifact_type, "annotations": dict(annotations or {})}
        self.referrer_list.setdefault((repo, subject.digest), []).append(entry)
        return artifact

    def referrers(self, repo: str, subject_digest: str, artifact_type: str = "") -> list[dict]:
        self.requests += 1
        return [d for d in self.referrer_list.get((repo, subject_digest), []) if not artifact_type or d["artifactType"] == artifact_type]

    def tags(self, repo: str) -> list[str]:
        self.requests += 1
        return sorted(tag for r, tag in self.entries if r == repo and not tag.startswith("sha256:"))

    def delete(self, repo: str, digest: str) -> bool:
        self.requests += 1
        doomed = [key for key, m in self.entries.items() if key[0] == repo and m.digest == digest]
        for key in doomed:
            del self.entries[key]
        return bool(doomed)

    def blob(self, repo: str, digest: str) -> bytes | None:
        self.requests += 1
        return self.blobs.get(digest)

    def push_blob(self, repo: str, data: bytes) -> str:
        self.requests += 1
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest


def image_manifest(content: str) -> Manifest:
    """The manifest of a fake image: the engine's digest of a built image is the digest its push shows."""
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64}
    body = json.dumps({"mediaType": OCI_MANIFEST, "config": config, "layers": [], "content": content}).encode()
    return Manifest(digest="sha256:" + hashlib.sha256(body).hexdigest(), media_type=OCI_MANIFEST, body=body)


class FakeEngine:
    """Records builds; 'pushes' by adding the id tag to the fake registry."""

    def __init__(self, registry: FakeRegistry, *, fail: Sequence[str] = (), user: str = "10001:10001") -> None:
        self.registry = registry
        self.fail = set(fail)
        self.user = user
        self.gpus = False
        self.builds: list[tuple[str, dict[str, str], list[str]]] = []
        self.targets: list[tuple[str, str | None]] = []  # (tag, build target)
        self.rewritten: dict[str, bool] = {}  # tag -> whether its export rewrote file times
        self.sizes: dict[str, int] = {}  # repository -> compressed bytes of what builds (default 1000)
        self.checks: list[tuple[str, tuple[str, ...]]] = []
        self.gpu_runs: list[str] = []
        self.healthy: list[str] = []
        self.events: list[tuple[str, str]] = []  # ("build" | "push" | "check", ref), in the order they happened
        self.fail_checks: set[str] = set()  # repositories whose smoke checks fail

    def ready(self) -> None:
        pass

    def build(
        self,
        *,
        context: Path,
        tag: str,
        build_args: Mapping[str, str],
        secrets: Sequence[str],
        cache_ref: str | None,
        cache_mode: str = "min",
        labels: Mapping[str, str],
        log: Path,
        target: str | None = None,
        rewrite_timestamps: bool = True,
    ) -> Built:
        assert (context / "Dockerfile").is_file()
        self.builds.append((tag, dict(build_args), list(secrets)))
        self.events.append(("build", tag))
        self.targets.append((tag, target))
        self.rewritten[tag] = rewrite_timestamps
        if any(f"/{name}:" in tag for name in self.fail):
            raise BuildError(f"build of {tag} failed")
        repo = tag.split("/", 1)[1].rsplit(":", 1)[0]
        return Built(digest=self.image_digest(tag), layers=(self.sizes.get(repo.rsplit("/", 1)[-1], 1000),))

    def push(self, ref: str) -> None:
        repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
        self.events.append(("push", ref))
        self.registry.add(repo, tag, ref)

    def save(self, ref: str, out: Path) -> Path:
        out.write_text(ref)
        return out

    def image_digest(self, ref: str) -> str:
        return image_manifest(ref).digest

    def image_user(self, ref: str) -> str:
        return self.user

    def gpus_available(self, ref: str) -> bool:
        return self.gpus

    def run_checks(self, ref: str, checks: Sequence[tuple[str, Sequence[str]]], *, gpus: bool = False) -> list[tuple[str, str]]:
        self.checks += [(ref, tuple(argv)) for _, argv in checks]
        self.events.append(("check", ref))
        if gpus:
            self.gpu_runs.append(ref)
        return [("planted", "exit 1")] if any(f"/{name}:" in ref for name in self.fail_checks) else []

    def wait_healthy(self, ref: str, name: str, timeout: float = 120) -> None:
        self.healthy.append(ref)

    def remove_containers(self, image: str = "") -> int:
        return 0


class QuietProgress:
    def __init__(self) -> None:
        self.updates: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def update(self, key: str, status: str, detail: str = "") -> None:
        self.updates.append((key, status))

    def note(self, text: str) -> None:
        self.notes.append(text)


class ServedApt:
    """An apt archive (:class:`buildtool.locking.oslock.Apt`) that still serves every locked
    version: a build's archive check passes without reading any archive."""

    def __init__(self) -> None:
        self.asked: list[dict[str, str]] = []

    def unserved(self, *, pins, cache, **source) -> list[tuple[str, str]]:
        self.asked.append(dict(pins))
        return []

    def pockets(self, *, packages, cache, **source) -> dict[tuple[str, str], str]:
        return {}

    def stanzas(self, *, pins, cache, **source) -> tuple[str, list[str]]:
        return "12", [f"Package: {n}\nVersion: {v}\nArchitecture: amd64" for n, v in sorted(pins.items())]

    def resolve_root(self, **kw):
        raise AssertionError("nothing is resolved when every version is served")

    def resolve_added(self, **kw):
        raise AssertionError("nothing is resolved when every version is served")
