"""What the registry client accepts of a registry's answers: bounded in size, and content that
matches the digest it was asked for."""

from __future__ import annotations

import hashlib
import ipaddress

from buildtool.core.errors import EngineError

# What the client reads into memory, at most: a registry's answer beyond these is refused.
MAX_MANIFEST = 4 << 20  # the OCI distribution spec's own limit for manifests
MAX_BLOB = 64 << 20  # configs, SBOMs, scan reports; layers are streamed, never held
MAX_TOKEN = 1 << 20
MAX_PAGES = 1000  # tag list pages followed (each up to 1000 tags)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_bounded(resp, limit: int, what: str) -> bytes:
    """The whole body of ``resp``, refused beyond ``limit`` bytes."""
    data = resp.read(limit + 1)
    if len(data) > limit:
        raise EngineError(f"{what}: the registry's answer is larger than {limit} bytes; refused")
    return data


def verified(data: bytes, digest: str, what: str) -> bytes:
    """``data`` if its digest is ``digest`` (sha256); content that does not match what was asked is refused."""
    if digest.startswith("sha256:") and digest_of(data) != digest:
        raise EngineError(f"{what}: the registry answered with content whose digest is {digest_of(data)}, not {digest}; refused")
    return data


class Digesting:
    """A streamed blob that checks its digest once read to its end (see :meth:`Registry.layer_files`)."""

    def __init__(self, resp, digest: str, what: str) -> None:
        self.resp, self.digest, self.what = resp, digest, what
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.resp.read(size)
        self.hash.update(chunk)
        return chunk

    def finish(self) -> None:
        while self.read(1 << 20):
            pass
        if self.digest.startswith("sha256:") and "sha256:" + self.hash.hexdigest() != self.digest:
            raise EngineError(f"{self.what}: the registry answered with content whose digest is not {self.digest}; refused")


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
