"""The registry client's token exchange, against a registry with token auth on 127.0.0.1 (the way
ghcr.io takes a GITHUB_TOKEN): Basic credentials to the realm, a bearer token per scope."""

from __future__ import annotations

import json

import pytest

from buildtool.adapters.registry import OCI_MANIFEST, Manifest, Registry, digest_of
from buildtool.core.errors import EngineError
from buildtool.publish.release import publish
from tests.token_registry import token_registry

pytestmark = pytest.mark.engine


def manifest(registry: Registry, repo: str, content: bytes) -> Manifest:
    config = registry.push_blob(repo, b"{}")
    layer = registry.push_blob(repo, content)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                       "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": len(content)}]}).encode()  # fmt: skip
    return Manifest(digest=digest_of(body), media_type=OCI_MANIFEST, body=body)


def test_the_token_exchange_pushes_tags_and_publishes(tmp_path) -> None:
    with token_registry(tmp_path, {"alice": "s3cret"}) as (address, seen):
        registry = Registry(address, user="alice", token="s3cret")
        one = manifest(registry, "alice/app", b"one")
        registry.put_manifest("alice/app", "id-1", one)
        assert registry.manifest("alice/app", "id-1").digest == one.digest
        moves = publish(registry, "alice", {"app": "id-1"}, "20261120-abc1234")
        assert {m.tag for m in moves} == {"20261120-abc1234", "latest"}
        assert Registry(address, user="alice", token="s3cret").digest("alice/app", "latest") == one.digest
        assert any("scope=repository%3Aalice%2Fapp%3Apull%2Cpush" in path for path in seen)  # the scope asked for

        with pytest.raises(EngineError, match=r"token exchange .* failed|HTTP 401"):
            Registry(address, user="alice", token="wrong").digest("alice/app", "latest")
        with pytest.raises(EngineError, match=r"HTTP 401|HTTP 403"):  # pull-only elsewhere: no push to bob's repository
            manifest(Registry(address, user="alice", token="s3cret"), "bob/app", b"x")
        with pytest.raises(EngineError, match="HTTP 401"):
            Registry(address).digest("alice/app", "latest")  # anonymous: nothing
