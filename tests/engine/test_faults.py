"""Faults with real builds: stop signals sent from outside during a smoke check and during a
build, a step over its time limit, a second run on the same state dir, and the rerun that
resumes. Each run is the command line in its own process, as a user or a CI runner starts it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from python_on_whales import docker

from buildtool.adapters.files import copy_fleet
from buildtool.adapters.registry import Registry
from tests.conftest import REPO
from tests.engine.helpers import commit_all, state_dir

pytestmark = pytest.mark.engine

ADDRESS = "127.0.0.1:5000"
CHAIN = ["base-python", "base-utils", "base-cpu-pydeps", "family-web"]
SLEEPING_SMOKE = '\n[[smoke]]\nname = "sleeps"\nrun = ["python", "-c", "import time; time.sleep(600)"]\n'
SLEEPING_SETUP = '\n[builder]\nsetup = "families/slow-setup.sh"\n'


class Run:
    """``python -m buildtool --root ROOT --org ORG ARGS`` in the background, output to files."""

    def __init__(self, root: Path, org: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.out = root / f"run-{time.monotonic_ns()}.log"
        with self.out.open("w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "buildtool", "--root", str(root), "--org", org, *args], stdout=fh, stderr=subprocess.STDOUT,
                                         env={**os.environ, "FLEET_STATE_DIR": str(state_dir()), **(env or {})})  # fmt: skip

    @property
    def log(self) -> str:
        return self.out.read_text()

    def stop(self, sig: int) -> tuple[int, float]:
        """Send ``sig``; the exit code and the seconds until the process ended."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        return code, time.monotonic() - sent


def until(check: Callable[[], object], timeout: float, what: str, run: Run | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if run is not None and run.proc.poll() is not None:
            pytest.fail(f"the run ended (exit {run.proc.returncode}) before {what}:\n{run.log[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f}s" + (f":\n{run.log[-3000:]}" if run else ""))


def containers(pid: int) -> list:
    return docker.container.list(all=True, filters=[("label", f"fleet.run={pid}")])


def processes(fragment: str) -> list[int]:
    """Processes on this host whose command line holds ``fragment`` (BuildKit's RUN steps too)."""
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if fragment in cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmd.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def tags(org: str, tag: str) -> dict[str, str | None]:
    registry = Registry(ADDRESS)
    return {repo: registry.digest(f"{org}/{repo}", tag) for repo in CHAIN}


def released(org: str) -> dict[str, list[str]]:
    """Tags other than identity tags and attached artifacts (SBOMs, scan reports), per image of the
    chain: what a publish would have written."""
    registry = Registry(ADDRESS)
    return {repo: [t for t in registry.tags(f"{org}/{repo}") if not t.startswith(("id-", "sha256-"))] for repo in CHAIN}


def nothing_left(run: Run, fragment: str) -> None:
    """No container of the run, no process of the sleeping step, no release tag of the run."""
    until(lambda: not containers(run.proc.pid) and not processes(fragment), 15, f"end of what the run started ({fragment})")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("faults")
    copy_fleet(REPO, root)
    web = root / "families" / "family-web.toml"
    original = web.read_text()
    (root / "families" / "slow-setup.sh").write_text("#!/bin/sh\n# A builder step that hangs (tests of stop signals).\nsleep 601\n")
    web.write_text(original + SLEEPING_SMOKE)
    commit_all(root)
    return {"root": root, "org": f"faults-{int(time.time())}-{os.getpid()}", "web": web, "original": original}


def test_sigterm_during_a_smoke_check_ends_the_run_in_seconds_and_a_second_run_waits_for_it(fleet) -> None:
    run = Run(fleet["root"], fleet["org"], "build", "--families-only", "--family", "family-web")
    until(lambda: containers(run.proc.pid), 900, "smoke-check container of family-web", run)
    until(lambda: processes("time.sleep(600)"), 30, "sleeping smoke check", run)
    waiter = Run(fleet["root"], fleet["org"], "prune", "--dry-run", "--registry-only")
    until(lambda: f"waiting: pid {run.proc.pid}" in waiter.log, 30, "second run saying whom it waits for", waiter)
    assert waiter.proc.poll() is None

    code, seconds = run.stop(signal.SIGTERM)
    assert code == 143 and seconds < 10, (code, seconds, run.log[-2000:])
    # family-web started once its parent was in the engine: the parent may still be on its way to the registry.
    said = re.search(r"stopped by SIGTERM: cancelled (\d) image\(s\) \(([^)]*)\); (\d) finished and pushed by identity", run.log)
    assert said and said.group(2).split(", ")[-1] == "family-web" and int(said.group(1)) + int(said.group(3)) == 4, run.log[-2000:]
    assert "no release tag was moved" in run.log and "Traceback" not in run.log
    nothing_left(run, "time.sleep(600)")
    assert released(fleet["org"]) == {repo: [] for repo in CHAIN}  # nothing published: no latest, no release tag
    assert waiter.proc.wait(timeout=120) == 0, waiter.log  # it went on once the first ended


def test_a_step_over_its_time_limit_fails_the_run_naming_the_limit(fleet) -> None:
    run = Run(fleet["root"], fleet["org"], "build", "--families-only", "--family", "family-web", env={"FLEET_STEP_TIME_LIMIT": "40"})
    code = run.proc.wait(timeout=600)
    assert code == 8, run.log
    assert "family-web: stopped after its time limit of 40s; if it needs longer, raise time_limit_minutes in families/family-web.toml" in run.log
    assert "no tag was moved" in run.log
    nothing_left(run, "time.sleep(600)")
    assert released(fleet["org"]) == {repo: [] for repo in CHAIN}


def test_sigint_to_the_process_alone_during_a_build_cancels_the_build(fleet) -> None:
    fleet["web"].write_text(fleet["original"] + SLEEPING_SETUP)
    commit_all(fleet["root"], "a builder step that hangs")
    run = Run(fleet["root"], fleet["org"], "build", "--families-only", "--family", "family-web")
    until(lambda: processes("sleep 601"), 600, "hanging builder step inside BuildKit", run)
    code, seconds = run.stop(signal.SIGINT)
    assert code == 130 and seconds < 10, (code, seconds, run.log[-2000:])
    assert "stopped by SIGINT: cancelled 1 image(s) (family-web)" in run.log
    nothing_left(run, "sleep 601")  # BuildKit cancelled the RUN: the client that asked for it is gone
    assert not processes(f"--org {fleet['org']}") and not processes("buildx build")
    assert released(fleet["org"]) == {repo: [] for repo in CHAIN}


def test_an_engine_that_stops_during_a_build_fails_the_run_naming_the_engine(fleet) -> None:
    run = Run(fleet["root"], fleet["org"], "build", "--families-only", "--family", "family-web")  # the hanging builder step is still there
    until(lambda: processes("sleep 601"), 600, "hanging builder step inside BuildKit", run)
    os.kill(int(Path("/var/run/docker.pid").read_text()), signal.SIGTERM)  # the engine stops, as a service stop or a crash would
    code = run.proc.wait(timeout=120)
    assert code == 8, run.log
    assert "family-web: failed: the Docker engine stopped answering during build of" in run.log
    assert "The next run starts it again" in run.log and "no tag was moved" in run.log and "Traceback" not in run.log
    assert released(fleet["org"]) == {repo: [] for repo in CHAIN}
    # A stopped engine leaves its build's RUN processes behind (runc's parent is gone): not the
    # toolkit's to end, but this test's to clean up.
    for pid in processes("/tmp/builder-setup.sh") + processes("sleep 601"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_the_rerun_starts_the_engine_again_resumes_from_what_was_pushed_and_publishes(fleet) -> None:
    fleet["web"].write_text(fleet["original"])
    commit_all(fleet["root"], "nothing hangs")
    run = Run(fleet["root"], fleet["org"], "build", "--families-only", "--family", "family-web")
    assert run.proc.wait(timeout=900) == 0, run.log
    assert "4 images in" in run.log and "1 built, 3 unchanged" in run.log
    assert all(tags(fleet["org"], "latest").values())
    assert docker.version().server is not None  # the engine answers again for the tests after these
