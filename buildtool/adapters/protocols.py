"""What the layers above need from the engine and the registry, as typed interfaces.

The executor, the publisher and the reports depend on these Protocols, not on the adapter
classes; the adapters (:mod:`.engine`, :mod:`.registry`) implement them, and so do the test
fakes (tests/fakes.py, checked against these by tests/test_architecture.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from buildtool.adapters.registry import Manifest


@dataclass(frozen=True, kw_only=True)
class Built:
    """An image the engine built and loaded: its manifest digest, its layers' compressed sizes, and
    the seconds the load took once the build had written its last byte (the archive streams into
    the load while it is written: the rest of the load is what the build does not cover)."""

    digest: str
    layers: tuple[int, ...]
    load_seconds: float = 0.0

    @property
    def compressed(self) -> int:
        return sum(self.layers)


class Engine(Protocol):
    def ready(self) -> None: ...  # before a build writes anything: the engine up, with room on its disks

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
    ) -> Built: ...

    def push(self, ref: str) -> None: ...

    def save(self, ref: str, out: Path) -> Path: ...

    def image_digest(self, ref: str) -> str: ...

    def image_user(self, ref: str) -> str: ...

    def gpus_available(self, ref: str) -> bool: ...

    def run_checks(self, ref: str, checks: Sequence[tuple[str, Sequence[str]]], *, gpus: bool = False) -> list[tuple[str, str]]: ...

    def wait_healthy(self, ref: str, name: str, timeout: float = 120) -> None: ...

    def remove_containers(self, image: str = "") -> int: ...


class Registry(Protocol):
    def digest(self, repo: str, ref: str, *, fresh: bool = False) -> str | None: ...

    def manifest(self, repo: str, ref: str) -> Manifest | None: ...

    def put_manifest(self, repo: str, tag: str, manifest: Manifest) -> None: ...

    def image_manifest(self, repo: str, ref: str, platform: str = "linux/amd64") -> Manifest | None: ...

    def layer_sizes(self, repo: str, ref: str) -> list[int]: ...

    def config(self, repo: str, ref: str) -> dict: ...

    def uncompressed_size(self, repo: str, digest: str) -> int: ...

    def layer_files(self, repo: str, digest: str) -> list[tuple[str, int]]: ...

    def attach(self, repo: str, subject: Manifest, *, artifact_type: str, data: bytes, annotations: dict[str, str] | None = None) -> Manifest: ...

    def referrers(self, repo: str, subject_digest: str, artifact_type: str = "") -> list[dict]: ...

    def blob(self, repo: str, digest: str) -> bytes | None: ...

    def push_blob(self, repo: str, data: bytes) -> str: ...

    def tags(self, repo: str) -> list[str]: ...

    def delete(self, repo: str, digest: str) -> bool: ...
