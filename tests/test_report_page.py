"""The HTML report: one self-contained page from release records, and (marked ``network``: it
installs Debian's Chromium when missing) that page in a real headless browser, with no network."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from buildtool.adapters import setup
from buildtool.core.errors import EngineError
from buildtool.report import history, page
from tests.conftest import REPO
from tests.fakes import FakeRegistry
from tests.test_history import release

CHARTS = ("sizes", "history", "packages")


def two_releases(fleet_dir: Path, tmp_path: Path) -> tuple[FakeRegistry, list[dict]]:
    """Two releases through the pipeline (fakes), base-cpu-pydeps changed between them."""
    registry = FakeRegistry()
    release(fleet_dir, tmp_path / "state", registry, "20261201-aaaaaaa")
    family = fleet_dir / "families" / "base-cpu-pydeps.toml"
    family.write_text(family.read_text() + '\n[[smoke]]\nname = "numpy imports"\nrun = ["python", "-c", "import numpy"]\n')
    release(fleet_dir, tmp_path / "state", registry, "20261202-bbbbbbb")
    return registry, [history.fetch(registry, "fleet", tag) for tag in ("20261201-aaaaaaa", "20261202-bbbbbbb")]


def hostile(records: list[dict]) -> list[dict]:
    """The newer record, with what a broken or hostile registry could put in it."""
    images = records[-1]["images"]
    images[0]["largest_packages"] = [["<script>alert(1)</script>", 40 * 10**6], ["nvidia/cublas", 600 * 10**6], ["torch", 1500 * 10**6]]
    images[0]["allowlisted"] = ["CVE-2026-1 <img src=x onerror=alert(1)>"]
    images[0]["vulnerabilities"] = {"HIGH": 2, "LOW": 1}
    return records


def test_the_page_is_self_contained_escaped_and_says_what_changed(fleet_dir: Path, tmp_path: Path) -> None:
    _, records = two_releases(fleet_dir, tmp_path)
    text = page.render("fleet", hostile(records), {"CVE-2026-1": "2027-01-31"})
    for chart in CHARTS:
        assert f'id="{chart}"' in text
    assert "<script>alert(1)</script>" not in text and "<img src=x" not in text  # escaped in tables, cut in chart labels
    assert "?script?alert?1??\\u002fscript?" in text and "&lt;img src=x onerror=alert(1)&gt; (until 2027-01-31)" in text
    assert re.search(r'<script src="http|<link[^>]+href="http', text) is None  # nothing fetched: the charting library is inline
    summary = re.search(r'id="summary">([^<]+)<', text).group(1)
    assert summary.startswith("5 images,") and "1 with HIGH or CRITICAL advisories" in summary and "3 changed since 20261201-aaaaaaa" in summary
    assert '<table id="diff">' in text and "base-cpu-pydeps</td><td>rebuilt</td><td>checks</td>" in text


def chromium() -> str:
    if shutil.which("chromium") is None:
        try:
            setup.ensure_host_packages(["chromium"])
        except EngineError as exc:
            pytest.skip(f"no Chromium, and it cannot be installed here: {exc.message}")
    return shutil.which("chromium") or "chromium"


def check_in_chromium(index: Path, work: Path, shot: Path) -> str:
    """Open ``index`` in headless Chromium with a dead proxy (anything the page fetched would fail,
    and say so on the console): no console message, every chart drawn with a size; a screenshot
    to ``shot``. Returns the DOM after the scripts ran."""
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={work / 'profile'}", "--proxy-server=127.0.0.1:9",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--window-size=1400,2600"]  # fmt: skip
    dom = subprocess.run([*browser, "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=180, check=True)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    for chart in CHARTS:  # each chart drew its SVG, with a size
        block = dom.stdout[dom.stdout.index(f'id="{chart}"') :]
        svg = re.search(r'<svg class="main-svg"[^>]*width="(\d+)"[^>]*height="(\d+)"', block)
        assert svg and int(svg.group(1)) > 300 and int(svg.group(2)) > 200, chart
    assert dom.stdout.count('class="point"') >= 5  # bars drawn
    assert "slice" in dom.stdout[dom.stdout.index('id="packages"') :]  # treemap tiles drawn
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*browser, f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # kept as the test's artifact
    return dom.stdout


def shots() -> Path:
    """Where the screenshots are kept: the tests' state dir's reports/."""
    return Path(os.environ.get("FLEET_TEST_STATE_DIR", REPO / "build" / "test-state")) / "reports"


@pytest.mark.network
def test_the_page_renders_its_charts_in_headless_chromium(fleet_dir: Path, tmp_path: Path) -> None:
    _, records = two_releases(fleet_dir, tmp_path)
    index = tmp_path / "index.html"
    index.write_text(page.render("fleet", hostile(records), {"CVE-2026-1": "2027-01-31"}))
    dom = check_in_chromium(index, tmp_path, shots() / "report-page.png")
    assert "only in" not in dom and "3 changed since 20261201-aaaaaaa" in dom


def test_a_record_naming_itself_as_previous_ends_the_history(tmp_path: Path) -> None:
    """Records written before a release could be extended may name their own release as previous."""
    registry = FakeRegistry()
    history.store(registry, "fleet", "20261201-aaaaaaa", "20261201-aaaaaaa", [])
    history.store(registry, "fleet", "20261202-bbbbbbb", "20261201-aaaaaaa", [])
    releases = page.write(registry, "fleet", "20261202-bbbbbbb", tmp_path / "index.html", {}, keep=5)
    assert [r["release"] for r in releases] == ["20261201-aaaaaaa", "20261202-bbbbbbb"]
