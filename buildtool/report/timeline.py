"""Where a run's time went: the critical path through its images, and each image's stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class Timed(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def repository(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def started(self) -> float: ...
    @property
    def ended(self) -> float: ...
    @property
    def stages(self) -> Mapping[str, float]: ...


def critical_path(results: Sequence[Timed], parents: Mapping[str, str | None]) -> list[Timed]:
    """The chain of images that set the run's length: the image that ended last, then the parent
    it built on, and so on to a root (``parents``: each step's key to its parent's). Images found
    in the registry took no time and end no path."""
    by_key = {r.key: r for r in results}
    worked = [r for r in results if r.status in ("built", "failed")]
    if not worked:
        return []
    chain = [max(worked, key=lambda r: r.ended)]
    while (parent := parents.get(chain[-1].key)) and parent in by_key and by_key[parent].status in ("built", "failed"):
        chain.append(by_key[parent])
    return chain[::-1]


def describe(chain: Sequence[Timed]) -> str:
    """One line: each image of the path with its time from start to end and its longest stage."""
    if not chain:
        return "critical path: none (every image was in the registry)"
    parts = []
    for r in chain:
        longest = max(r.stages.items(), key=lambda kv: kv[1], default=None)
        stage = f", {longest[0]} {longest[1]:.1f}s" if longest else ""
        parts.append(f"{r.repository} {r.ended - r.started:.1f}s{stage}")
    return f"critical path ({chain[-1].ended - chain[0].started:.1f}s): " + " → ".join(parts)


def as_json(chain: Sequence[Timed]) -> list[dict[str, object]]:
    return [{"repository": r.repository, "started": round(r.started, 3), "ended": round(r.ended, 3), "stages": dict(r.stages)} for r in chain]
