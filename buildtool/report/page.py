"""The size and security report as one self-contained HTML page, from release records.

Charts are Plotly figures (the library's JavaScript is inlined once, so the page needs no
network): a stacked bar per image by what its layers hold, inherited layers hatched, with budget
marks and the family tree in the image order; each image's compressed size across the kept
releases; a treemap of the largest Python packages with the CUDA libraries apart; then the
security table and what changed since the release before. Every string from a record reaches the
page escaped for HTML, and chart labels keep only a safe character set.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from buildtool.adapters.files import atomic_write
from buildtool.adapters.protocols import Registry
from buildtool.core.errors import UsageError
from buildtool.model.allowlist import Allowlist
from buildtool.plan.plan import MB
from buildtool.report import history

COLORS = {"root": "#8c8c8c", "os": "#e6a23c", "python": "#409eff", "cuda": "#67c23a", "app": "#f56c6c", "other": "#b37feb"}
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
UNSAFE = re.compile(r"[^A-Za-z0-9._/+:@-]")


def label(text: object) -> str:
    """A chart label: record text cut to a safe character set (it lands in a script's JSON)."""
    return UNSAFE.sub("?", str(text))[:80]


def _tree(images: Sequence[Mapping]) -> list[tuple[int, Mapping]]:
    """Images in family-tree order (a parent, then its children), each with its depth."""
    children: dict[str, list[Mapping]] = {}
    names = {i["repository"] for i in images}
    for image in images:
        children.setdefault(image["parent"] if image["parent"] in names else "", []).append(image)
    out: list[tuple[int, Mapping]] = []

    def walk(parent: str, depth: int) -> None:
        for image in children.get(parent, []):
            out.append((depth, image))
            walk(image["repository"], depth + 1)

    walk("", 0)
    return out


def size_figure(images: Sequence[Mapping]) -> object:
    import plotly.graph_objects as go

    tree = _tree(images)
    names = [("· " * depth) + label(image["repository"]) for depth, image in tree][::-1]  # the roots at the top
    fig = go.Figure()
    for origin in history.ORIGINS:
        for own in (False, True):
            x = [sum(layer["size"] for layer in image["layers"] if layer["origin"] == origin and layer["own"] == own) / MB for _, image in tree][::-1]
            if any(x):
                fig.add_bar(y=names, x=x, orientation="h", name=f"{origin} ({'own' if own else 'inherited'})", marker_color=COLORS[origin],
                            marker_pattern_shape="" if own else "/", legendgroup=origin)  # fmt: skip
    fig.add_scatter(y=names, x=[image["budget_mb"] for _, image in tree][::-1], mode="markers", name="budget",
                    marker={"symbol": "line-ns-open", "size": 16, "color": "#303133", "line": {"width": 2}})  # fmt: skip
    fig.update_layout(barmode="stack", height=160 + 22 * len(tree), xaxis_title="compressed MB", margin={"l": 260},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"})
    return fig


def history_figure(releases: Sequence[Mapping]) -> object:
    """``releases``: records, oldest first."""
    import plotly.graph_objects as go

    fig = go.Figure()
    repos = sorted({i["repository"] for r in releases for i in r["images"]})
    for repo in repos:
        points = [(label(r["release"]), sum(x["size"] for x in i["layers"]) / MB) for r in releases for i in r["images"] if i["repository"] == repo]
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=label(repo))
    fig.update_layout(height=480, yaxis_title="compressed MB", xaxis_title="release", xaxis_type="category",
                      xaxis_categoryorder="array", xaxis_categoryarray=[label(r["release"]) for r in releases])  # oldest first, whoever is in them
    return fig


def package_figure(images: Sequence[Mapping]) -> object:
    import plotly.graph_objects as go

    biggest: dict[str, int] = {}
    for image in images:
        for name, size in image.get("largest_packages", []):
            biggest[label(name)] = max(biggest.get(label(name), 0), int(size))
    cuda = [n for n in biggest if n.startswith("nvidia/")]
    groups = {"CUDA libraries (nvidia/)": cuda, "other packages": [n for n in biggest if n not in cuda]}
    nodes = [("all", "Python packages", "", 0.0, "#ffffff")]  # (id, label, parent, MB, colour)
    for group, members in groups.items():
        colour = "#67c23a" if "CUDA" in group else "#409eff"
        nodes += [(group, group, "all", 0.0, colour)] if members else []
        nodes += [(f"{group}/{name}", name, group, biggest[name] / MB, colour) for name in members]
    ids, labels, parents, values, colors = (list(column) for column in zip(*nodes, strict=True))
    fig = go.Figure(go.Treemap(ids=ids, labels=labels, parents=parents, values=values, marker_colors=colors, branchvalues="remainder",
                               hovertemplate="%{label}: %{value:.1f} MB<extra></extra>"))  # fmt: skip
    fig.update_layout(height=520, margin={"t": 30, "l": 10, "r": 10, "b": 10})
    return fig


def security_table(images: Sequence[Mapping], expiries: Mapping[str, str]) -> str:
    rows = []
    for image in images:
        counts = "".join(f"<td>{int(image.get('vulnerabilities', {}).get(s, 0))}</td>" for s in SEVERITIES)
        allowed = "<br>".join(f"{html.escape(a)} (until {html.escape(expiries.get(a.split()[0], '?'))})" for a in image.get("allowlisted", []))
        sbom = html.escape(image.get("sbom", "")[:19]) or "none"
        rows.append(f"<tr><td>{html.escape(image['repository'])}</td>{counts}<td>{allowed or '-'}</td><td><code>{sbom}</code></td></tr>")
    head = "".join(f"<th>{s}</th>" for s in SEVERITIES)
    return f'<table id="security"><tr><th>image</th>{head}<th>allowlisted (expiry)</th><th>SBOM</th></tr>{"".join(rows)}</table>'


def diff_section(old: str, new: str, changes: Sequence[history.ImageChange]) -> str:
    if not changes:
        return f"<p>No image changed from {html.escape(old)} to {html.escape(new)}.</p>"
    rows = []
    for c in changes:
        (x, y) = c.size
        moved, packages, advisories = ("<br>".join(map(html.escape, lines)) for lines in c.cells(packages=12))
        rows.append(f"<tr><td>{html.escape(c.repository)}</td><td>{c.status}</td><td>{html.escape(', '.join(c.why))}</td>"
                    f"<td>{x / MB:.1f} → {y / MB:.1f}</td><td>{moved}</td><td>{packages}</td><td>{advisories}</td></tr>")  # fmt: skip
    return ('<table id="diff"><tr><th>image</th><th>change</th><th>why</th><th>MB</th><th>layers that moved</th><th>packages</th>'
            f"<th>advisories</th></tr>{''.join(rows)}</table>")  # fmt: skip


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#303133}h1{font-size:22px}h2{font-size:18px;margin-top:32px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #dcdfe6;padding:4px 8px;text-align:left;vertical-align:top}
.summary{font-size:16px;background:#f4f4f5;padding:12px;border-radius:6px}"""


def render(org: str, releases: Sequence[Mapping], expiries: Mapping[str, str]) -> str:
    """The page for the newest of ``releases`` (records, oldest first), with its history and its
    diff against the one before it."""
    current = releases[-1]
    images = current["images"]
    total = sum(sum(layer["size"] for layer in i["layers"]) for i in images)
    over = [i["repository"] for i in images if sum(layer["size"] for layer in i["layers"]) > i["budget_mb"] * MB]
    flagged = [i["repository"] for i in images if any(i.get("vulnerabilities", {}).get(s) for s in ("CRITICAL", "HIGH"))]
    previous = releases[-2] if len(releases) > 1 else None
    changes = history.diff(previous, current) if previous else []
    summary = (f"{len(images)} images, {total / MB / 1000:.2f} GB compressed; {len(over)} over budget; {len(flagged)} with HIGH or CRITICAL "
               f"advisories" + (f"; {len(changes)} changed since {previous['release']}" if previous else ""))  # fmt: skip
    figures = [("sizes", "Where the space goes", size_figure(images)), ("history", "Size history", history_figure(releases)),
               ("packages", "Largest Python packages", package_figure(images))]  # fmt: skip
    parts = []
    for n, (div, title, fig) in enumerate(figures):
        chart = fig.to_html(full_html=False, include_plotlyjs=n == 0, div_id=div, config={"displaylogo": False, "responsive": True})
        parts.append(f"<h2>{title}</h2>{chart}")
    since = diff_section(previous["release"], current["release"], changes) if previous else "<p>No earlier release on record.</p>"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(org)} {html.escape(current["release"])}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(org)}: release {html.escape(current['release'])}</h1>"
            f'<p class="summary" id="summary">{html.escape(summary)}</p>{"".join(parts)}'
            f"<h2>Security</h2>{security_table(images, expiries)}<h2>Since the release before</h2>{since}</body></html>")  # fmt: skip


def expiries(allowlist: Allowlist) -> dict[str, str]:
    """Each allowlisted id's expiry, as the security table shows it."""
    return {e.id: e.expires.isoformat() for e in allowlist.entries}


def write(registry: Registry, org: str, release: str, out: Path, expiries: Mapping[str, str], *, keep: int = 5) -> list[dict]:
    """Write ``release``'s page to ``out``, with up to ``keep`` releases of history (following each
    record's ``previous`` until one is gone); the records used, oldest first."""
    releases = [history.fetch(registry, org, release)]
    while len(releases) < max(keep, 2) and (previous := releases[-1].get("previous")) and previous not in {r["release"] for r in releases}:
        try:
            releases.append(history.fetch(registry, org, previous))
        except UsageError:
            break  # pruned, or from before records: the history starts here
    atomic_write(out, render(org, releases[::-1], expiries))
    return releases[::-1]
