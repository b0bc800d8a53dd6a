"""A registry with token auth on 127.0.0.1, as ghcr.io does it: Debian's docker-registry (distribution
2.8) configured with ``auth: token:``, and a small token server that signs RS256 JWTs with a
self-signed certificate the registry trusts. A user may pull and push under ``<user>/``, and pull
elsewhere; bad credentials get 401. For tests only."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from buildtool.adapters import host
from buildtool.adapters.registry import probe
from buildtool.adapters.setup import ensure_host_packages

SERVICE = "registry.test"
ISSUER = "fleet-test-token-server"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Signer:
    def __init__(self, folder: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.bundle = folder / "cert.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]

    def token(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 1, "iat": now, "jti": secrets.token_hex(8),
                  "access": access}  # fmt: skip
        signing = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
        return signing + "." + _b64(self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256()))


def _handler(signer: Signer, users: dict[str, str], seen: list[str]):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            seen.append(self.path)
            user = None
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("basic "):
                name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                if not name or users.get(name) != password:
                    self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": 'Basic realm="token"'})
                    return
                user = name
            access = []
            for value in query.get("scope", []):
                for item in value.split():
                    kind, _, rest = item.partition(":")
                    repo, _, actions = rest.rpartition(":")
                    allowed = {"pull", "push", "delete"} if user and repo.startswith(f"{user}/") else {"pull"} if user else set()
                    granted = [a for a in actions.split(",") if a in allowed]
                    if kind == "repository" and granted:
                        access.append({"type": kind, "name": repo, "actions": granted})
            self._send(200, {"token": signer.token(user or "", access), "expires_in": 300})

        def do_POST(self) -> None:
            self._send(404, {"error": "use GET"})  # the OAuth form is optional; clients fall back to GET

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def token_registry(folder: Path, users: dict[str, str]):
    """``(address, token requests seen)`` of a token-auth registry running until the block ends."""
    ensure_host_packages(["docker-registry"])
    signer = Signer(folder)
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(signer, users, seen))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{free_port()}"
    config = folder / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n"
        f"auth:\n  token:\n    realm: http://127.0.0.1:{server.server_address[1]}/token\n    service: {SERVICE}\n"
        f"    issuer: {ISSUER}\n    rootcertbundle: {signer.bundle}\n"
    )
    daemon = host.start_detached(["docker-registry", "serve", str(config)], folder / "registry.log")
    try:
        for _ in range(100):
            if probe(address):
                break
            time.sleep(0.1)
        yield address, seen
    finally:
        daemon.terminate()
        daemon.wait(10)
        server.shutdown()
        server.server_close()


@contextmanager
def plain_registry(folder: Path):
    """A registry of its own on 127.0.0.1 (no auth), its config in a toolkit-owned folder."""
    from buildtool.adapters.files import MARKER, MARKER_TEXT

    ensure_host_packages(["docker-registry"])
    (folder / MARKER).write_text(MARKER_TEXT)
    address = f"127.0.0.1:{free_port()}"
    config = folder / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n"
    )
    host.start_detached(["docker-registry", "serve", str(config)], folder / "registry.log")
    for _ in range(100):
        if probe(address):
            break
        time.sleep(0.1)
    try:
        yield address
    finally:
        from buildtool.adapters.setup import _serving

        found = _serving(address)  # collect_garbage may have restarted it: stop whichever serves now
        if found:
            import os

            os.kill(found[0], 15)
