"""The one module that speaks HTTP to registries: a small client for the OCI distribution API.

Tags move by PUTting an existing manifest under a new tag, which is atomic per tag and copies
no layers. Plain HTTP is used only for loopback registries; others use HTTPS, with a bearer
token when one is given. A :class:`Registry` lives for one run and fetches each manifest once:
manifests by digest never change, and a tag changes during the run only by this client's own
:meth:`Registry.put_manifest`.
"""

from __future__ import annotations

import ipaddress
import json
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass

from buildtool.core.errors import EngineError

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    @property
    def data(self) -> dict:
        return json.loads(self.body)


def probe(address: str, timeout: float = 2) -> bool:
    """True when ``http://address/v2/`` answers (401 included: a registry that wants credentials).
    Loopback only, and never through a proxy; used to see whether a local registry runs."""
    if not is_loopback(address):
        return False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{address}/v2/", timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


class Registry:
    def __init__(self, address: str, *, token: str | None = None, timeout: float = 30) -> None:
        self.address = address
        self.scheme = "http" if is_loopback(address) else "https"
        self.token = token
        self.timeout = timeout
        self._manifests: dict[tuple[str, str], Manifest | None] = {}
        self.requests = 0  # requests made, for the bench and tests

    def _request(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None):
        self.requests += 1
        req = urllib.request.Request(f"{self.scheme}://{self.address}/v2/{path}", data=body, method=method, headers=headers or {})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise EngineError(f"registry {self.address}: {method} {path} failed with HTTP {exc.code}: {exc.read()[:300]!r}") from exc
        except OSError as exc:
            raise EngineError(f"registry {self.address} is not reachable ({exc}); start it or set FLEET_REGISTRY") from exc

    def ping(self) -> bool:
        try:
            return self._request("GET", "") is not None
        except EngineError:
            return False

    def manifest(self, repo: str, ref: str) -> Manifest | None:
        """The manifest ``repo:ref`` (a tag or a digest), or None; fetched once per run."""
        key = (repo, ref)
        if key not in self._manifests:
            resp = self._request("GET", f"{repo}/manifests/{ref}", headers={"Accept": MANIFEST_TYPES})
            if resp is None:
                self._manifests[key] = None
            else:
                with resp:
                    body = resp.read()
                    media_type = resp.headers["Content-Type"].split(";")[0]
                    self._remember(repo, ref, Manifest(digest=resp.headers["Docker-Content-Digest"], media_type=media_type, body=body))
        return self._manifests[key]

    def digest(self, repo: str, ref: str) -> str | None:
        """The digest behind ``repo:ref``, or None; a manifest already fetched answers without a request."""
        if (repo, ref) in self._manifests:
            m = self._manifests[(repo, ref)]
            return m.digest if m else None
        resp = self._request("HEAD", f"{repo}/manifests/{ref}", headers={"Accept": MANIFEST_TYPES})
        if resp is None:
            return None
        with resp:
            return resp.headers["Docker-Content-Digest"]

    def put_manifest(self, repo: str, tag: str, manifest: Manifest) -> None:
        resp = self._request("PUT", f"{repo}/manifests/{tag}", body=manifest.body, headers={"Content-Type": manifest.media_type})
        if resp is None:
            raise EngineError(f"registry {self.address}: cannot tag {repo}:{tag} (the repository is unknown)")
        resp.close()
        self._remember(repo, tag, manifest)

    def _remember(self, repo: str, ref: str, manifest: Manifest) -> None:
        self._manifests[(repo, ref)] = manifest
        self._manifests[(repo, manifest.digest)] = manifest

    def image_manifest(self, repo: str, ref: str, platform: str = "linux/amd64") -> Manifest | None:
        """The single-platform manifest behind ``ref`` (following an index to ``platform``)."""
        m = self.manifest(repo, ref)
        if m is None or m.media_type not in INDEX_TYPES:
            return m
        os_, arch = platform.split("/")
        for entry in m.data.get("manifests", []):
            p = entry.get("platform", {})
            if p.get("os") == os_ and p.get("architecture") == arch:
                return self.manifest(repo, entry["digest"])
        return None

    def layer_sizes(self, repo: str, ref: str) -> list[int]:
        """Compressed sizes of the image's layer blobs, bottom layer first."""
        m = self.image_manifest(repo, ref)
        return [layer["size"] for layer in m.data.get("layers", [])] if m else []

    def config(self, repo: str, ref: str) -> dict:
        m = self.image_manifest(repo, ref)
        if m is None:
            return {}
        resp = self._request("GET", f"{repo}/blobs/{m.data['config']['digest']}")
        if resp is None:
            return {}
        with resp:
            return json.loads(resp.read())

    def uncompressed_size(self, repo: str, digest: str) -> int:
        """Bytes of a layer blob once decompressed (gzip layers are streamed, not stored)."""
        resp = self._request("GET", f"{repo}/blobs/{digest}")
        if resp is None:
            return 0
        total = 0
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
        with resp:
            while chunk := resp.read(1 << 20):
                total += len(inflater.decompress(chunk))
        return total + len(inflater.flush())

    def layer_files(self, repo: str, digest: str) -> list[tuple[str, int]]:
        """(path, size) of every regular file in a layer blob; whiteouts as size -1."""
        resp = self._request("GET", f"{repo}/blobs/{digest}")
        if resp is None:
            return []
        out: list[tuple[str, int]] = []
        with resp, tarfile.open(fileobj=resp, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.name.rsplit("/", 1)[-1].startswith(".wh."):
                    out.append((name, -1))
                elif member.isfile():
                    out.append((name, member.size))
        return out
