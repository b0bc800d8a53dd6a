"""Retention on ghcr.io, whose registry API refuses deletes (HTTP 405): manifests are deleted as
package versions through GitHub's Packages API, here its stand-in on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildtool import pipeline
from buildtool import settings as run_settings
from buildtool.model.load import load_fleet
from tests.fakes import FakeRegistry
from tests.github_standin import GitHubStandIn

TOKEN = "ghs_standin"


class Ghcr(FakeRegistry):
    def delete(self, repo: str, digest: str) -> bool:
        raise AssertionError("ghcr.io answers the registry API's delete with HTTP 405; it must not be used")


@pytest.mark.parametrize("kind", ["orgs", "users"])
def test_prune_on_ghcr_deletes_package_versions_through_the_packages_api(fleet_dir: Path, tmp_path: Path, kind: str) -> None:
    registry = Ghcr()
    releases = [f"202611{day:02d}-{day:07x}" for day in range(1, 8)]  # seven releases of base-python, oldest first
    digests = {tag: registry.add("acme/base-python", tag, tag).digest for tag in releases}
    registry.entries[("acme/base-python", "latest")] = registry.entries[("acme/base-python", releases[-1])]
    registry.entries[("acme/base-python", "prev")] = registry.entries[("acme/base-python", releases[-2])]
    with GitHubStandIn(TOKEN) as github:
        for tag in releases:
            github.add_version(kind, "acme", "base-python", digests[tag], [tag])
        github.add_version(kind, "acme", "family-web", "sha256:" + "e" * 64, ["something-else"])
        fleet = load_fleet(fleet_dir)
        env = {"FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_PIP_CA": "/ca.crt", "FLEET_REGISTRY": "ghcr.io", "FLEET_ORG": "acme",
               "FLEET_REGISTRY_TOKEN": TOKEN, "GITHUB_API_URL": github.url}  # fmt: skip
        lines = pipeline.prune(run_settings.from_sources(fleet, env), fleet, registry=registry, local=False)
        deletes = [r for r in github.requests if r["method"] == "DELETE"]
        left = {v["name"] for v in github.packages[(kind, "acme", "base-python")]}
    assert left == {digests[t] for t in releases[-5:]}  # the five newest releases (latest and prev among them) stay
    assert len(deletes) == 2 and all(r["authorized"] and r["path"].startswith(f"/{kind}/acme/packages/container/base-python/versions/") for r in deletes)
    assert any("acme/base-python: 2 image(s) deleted" in line for line in lines)


def test_prune_on_ghcr_without_a_token_deletes_nothing(fleet_dir: Path, tmp_path: Path) -> None:
    from buildtool.adapters.github import GitHubError

    fleet = load_fleet(fleet_dir)
    env = {"FLEET_STATE_DIR": str(tmp_path / "state"), "FLEET_PIP_CA": "/ca.crt", "FLEET_REGISTRY": "ghcr.io", "FLEET_ORG": "acme"}
    with pytest.raises(GitHubError, match="token is empty"):
        pipeline.prune(run_settings.from_sources(fleet, env), fleet, registry=Ghcr(), local=False)
