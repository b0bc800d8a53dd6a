"""Trivy as the gate runs it, with a recording command runner: where it runs, what configuration
it may read, and which advisory databases it accepts."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from buildtool.adapters.scanner import Trivy
from buildtool.core.errors import SecurityError

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


class Recorder:
    """Stands in for host.run: records each call and what its working folder held then."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, argv, *, env=None, cwd=None, timeout=None, drop=()):
        folder = Path(cwd)
        assert drop == ("TRIVY_",)  # the caller's TRIVY_SEVERITY, TRIVY_SKIP_FILES... never narrow a scan
        self.calls.append({"argv": list(argv), "cwd": folder, "mode": stat.S_IMODE(folder.stat().st_mode),
                           "files": {p.name: p.read_text() for p in folder.iterdir()}})  # fmt: skip
        if "--output" in argv:
            Path(argv[argv.index("--output") + 1]).write_text(json.dumps({"Results": []}))
        return subprocess.CompletedProcess(argv, 0, "", "")


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_trivy_runs_in_a_private_empty_folder_with_the_toolkits_own_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    (state / "trivy").mkdir(parents=True)
    for folder in (tmp_path, state, state / "trivy"):  # what a checkout or a state dir might carry
        (folder / ".trivyignore").write_text("CVE-2024-47874\n")
        (folder / "trivy.yaml").write_text("severity: [LOW]\n")
        (folder / "trivy-secret.yaml").write_text("disable-rules: [aws-access-key-id]\n")
    monkeypatch.chdir(tmp_path)
    runner = Recorder()
    trivy = Trivy(Path("state/trivy"), runner=runner)  # a relative state dir, as FLEET_STATE_DIR may give
    trivy.scan(Path("state/image.tar"), Path("state/scan.json"), vulnerabilities=True)
    trivy.sbom("127.0.0.1:5000/fleet/x@sha256:" + "a" * 64, state / "sbom.json")
    for call in runner.calls:
        argv, cwd = call["argv"], call["cwd"]
        assert cwd not in (tmp_path, state, state / "trivy") and cwd.name.startswith("fleet-trivy-") and call["mode"] == 0o700
        assert call["files"] == {"trivy.yaml": "{}\n", "trivyignore": ""}  # only what the toolkit wrote
        assert Path(flag(argv, "--config")).parent == cwd and Path(flag(argv, "--ignorefile")).parent == cwd
        assert Path(flag(argv, "--secret-config")) == cwd / "trivy-secret.yaml"  # absent: the built-in rules
        assert all(os.path.isabs(flag(argv, f)) for f in ("--cache-dir", "--output"))
        assert not cwd.exists()  # gone after the run
    assert os.path.isabs(flag(runner.calls[0]["argv"], "--input"))


def write_db(folder: Path, **metadata: str) -> Path:
    (folder / "db").mkdir(parents=True)
    (folder / "db" / "trivy.db").write_bytes(b"bolt")
    (folder / "db" / "metadata.json").write_text(json.dumps({"Version": 2, **metadata}))
    return folder


def test_a_database_dated_in_the_future_is_refused(tmp_path: Path) -> None:
    ahead = write_db(tmp_path / "ahead", UpdatedAt="2027-01-01T00:00:00.123456789Z")
    with pytest.raises(SecurityError, match="dated 2027-01-01 00:00 UTC, ahead of this machine's clock"):
        Trivy(tmp_path / "cache", runner=Recorder()).database(folder=ahead, repository="", now=NOW)
    current = write_db(tmp_path / "current", UpdatedAt="2026-12-04T06:00:00Z")
    db = Trivy(tmp_path / "cache2", runner=Recorder()).database(folder=current, repository="", now=NOW)
    assert db.version == "v2-2026-12-04T06:00:00Z"


def test_a_download_dated_in_the_future_is_not_fresh(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_db(cache, UpdatedAt="2026-12-04T06:00:00Z", DownloadedAt="2030-01-01T00:00:00Z")
    runner = Recorder()
    Trivy(cache, runner=runner).database(folder=None, repository="127.0.0.1:5000/db/trivy-db:2", now=NOW)
    assert any("--download-db-only" in c["argv"] for c in runner.calls)  # before: "fresh" until 2030
    runner.calls.clear()
    (cache / "db" / "metadata.json").write_text(json.dumps({"Version": 2, "UpdatedAt": "2026-12-04T06:00:00Z", "DownloadedAt": "2026-12-04T07:00:00Z"}))
    Trivy(cache, runner=runner).database(folder=None, repository="127.0.0.1:5000/db/trivy-db:2", now=NOW)
    assert runner.calls == []  # five hours old: fresh
