"""A small client for the OCI distribution API: look up, read and re-tag manifests.

Tags move by PUTting an existing manifest under a new tag, which is atomic per tag and copies
no layers. Plain HTTP is used only for loopback registries; others use HTTPS, with a bearer
token from FLEET_REGISTRY_TOKEN when set.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass

from buildtool.errors import EngineError

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


class Registry:
    def __init__(self, address: str, *, token: str | None = None, timeout: float = 30) -> None:
        self.address = address
        self.scheme = "http" if is_loopback(address) else "https"
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None):
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
        resp = self._request("GET", f"{repo}/manifests/{ref}", headers={"Accept": MANIFEST_TYPES})
        if resp is None:
            return None
        with resp:
            body = resp.read()
            return Manifest(digest=resp.headers["Docker-Content-Digest"], media_type=resp.headers["Content-Type"].split(";")[0], body=body)

    def digest(self, repo: str, ref: str) -> str | None:
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
        import tarfile

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
