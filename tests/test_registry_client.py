"""The registry client against scripted registries on 127.0.0.1: credentials go to the registry's
own origin alone, content is checked against its digest, and answers are bounded. A second
listener on another port plays "somewhere else"."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from buildtool.adapters import content
from buildtool.adapters import registry as reg
from buildtool.adapters import registry as registry_module
from buildtool.adapters.registry import Registry
from buildtool.core.errors import EngineError


class Scripted:
    """A listener answering each (method, path without query) from ``routes``; records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str, str]] = []  # method, path, Authorization
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                scripted.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
                status, headers, body = scripted.routes.get((self.command, self.path.split("?")[0]), (404, {}, b"{}"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@contextmanager
def two_listeners() -> Iterator[tuple[Scripted, Scripted]]:
    a, b = Scripted(), Scripted()
    try:
        yield a, b
    finally:
        for listener in (a, b):
            listener.server.shutdown()
            listener.server.server_close()


def test_a_link_to_another_origin_is_refused_and_gets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with two_listeners() as (a, b):
        link = f'<http://{b.address}/v2/r/tags/list?n=1000&last=x>; rel="next"'
        a.routes[("GET", "/v2/r/tags/list")] = (200, {"Link": link, "Content-Type": "application/json"}, b'{"tags": ["t1"]}')
        client = Registry(a.address, token="s3cret")
        client._auth[client._scope("r")] = "Basic czNjcmV0"  # signed in already
        with pytest.raises(EngineError, match="not the registry"):
            client.tags("r")
        assert b.seen == []


def test_an_upload_location_elsewhere_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with two_listeners() as (a, b):
        a.routes[("POST", "/v2/r/blobs/uploads/")] = (202, {"Location": f"http://{b.address}/upload/1"}, b"")
        client = Registry(a.address, token="s3cret")
        client._auth[client._scope("r", True)] = "Basic czNjcmV0"
        with pytest.raises(EngineError, match="not the registry"):
            client.push_blob("r", b"data")
        assert b.seen == []


@pytest.mark.parametrize("realm", ["http://evil.example/token", "https://evil.example/token", "http://localhost:{port}/token",
                                   "http://127.0.0.2:{port}/token", "ftp://127.0.0.1/token", "http://u:p@127.0.0.1:{port}/token"])  # fmt: skip
def test_a_token_realm_off_the_registrys_host_gets_no_credentials(realm: str) -> None:
    with two_listeners() as (a, b):
        challenge = {"WWW-Authenticate": f'Bearer realm="{realm.format(port=b.server.server_address[1])}",service="registry.test"'}
        a.routes[("GET", "/v2/r/manifests/latest")] = (401, challenge, b"{}")
        b.routes[("GET", "/token")] = (200, {}, b'{"token": "t"}')
        with pytest.raises(EngineError, match=r"token service .* refused, no credentials sent"):
            Registry(a.address, token="s3cret").manifest("r", "latest")
        assert b.seen == []


def test_a_token_realm_on_the_registrys_host_gets_the_credentials() -> None:
    with two_listeners() as (a, b):
        challenge = {"WWW-Authenticate": f'Bearer realm="http://{b.address}/token",service="registry.test"'}
        a.routes[("GET", "/v2/r/tags/list")] = (401, challenge, b"{}")
        b.routes[("GET", "/token")] = (200, {}, b'{"token": "t"}')
        with pytest.raises(EngineError, match="HTTP 401"):  # the stand-in keeps refusing; what matters is who was asked
            Registry(a.address, token="s3cret").tags("r")
        assert [s[2].split()[0] for s in b.seen] == ["Basic"]
        assert a.seen[-1][2] == "Bearer t"


def test_content_that_does_not_match_its_digest_is_refused() -> None:
    with two_listeners() as (a, _):
        body = json.dumps({"mediaType": reg.OCI_MANIFEST, "layers": []}).encode()
        wanted = "sha256:" + hashlib.sha256(b"something else").hexdigest()
        a.routes[("GET", f"/v2/r/manifests/{wanted}")] = (200, {"Content-Type": reg.OCI_MANIFEST}, body)
        a.routes[("GET", f"/v2/r/blobs/{wanted}")] = (200, {}, b"not it")
        client = Registry(a.address)
        with pytest.raises(EngineError, match="digest .* not " + wanted):
            client.manifest("r", wanted)
        with pytest.raises(EngineError, match="not " + wanted):
            client.blob("r", wanted)
        good = "sha256:" + hashlib.sha256(body).hexdigest()
        a.routes[("GET", f"/v2/r/manifests/{good}")] = (200, {"Content-Type": reg.OCI_MANIFEST}, body)
        assert client.manifest("r", good).digest == good
        a.routes[("GET", "/v2/r/manifests/v1")] = (200, {"Content-Type": reg.OCI_MANIFEST, "Docker-Content-Digest": wanted}, body)
        with pytest.raises(EngineError, match=r"not the .* the registry named"):
            client.manifest("r", "v1")


def test_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    with two_listeners() as (a, _):
        a.routes[("GET", "/v2/r/manifests/big")] = (200, {"Content-Type": reg.OCI_MANIFEST}, b" " * (content.MAX_MANIFEST + 1))
        client = Registry(a.address)
        with pytest.raises(EngineError, match="larger than"):
            client.manifest("r", "big")
        monkeypatch.setattr(registry_module, "MAX_PAGES", 5)
        endless = '</v2/r/tags/list?n=1000&last=t>; rel="next"'
        a.routes[("GET", "/v2/r/tags/list")] = (200, {"Link": endless}, b'{"tags": ["t"]}')
        with pytest.raises(EngineError, match="past 5 pages"):
            client.tags("r")
        assert len([s for s in a.seen if s[1].startswith("/v2/r/tags/list")]) == 5
