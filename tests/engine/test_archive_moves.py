"""Archives that move, for real: a root bootstrapped from a local, signed apt archive on 127.0.0.1
whose security pocket then replaces a locked version in place, as Debian's does.

The archive serves base-python's real bookworm packages (downloaded once from Debian's archive
into the tests' state dir), tini from a "security update" the test makes. The fleet is a copy cut
down to base-python, reading that archive. Then:

* ``--locked`` refuses the replaced version before its first step, naming it and the refresh;
  nothing is bootstrapped, built or tagged;
* the default build forwards the lock (tini only, to what the pocket serves now), prints the
  move, builds, and the image holds the new tini;
* a fleet on the snapshot taken before the replacement still proves its lock and builds from it;
* a pocket that gains a newer version of a package whose locked version it still serves moves
  nothing: ``lock --check`` passes and the lock stays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from buildtool.adapters import host
from buildtool.adapters.bootstrap import includes
from buildtool.adapters.files import copy_fleet, owned_dir
from buildtool.adapters.registry import Registry
from buildtool.cli.main import main
from buildtool.core.errors import LockError
from buildtool.locking import apt, aptsource, oslock
from buildtool.model.load import load_fleet
from buildtool.model.oslocks import os_lock_path
from tests.aptarchive import AptArchive
from tests.conftest import REPO
from tests.engine.helpers import commit_all, run_build, settings_for, state_dir
from tests.fakes import QuietProgress

pytestmark = pytest.mark.engine

ADDRESS = "127.0.0.1:5000"
FAMILY = "base-python"
LOCK = os_lock_path(FAMILY)
SNAPSHOT = "20261201T000000Z"
HOUR = timedelta(hours=1)


def _fields(deb: Path) -> dict[str, str]:
    text = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True).stdout
    return dict(re.findall(r"^(\S+): (.*)$", text, re.M))


def real_debs() -> list[Path]:
    """base-python's two roots as Debian's archive serves them today, downloaded once."""
    family = load_fleet(REPO).families[FAMILY]
    assert family.root is not None
    cache = owned_dir(state_dir() / "apt", repo=REPO, what="apt index cache")
    pairs: set[tuple[str, str]] = set()
    for variant in ("builder", "runtime"):
        wanted = includes("bookworm", variant, family.root.packages, family.root.builder_packages)
        pairs |= set(apt.resolve_root(suite="bookworm", include=wanted, merged_usr=True, cache=cache).packages)
    folder = state_dir() / "archive-debs"
    folder.mkdir(parents=True, exist_ok=True)
    have = {(f["Package"], f["Version"]): deb for deb in folder.glob("*.deb") if (f := _fields(deb))}
    missing = sorted(pairs - set(have))
    if missing:
        conf = aptsource.archive("bookworm", cache).conf
        host.run(["apt-get", "download", *(f"{n}={v}" for n, v in missing)], env={"APT_CONFIG": str(conf), "LC_ALL": "C"}, cwd=folder, timeout=900)
        have = {(f["Package"], f["Version"]): deb for deb in folder.glob("*.deb") if (f := _fields(deb))}
    return [have[pair] for pair in sorted(pairs)]


def repack(deb: Path, version: str, out: Path) -> Path:
    """``deb`` with another version: the security update the test publishes."""
    tree = out / f"tree-{version}"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    target = out / f"{_fields(deb)['Package']}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(target)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return target


@dataclasses.dataclass
class Mirror:
    archive: AptArchive
    debs: list[Path]  # bookworm itself
    tini: list[Path]  # the security updates of tini the tests publish (+fleet1 is in the snapshot)
    clock: datetime  # each publish is dated later than the last: apt ignores a Release older than its own
    current: Path | None = None  # the tini bookworm-security serves now

    def publish(self, base: str, dist: str, debs: list[Path]) -> None:
        self.clock += timedelta(minutes=1)
        self.archive.publish(base, dist, debs, date=self.clock)

    def security(self, deb: Path) -> str:
        """Replace what bookworm-security serves with ``deb``; its version."""
        self.publish("debian-security", "bookworm-security", [deb])
        self.current = deb
        return _fields(deb)["Version"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory):
    debs = real_debs()
    root = tmp_path_factory.mktemp("archive")
    with AptArchive(root) as archive:
        (tini,) = [d for d in debs if _fields(d)["Package"] == "tini"]
        version = _fields(tini)["Version"]
        m = Mirror(archive=archive, debs=debs, tini=[repack(tini, f"{version}+fleet{n}", root) for n in (1, 2, 3)], clock=datetime.now(UTC) - 3 * HOUR)
        m.publish("debian", "bookworm", debs)
        m.publish("debian", "bookworm-updates", [])
        m.security(m.tini[0])
        archive.snapshot(SNAPSHOT)  # the archive as it was: bookworm-security serves tini +fleet1
        yield m


def fleet_on(mirror: Mirror, root: Path, archive_table: str) -> Path:
    """A copy of the fleet cut down to base-python (and one service on it), reading ``archive_table``."""
    copy_fleet(REPO, root)
    for path in (root / "families").glob("*.toml"):
        if path.stem != FAMILY:
            path.unlink()
    for path in [*(root / "services").glob("*.toml"), *(root / "lockfiles").rglob("*.txt")]:
        if path.relative_to(root).as_posix() != LOCK:
            path.unlink()
    (root / "services" / "Probe.toml").write_text('family = "base-python"\nmachines = ["mainpc"]\nport = 7000\nhealth_port = 8000\n')
    (root / "security" / "allowlist.toml").write_text("")  # its entries are of the families left out
    (root / "keys").mkdir()
    shutil.copy(mirror.archive.keyring, root / "keys" / "test-archive.gpg")
    with (root / "fleet.toml").open("a") as fh:
        fh.write(f'\n[archives.debian]\n{archive_table}keyring = "keys/test-archive.gpg"\n')
    assert main(["--root", str(root), "lock", "--upgrade"]) == 0  # resolved afresh against the local archive
    commit_all(root)
    return root


def live(mirror: Mirror) -> str:
    return f'mirror = "{mirror.archive.url("debian")}"\nsecurity = "{mirror.archive.url("debian-security")}"\n'


def locked_tini(root: Path) -> set[str]:
    return {line for line in (root / LOCK).read_text().splitlines() if line.startswith("tini=")}


def tags(org: str) -> dict[str, str | None]:
    reg = Registry(ADDRESS)
    return {tag: reg.digest(f"{org}/{FAMILY}", tag) for tag in ("latest", "prev")}


def tini_in(org: str, tag: str) -> str:
    ref = f"{ADDRESS}/{org}/{FAMILY}:{tag}"
    subprocess.run(["docker", "pull", "-q", ref], check=True, capture_output=True)
    status = subprocess.run(["docker", "run", "--rm", "--network=none", "--entrypoint", "/opt/venv/bin/python", ref, "-c",
                             "print(open('/var/lib/dpkg/status').read())"], check=True, capture_output=True, text=True).stdout  # fmt: skip
    stanza = next(s for s in status.split("\n\n") if s.startswith("Package: tini\n"))
    return re.search(r"^Version: (.+)$", stanza, re.M)[1]  # type: ignore[index]


def test_a_version_replaced_in_place_is_refused_locked_and_forwarded_by_default(mirror: Mirror, tmp_path: Path) -> None:
    assert mirror.current is not None
    version = _fields(mirror.current)["Version"]
    root = fleet_on(mirror, tmp_path / "fleet", live(mirror))
    assert locked_tini(root) == {f"tini={version}"}
    following = mirror.tini[(mirror.tini.index(mirror.current) + 1) % len(mirror.tini)]
    new = mirror.security(following)  # the security pocket replaces the locked tini in place
    org = f"moves-{int(time.time())}-{os.getpid()}"
    run = settings_for(root, org)

    # lock --check reports it, and fails on it only --locked.
    assert main(["--root", str(root), "lock", "--check"]) == 0
    assert main(["--root", str(root), "lock", "--check", "--locked"]) == LockError.exit_code

    # --locked: refused before the first step, naming the package and the refresh; nothing done.
    logs = run.state_dir / "logs" / f"{FAMILY}.log"
    logs.unlink(missing_ok=True)
    progress = QuietProgress()
    assert run_build(run, tag="moves-1", families=[FAMILY], locked=True, progress=progress) == LockError.exit_code
    assert progress.updates == [] and not logs.exists()  # not one step began
    assert locked_tini(root) == {f"tini={version}"}
    assert tags(org) == {"latest": None, "prev": None}

    # The default build: forwards tini (only tini), says so, builds and publishes.
    before = [line for line in (root / LOCK).read_text().splitlines() if "=" in line and not line.startswith(("#", "tini="))]
    progress = QuietProgress()
    assert run_build(run, tag="moves-2", families=[FAMILY], progress=progress) == 0
    assert progress.notes == [f"forwarded {LOCK}: tini {version} -> {new} (bookworm-security): no longer served by the archive"]
    assert locked_tini(root) == {f"tini={new}"}
    assert [line for line in (root / LOCK).read_text().splitlines() if "=" in line and not line.startswith(("#", "tini="))] == before
    record = json.loads((run.state_dir / "reports" / "last-run.json").read_text())
    assert [(m["package"], m["old"], m["new"], m["pocket"]) for m in record["forwarded"]] == [("tini", version, new, "bookworm-security")]
    assert tini_in(org, "moves-2") == new
    assert main(["--root", str(root), "lock", "--check", "--locked"]) == 0  # the lock is the archive's again


def test_a_snapshot_keeps_serving_what_the_lock_names(mirror: Mirror, tmp_path: Path) -> None:
    table = f'snapshot = "{SNAPSHOT}"\nsnapshot_mirror = "{mirror.archive.base_url}"\n'
    root = fleet_on(mirror, tmp_path / "fleet", table)
    snapshot_version = _fields(mirror.tini[0])["Version"]
    assert locked_tini(root) == {f"tini={snapshot_version}"}  # what the archive served at that time
    mirror.security(mirror.tini[2])  # the live archive has moved on since
    assert main(["--root", str(root), "lock", "--check", "--locked"]) == 0
    assert any(f"/archive/debian-security/{SNAPSHOT}/dists/bookworm-security/InRelease" in r for r in mirror.archive.requests)
    org = f"snap-{int(time.time())}-{os.getpid()}"
    progress = QuietProgress()
    assert run_build(settings_for(root, org), tag="snap-1", families=[FAMILY], locked=True, progress=progress) == 0
    assert progress.notes == []
    assert tini_in(org, "snap-1") == snapshot_version


def test_a_pocket_updated_with_a_newer_version_moves_nothing(mirror: Mirror, tmp_path: Path) -> None:
    root = fleet_on(mirror, tmp_path / "fleet", live(mirror))
    text = (root / LOCK).read_text()
    (dash,) = [d for d in mirror.debs if _fields(d)["Package"] == "dash"]
    newer = repack(dash, _fields(dash)["Version"] + "+fleet1", tmp_path)
    assert mirror.current is not None
    assert locked_tini(root) == {f"tini={_fields(mirror.current)['Version']}"}
    mirror.publish("debian", "bookworm-updates", [newer])
    assert main(["--root", str(root), "lock", "--check", "--locked"]) == 0
    assert main(["--root", str(root), "lock"]) == 0
    assert (root / LOCK).read_text() == text
    fleet = load_fleet(root)
    assert oslock.unserved(fleet, {LOCK: fleet.os_lock_sections(FAMILY)}, cache=state_dir() / "apt") == {}
