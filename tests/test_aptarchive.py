"""The apt archive fixture (tests/aptarchive.py): apt accepts it only with its key, and it moves like the real archives."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.aptarchive import AptArchive, apt_config

HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)  # apt refuses a Release dated in the future


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptArchive]:
    with AptArchive(tmp_path_factory.mktemp("aptarchive")) as archive:
        yield archive


def apt(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def source(archive: AptArchive, url: str, dist: str, keyring: Path | None = None) -> str:
    return f"deb [signed-by={keyring or archive.keyring}] {url} {dist} main"


def update(env: dict[str, str]) -> None:
    result = apt(env, "apt-get", "update")
    problems = [line for line in result.stderr.splitlines() if line.startswith(("W:", "E:"))]
    assert not problems, result.stderr


def candidate(env: dict[str, str], name: str) -> str:
    lines = apt(env, "apt-cache", "policy", name).stdout.splitlines()
    return next(line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("Candidate:"))


def test_apt_reads_a_signed_pocket(archive: AptArchive, tmp_path: Path, real_subprocess: None) -> None:
    tool = archive.make_deb("tool", "1.0-1", depends="data", files={"usr/bin/tool": b"#!/bin/sh\necho tool\n"})
    data = archive.make_deb("data", "2:3.1-4", arch="all", section="contrib/misc", priority="important")
    archive.publish("debian", "bookworm", [tool, data], components=("main", "contrib"), date=HOUR_AGO)

    env = apt_config(tmp_path, [f"deb [signed-by={archive.keyring}] {archive.url('debian')} bookworm main contrib"])
    update(env)

    assert candidate(env, "tool") == "1.0-1"
    assert candidate(env, "data") == "2:3.1-4"
    shown = apt(env, "apt-cache", "show", "tool").stdout
    assert "Depends: data\n" in shown and "Filename: pool/main/t/tool/tool_1.0-1_amd64.deb\n" in shown


def test_a_version_replaced_in_place_disappears(archive: AptArchive, tmp_path: Path, real_subprocess: None) -> None:
    archive.publish("debian", "trixie", [archive.make_deb("tool", "1.0-1")], date=HOUR_AGO)
    env = apt_config(tmp_path, [source(archive, archive.url("debian"), "trixie")])
    update(env)
    assert "Version: 1.0-1\n" in apt(env, "apt-cache", "show", "tool=1.0-1").stdout

    archive.publish("debian", "trixie", [archive.make_deb("tool", "1.0-2")], date=HOUR_AGO + timedelta(minutes=1))
    update(env)

    # apt-cache show of a version apt does not know prints nothing and exits 0.
    assert apt(env, "apt-cache", "show", "tool=1.0-1").stdout == ""
    assert [line.split("|")[1].strip() for line in apt(env, "apt-cache", "madison", "tool").stdout.splitlines()] == ["1.0-2"]
    assert candidate(env, "tool") == "1.0-2"


def test_a_snapshot_keeps_the_old_state(archive: AptArchive, tmp_path: Path, real_subprocess: None) -> None:
    archive.publish("debian", "forky", [archive.make_deb("tool", "1.0-1")], date=HOUR_AGO)
    archive.publish("ubuntu", "noble", [archive.make_deb("tool", "1.0-1ubuntu1")], date=HOUR_AGO)
    archive.snapshot("20261101T000000Z")
    archive.publish("debian", "forky", [archive.make_deb("tool", "1.0-2")], date=HOUR_AGO + timedelta(minutes=1))
    archive.publish("ubuntu", "noble", [archive.make_deb("tool", "1.0-2ubuntu1")], date=HOUR_AGO + timedelta(minutes=1))

    assert archive.url("debian", "20261101T000000Z") == f"{archive.base_url}/archive/debian/20261101T000000Z"
    assert archive.url("ubuntu", "20261101T000000Z") == f"{archive.base_url}/ubuntu/20261101T000000Z"
    for base, dist, old, new in (("debian", "forky", "1.0-1", "1.0-2"), ("ubuntu", "noble", "1.0-1ubuntu1", "1.0-2ubuntu1")):
        then = apt_config(tmp_path / base / "then", [source(archive, archive.url(base, "20261101T000000Z"), dist)])
        now = apt_config(tmp_path / base / "now", [source(archive, archive.url(base), dist)])
        update(then)
        update(now)
        assert (candidate(then, "tool"), candidate(now, "tool")) == (old, new)

    with pytest.raises(ValueError, match="not like"):
        archive.snapshot("2026-11-01")
    with pytest.raises(FileExistsError):
        archive.snapshot("20261101T000000Z")


def test_a_wrong_key_is_refused(archive: AptArchive, tmp_path: Path, real_subprocess: None) -> None:
    archive.publish("debian", "bullseye", [archive.make_deb("tool", "1.0-1")], date=HOUR_AGO)
    stranger = AptArchive(tmp_path / "stranger")
    stranger.close()
    env = apt_config(tmp_path / "apt", [source(archive, archive.url("debian"), "bullseye", stranger.keyring)])

    result = apt(env, "apt-get", "update", check=False)

    assert result.returncode != 0 and "NO_PUBKEY" in result.stderr and "is not signed" in result.stderr
    assert "1.0-1" not in apt(env, "apt-cache", "policy", "tool").stdout


def test_it_serves_on_loopback_only_and_records_requests(archive: AptArchive, tmp_path: Path, real_subprocess: None) -> None:
    assert archive.server is not None
    assert archive.server.socket.getsockname()[0] == "127.0.0.1"
    assert archive.base_url.startswith("http://127.0.0.1:")
    archive.publish("debian", "bookworm", [archive.make_deb("tool", "1.0-1")], date=HOUR_AGO)
    del archive.requests[:]

    update(apt_config(tmp_path, [source(archive, archive.url("debian"), "bookworm")]))

    assert archive.requests[0] == "/debian/dists/bookworm/InRelease"
    assert "/debian/dists/bookworm/main/binary-amd64/Packages.gz" in archive.requests


@pytest.mark.skipif(not shutil.which("mmdebstrap") or os.geteuid() != 0, reason="needs mmdebstrap and root")
def test_mmdebstrap_extracts_from_it(archive: AptArchive, tmp_path: Path, real_subprocess: None) -> None:
    tool = archive.make_deb("tool", "1.0-1", files={"usr/bin/tool": b"#!/bin/sh\necho tool\n", "etc/tool.conf": b"x=1\n"})
    archive.publish("debian", "sid", [tool], date=HOUR_AGO)
    target = tmp_path / "target"

    apt(
        dict(os.environ),
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--variant=extract",
        "--include=tool",
        "sid",
        str(target),
        source(archive, archive.url("debian"), "sid"),
    )

    assert (target / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert os.access(target / "usr/bin/tool", os.X_OK) and not os.access(target / "etc/tool.conf", os.X_OK)
    assert "/debian/pool/main/t/tool/tool_1.0-1_amd64.deb" in archive.requests
