"""The registry client's token exchange, against a registry with token auth on 127.0.0.1 (the way
ghcr.io takes a GITHUB_TOKEN): Basic credentials to the realm, a bearer token per scope."""

from __future__ import annotations

import pytest

from buildtool.adapters.registry import Registry
from buildtool.core.errors import EngineError
from buildtool.publish.release import publish
from tests.engine.helpers import small_manifest
from tests.token_registry import token_registry

pytestmark = pytest.mark.engine


def test_the_token_exchange_pushes_tags_and_publishes(tmp_path) -> None:
    with token_registry(tmp_path, {"alice": "s3cret"}) as (address, seen):
        registry = Registry(address, user="alice", token="s3cret")
        one = small_manifest(registry, "alice/app", b"one")
        registry.put_manifest("alice/app", "id-1", one)
        assert registry.manifest("alice/app", "id-1").digest == one.digest
        moves = publish(registry, "alice", {"app": "id-1"}, "20261120-abc1234")
        assert {m.tag for m in moves} == {"20261120-abc1234", "latest"}
        assert Registry(address, user="alice", token="s3cret").digest("alice/app", "latest") == one.digest
        assert any("scope=repository%3Aalice%2Fapp%3Apull%2Cpush" in path for path in seen)  # the scope asked for

        with pytest.raises(EngineError, match=r"token exchange .* failed|HTTP 401"):
            Registry(address, user="alice", token="wrong").digest("alice/app", "latest")
        with pytest.raises(EngineError, match=r"HTTP 401|HTTP 403"):  # pull-only elsewhere: no push to bob's repository
            small_manifest(Registry(address, user="alice", token="s3cret"), "bob/app", b"x")
        with pytest.raises(EngineError, match="HTTP 401"):
            Registry(address).digest("alice/app", "latest")  # anonymous: nothing
