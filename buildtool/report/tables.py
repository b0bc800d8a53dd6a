"""The size report as a terminal table, Markdown (the GitHub job summary, reports/sizes.md), JSON
(reports/sizes.json) and plain text."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from buildtool.adapters.files import atomic_write
from buildtool.report.sizes import MB, ImageSize


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / MB:.1f}"


def _delta(n: int | None) -> str:
    return "no prev" if n is None else f"{n / MB:+.1f}"  # no prev tag yet (first release)


def security(s: ImageSize) -> str:
    """The gate's verdict in a few words: status, vulnerabilities by severity, allowlisted, secrets."""
    sec = s.security
    if not sec.get("status"):
        return "not scanned (gate off)"
    counts = sec.get("counts", {})
    found = " ".join(f"{k[0]}{counts[k]}" for k in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN") if counts.get(k)) or "0"
    vulns = "vulns NOT SCANNED" if sec.get("db") == "none" else f"vulns {found}, {sec.get('allowlisted', 0)} allowlisted"
    return f"{sec['status']}: {vulns}, secrets {sec.get('secrets', 0)}"


def sbom(s: ImageSize) -> str:
    info = s.security.get("sbom")
    return f"{info['components']} components, {info['digest'][:19]}" if info else ""


def markdown(sizes: list[ImageSize], critical: str = "") -> str:
    """The size report; ``critical``: the run's critical path, said under the table."""
    lines = [
        "| image | machine | status | compressed MB | uncompressed MB | vs prev MB | budget MB | CUDA libs MB | security | SBOM | largest layer |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for s in sizes:
        budget = f"{s.budget_mb}{' **OVER**' if s.over_budget else ''}"
        top = f"{_mb(s.largest[0].size)} MB `{s.largest[0].created_by[:50]}`" if s.largest else ""
        cuda = "" if s.cuda_bytes is None else _mb(s.cuda_bytes) + (" **DUPLICATES**" if s.cuda_duplicates else "")
        cells = [s.repository, s.machine, s.status, _mb(s.compressed), _mb(s.uncompressed), _delta(s.delta), budget, cuda, security(s), sbom(s), top]
        lines.append("| " + " | ".join(cells) + " |")
    for s in sizes:
        for name, paths in s.cuda_duplicates.items():
            lines.append(f"\n**{s.repository}**: `{name}` is present {len(paths)} times: " + ", ".join(f"`{p}`" for p in paths))
    packaged = [s for s in sizes if s.packages]
    if packaged:
        lines += ["", "Biggest Python packages (uncompressed MB):", ""]
        lines += [f"- {s.repository} ({s.machine}): " + ", ".join(f"{name} {_mb(size)}" for name, size in s.packages) for s in packaged]
    if critical:
        lines += ["", f"The run's {critical}"]
    return "\n".join(lines) + "\n"


def table(sizes: list[ImageSize]) -> Table:
    t = Table(title="image sizes in MB (compressed: layer blobs in the registry)")
    for col in ("image", "machine", "status", "compressed", "uncompressed", "vs prev", "budget", "CUDA libs", "security", "SBOM"):
        t.add_column(col, justify="left" if col in ("image", "machine", "status", "security", "SBOM") else "right", no_wrap=True)
    for s in sizes:
        budget = f"[red]{s.budget_mb} OVER[/]" if s.over_budget else str(s.budget_mb)
        cuda = "" if s.cuda_bytes is None else _mb(s.cuda_bytes) + (" [red]DUPLICATES[/]" if s.cuda_duplicates else "")
        t.add_row(s.repository, s.machine, s.status, _mb(s.compressed), _mb(s.uncompressed), _delta(s.delta), budget, cuda, security(s), sbom(s))
    return t


def largest_layers(sizes: list[ImageSize]) -> str:
    lines = ["largest layers (compressed MB) and Python packages (uncompressed MB):"]
    for s in sizes:
        lines.append(f"  {s.repository} ({s.machine})")
        lines += [f"    {_mb(layer.size):>8}  {layer.created_by[:100]}" for layer in s.largest]
        if s.packages:
            lines.append("    packages: " + ", ".join(f"{name} {_mb(size)}" for name, size in s.packages))
    return "\n".join(lines)


def write(sizes: list[ImageSize], state_dir: Path, critical: str = "") -> Path:
    reports = state_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    atomic_write(reports / "sizes.json", json.dumps([asdict(s) for s in sizes], indent=2))
    atomic_write(reports / "sizes.md", markdown(sizes, critical))
    return reports
