"""The refresh workflow's last step: the locks it moved, as one branch and one pull request.

The changed lock files are committed on ``branch`` (made again from the checked-out commit each
time, so the pull request always holds one commit: today's refresh) and force-pushed to the
remote; then the branch's one open pull request is updated, or opened. The token goes to git only
for a remote on the GitHub server's own https address (as an HTTP header in git's environment,
never on a command line), and to the API only through :class:`buildtool.adapters.github.PullRequests`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from buildtool.adapters import host
from buildtool.adapters.github import REF, PullRequests
from buildtool.core.errors import UsageError

LOCKS = "lockfiles"
REMOTE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a remote's name, never an option or a URL
AUTHOR = ("github-actions[bot]", "41898282+github-actions[bot]@users.noreply.github.com")


@dataclass(frozen=True, kw_only=True)
class Proposal:
    action: str  # "opened", "updated" or "none" (nothing moved)
    number: int = 0
    url: str = ""
    files: tuple[str, ...] = ()


def changed_locks(root: Path) -> list[str]:
    """The lock files the working tree changed, added or removed."""
    out = host.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all", "--", LOCKS]).stdout
    return sorted(line[3:] for line in out.splitlines() if line[3:])


def _auth(root: Path, remote: str, *, server_url: str, token: str) -> dict[str, str]:
    """git's environment for pushing to ``remote``: the token as an extra header for a remote on
    the server's https address; nothing for a local path; a refusal for anything else."""
    url = host.run(["git", "-C", str(root), "remote", "get-url", remote]).stdout.strip()
    server = urlsplit(server_url)
    target = urlsplit(url)
    if not target.scheme:  # a folder on this machine: no credentials
        return {}
    if server.scheme != "https" or target.scheme != "https" or target.netloc != server.netloc or target.username or target.password:
        raise UsageError(f"the remote {remote!r} ({target.scheme}://{target.hostname}) is not on the GitHub server {server_url!r} over https; "
                         "refusing to send it the token")  # fmt: skip
    header = "AUTHORIZATION: basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{server.scheme}://{server.netloc}/.extraheader", "GIT_CONFIG_VALUE_0": header}


def propose(root: Path, *, branch: str, base: str, title: str, body: str, remote: str, server_url: str, token: str, api: PullRequests) -> Proposal:
    """Commit the changed locks on ``branch``, push it, open or update its pull request."""
    for what, value, pattern in (("--branch", branch, REF), ("--base", base, REF), ("--remote", remote, REMOTE)):
        if not pattern.fullmatch(value):
            chars = "letters, digits, '.', '_', '-'" + (", '/'" if pattern is REF else "")
            raise UsageError(f"pull-request {what} {value[:120]!r} is not a plain name ({chars}); give one git cannot read as an option or a URL")
    files = changed_locks(root)
    if not files:
        return Proposal(action="none")
    env = _auth(root, remote, server_url=server_url, token=token)
    git = ["git", "-C", str(root), "-c", f"user.name={AUTHOR[0]}", "-c", f"user.email={AUTHOR[1]}", "-c", "commit.gpgsign=false"]
    host.run([*git, "checkout", "-B", branch])
    host.run([*git, "add", "--all", "--", LOCKS])
    host.run([*git, "commit", "--quiet", "-m", title, "-m", body[:4000]])
    host.run([*git, "push", "--force", "--quiet", remote, f"HEAD:refs/heads/{branch}"], env=env, timeout=300)
    pr = api.open_or_update(branch=branch, base=base, title=title, body=body)
    return Proposal(action=pr.action, number=pr.number, url=pr.url, files=tuple(files))
