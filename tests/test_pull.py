"""The refresh workflow's last step on a real git repository and the GitHub stand-in: the moved
locks become one commit on one branch and one pull request; the token goes nowhere else."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from buildtool.adapters.github import PullRequests
from buildtool.ci.pull import _auth, propose
from buildtool.core.errors import UsageError
from tests.github_standin import GitHubStandIn

TOKEN = "ghs_test-token-0123456789"
REPO = "owner/fleet"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path, real_subprocess: None) -> Path:
    """A clone of a bare 'origin' holding one commit with a lock file, on main."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(origin)], check=True)
    root = tmp_path / "work"
    subprocess.run(["git", "init", "--quiet", "-b", "main", str(root)], check=True)
    (root / "lockfiles").mkdir()
    (root / "lockfiles" / "family-web.txt").write_text("anyio==4.4.0\n")
    (root / "README.md").write_text("fleet\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "start")
    git(root, "remote", "add", "origin", str(origin))
    git(root, "push", "--quiet", "origin", "main")
    return root


def _propose(root: Path, standin: GitHubStandIn, *, body: str = "summary", **kw: str):
    api = PullRequests(standin.url, REPO, TOKEN)
    args = {"branch": "fleet/refresh", "base": "main", "remote": "origin", "server_url": "https://github.com"} | kw
    return propose(root, title="Refresh the locks", body=body, token=TOKEN, api=api, **args)


def test_moved_locks_become_one_commit_and_one_pull_request(checkout: Path) -> None:
    origin = checkout.parent / "origin.git"
    with GitHubStandIn(TOKEN) as standin:
        (checkout / "lockfiles" / "family-web.txt").write_text("anyio==4.4.1\n")
        (checkout / "README.md").write_text("edited by something else\n")  # not a lock: not proposed
        first = _propose(checkout, standin, body="anyio 4.4.0 -> 4.4.1: CVE-TEST")
        assert (first.action, first.files) == ("opened", ("lockfiles/family-web.txt",))
        assert git(origin, "show", "fleet/refresh:lockfiles/family-web.txt") == "anyio==4.4.1"
        assert git(origin, "rev-list", "--count", "main..fleet/refresh") == "1"
        assert "README.md" not in git(origin, "show", "--name-only", "--format=", "fleet/refresh")

        # The next day's refresh: the branch is made again from main, the same pull request updated.
        git(checkout, "checkout", "--quiet", "main")
        (checkout / "lockfiles" / "family-web.txt").write_text("anyio==4.5.0\n")
        second = _propose(checkout, standin, body="anyio 4.4.0 -> 4.5.0")
        assert (second.action, second.number) == ("updated", first.number)
        assert git(origin, "rev-list", "--count", "main..fleet/refresh") == "1"
        assert git(origin, "show", "fleet/refresh:lockfiles/family-web.txt") == "anyio==4.5.0"
        methods = [(r["method"], r["authorized"]) for r in standin.requests]
        assert methods == [("GET", True), ("POST", True), ("GET", True), ("PATCH", True)]
        assert standin.requests[1]["body"]["body"] == "anyio 4.4.0 -> 4.4.1: CVE-TEST"
        assert standin.requests[3]["body"]["body"] == "anyio 4.4.0 -> 4.5.0"


def test_nothing_moved_proposes_nothing(checkout: Path) -> None:
    with GitHubStandIn(TOKEN) as standin:
        assert _propose(checkout, standin).action == "none"
        assert standin.requests == []
    assert git(checkout, "branch", "--show-current") == "main"


@pytest.mark.parametrize(
    ("what", "value"),
    [("branch", "--upload-pack=touch /tmp/x"), ("branch", "-b"), ("base", "main..x"), ("remote", "--exec=x"), ("remote", "https://evil.example/r")],
)
def test_option_like_names_are_refused_before_git_runs(checkout: Path, what: str, value: str) -> None:
    (checkout / "lockfiles" / "family-web.txt").write_text("anyio==4.4.1\n")
    with GitHubStandIn(TOKEN) as standin:
        with pytest.raises(UsageError, match=f"--{what}"):
            _propose(checkout, standin, **{what: value})
        assert standin.requests == []
    assert git(checkout, "branch", "--show-current") == "main"


def test_the_token_goes_only_to_the_servers_https_address(checkout: Path) -> None:
    git(checkout, "remote", "set-url", "origin", "https://github.com/owner/fleet.git")
    env = _auth(checkout, "origin", server_url="https://github.com", token=TOKEN)
    assert env["GIT_CONFIG_KEY_0"] == "http.https://github.com/.extraheader"
    assert base64.b64decode(env["GIT_CONFIG_VALUE_0"].split()[-1]).decode() == f"x-access-token:{TOKEN}"

    for url in ("https://evil.example/owner/fleet.git", "http://github.com/owner/fleet.git", "https://user:pw@github.com/owner/fleet.git",
                "https://github.com.evil.example/owner/fleet.git", "ssh://github.com/owner/fleet.git"):  # fmt: skip
        git(checkout, "remote", "set-url", "origin", url)
        with pytest.raises(UsageError, match="refusing to send it the token") as exc:
            _auth(checkout, "origin", server_url="https://github.com", token=TOKEN)
        assert TOKEN not in str(exc.value)

    # A remote that names a host the workflow's server is not, refused before anything is pushed or asked.
    git(checkout, "remote", "set-url", "origin", "https://evil.example/owner/fleet.git")
    (checkout / "lockfiles" / "family-web.txt").write_text("anyio==4.4.1\n")
    with GitHubStandIn(TOKEN) as standin:
        with pytest.raises(UsageError):
            _propose(checkout, standin)
        assert standin.requests == []
