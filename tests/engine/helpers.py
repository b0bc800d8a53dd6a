"""Runs for the engine tests: the library call the command line makes, with the tests' own settings."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

from buildtool import pipeline, settings
from buildtool.adapters.files import adopt, owned_dir
from buildtool.adapters.registry import OCI_MANIFEST, Manifest, Registry, digest_of
from buildtool.core.errors import ToolError
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from tests.conftest import REPO
from tests.fakes import QuietProgress


def state_dir() -> Path:
    """The tests' state dir: below the repository's build/ (reused between runs: bootstrapped roots
    are cached there), or FLEET_TEST_STATE_DIR. Claimed as the toolkit's before a test puts anything
    in it, as a run claims its own: on a fresh clone it does not exist yet."""
    adopt(REPO / "build")
    return owned_dir(Path(os.environ.get("FLEET_TEST_STATE_DIR", REPO / "build" / "test-state")), repo=REPO, what="tests' state dir")


def commit_all(root: Path, message: str = "a copy of the fleet") -> None:
    """Make ``root`` a git checkout with one commit of everything in it: builds label their images
    with the commit, as they do in a real checkout."""
    git = ["git", "-C", str(root), "-c", "user.name=ci", "-c", "user.email=ci@localhost", "-c", "commit.gpgsign=false"]
    if not (root / ".git").exists():
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)


def settings_for(root: Path, org: str, **env: str) -> settings.Settings:
    return settings.from_sources(load_fleet(root), {"FLEET_ORG": org, "FLEET_STATE_DIR": str(state_dir()), **env})


def run_build(run_settings: settings.Settings, *services: str, tag: str, locked: bool = False, progress: QuietProgress | None = None,
              **selection: object) -> int:  # fmt: skip
    """Build as `nox -s build` would; the exit code the command line would give."""
    fleet = load_fleet(run_settings.root)
    run_settings = dataclasses.replace(run_settings, root=fleet.root)
    try:
        plan = make_plan(fleet, services=services, **selection)
        pipeline.build(run_settings, fleet, plan, progress=progress or QuietProgress(), tag=tag, locked=locked)
    except ToolError as exc:
        print(exc.message)
        return exc.exit_code
    return 0


def small_manifest(registry: Registry, repo: str, content: bytes) -> Manifest:
    """A small image manifest (an empty config, one layer of ``content``), its blobs pushed to ``repo``."""
    config = registry.push_blob(repo, b"{}")
    layer = registry.push_blob(repo, content)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                       "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": len(content)}]}).encode()  # fmt: skip
    return Manifest(digest=digest_of(body), media_type=OCI_MANIFEST, body=body)
