"""The one module that speaks HTTP to registries: a small client for the OCI distribution API.

Tags move by PUTting an existing manifest under a new tag, which is atomic per tag and copies
no layers. Artifacts (SBOMs) are attached to an image by ``subject``, listed through the
referrers API or, where a registry has none (distribution 2.8), through the referrers tag scheme
(an index tagged ``sha256-<hex>`` of the subject). Plain HTTP is used only for loopback
registries; others use HTTPS. Authentication follows the registry's challenge: Basic, or the
token exchange (``WWW-Authenticate: Bearer realm=...``) that ghcr.io and distribution's token
auth expect, with the run's credentials. A :class:`Registry` lives for one run and fetches each
manifest once: manifests by digest never change, and a tag changes during the run only by this
client's own :meth:`Registry.put_manifest`.
"""

from __future__ import annotations

import base64
import json
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from buildtool.adapters.content import MAX_BLOB, MAX_MANIFEST, MAX_PAGES, MAX_TOKEN, Digesting, digest_of, is_loopback, read_bounded, verified
from buildtool.core.errors import EngineError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
EMPTY_CONFIG = b"{}"
KEPT_BLOB = 1 << 20  # blobs up to this size are kept for the run (configs, records)


def _opener(address: str) -> urllib.request.OpenerDirector:
    """Loopback registries are reached directly, never through a proxy from the environment."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({})) if is_loopback(address) else urllib.request.build_opener()


def probe(address: str, timeout: float = 2) -> bool:
    """True when ``http://address/v2/`` answers (401 included: a registry that wants credentials).
    Loopback only; used to see whether a local registry runs."""
    if not is_loopback(address):
        return False
    try:
        with _opener(address).open(f"http://{address}/v2/", timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


def read_manifests(registry, refs, *, at_once: int = 16) -> None:
    """Read the manifests of every (repository, reference) in ``refs`` concurrently, ``at_once``
    requests in flight; a client keeps what it read for the rest of the run."""
    refs = list(refs)
    if refs:
        with ThreadPoolExecutor(max_workers=min(at_once, len(refs))) as pool:
            list(pool.map(lambda ref: registry.manifest(*ref), refs))


@dataclass(frozen=True, kw_only=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    @property
    def data(self) -> dict:
        return json.loads(self.body)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.body)}


def artifact_manifest(artifact_type: str, *layers: dict[str, object], **fields: object) -> Manifest:
    """An OCI artifact: the empty config, its layers, and ``fields`` (a subject, annotations)."""
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type, "layers": list(layers),
            "config": {"mediaType": OCI_EMPTY, "digest": digest_of(EMPTY_CONFIG), "size": len(EMPTY_CONFIG)}, **fields}  # fmt: skip
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return Manifest(digest=digest_of(raw), media_type=OCI_MANIFEST, body=raw)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry:
    def __init__(self, address: str, *, token: str | None = None, user: str = "fleet", timeout: float = 30) -> None:
        self.address = address
        self.scheme = "http" if is_loopback(address) else "https"
        self.user = user
        self.token = token  # a password, or a token given to the token exchange (ghcr.io: GITHUB_TOKEN)
        self.timeout = timeout
        self._opener = _opener(address)
        self._manifests: dict[tuple[str, str], Manifest | None] = {}
        self._blobs: dict[tuple[str, str], bytes] = {}  # blobs up to KEPT_BLOB read: content-addressed, they never change
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self.requests = 0  # requests made, for the bench and tests

    # -- transport ---------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        """The URL of an API path, or of an address the registry gave (a Link page, an upload
        Location), which must be on the registry's own scheme, host and port: the client's
        credentials go nowhere else."""
        if not path.startswith(("http://", "https://", "/")):
            return f"{self.scheme}://{self.address}/v2/{path}"
        url = urllib.parse.urljoin(f"{self.scheme}://{self.address}/", path)
        parts = urllib.parse.urlsplit(url)
        if (parts.scheme, parts.netloc) != (self.scheme, self.address):
            raise EngineError(f"registry {self.address}: it pointed the client at {parts.scheme}://{parts.netloc}, not the registry; refused")
        return url

    def _request(self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None, scope: str = ""):
        """The response (to be closed by the caller), or None for a 404. Answers one auth challenge."""
        for attempt in (1, 2):
            self.requests += 1
            req = urllib.request.Request(self._url(path), data=body, method=method, headers=headers or {})  # the registry's origin
            if scope in self._auth:
                req.add_unredirected_header("Authorization", self._auth[scope])
            try:
                return self._opener.open(req, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and attempt == 1 and self._authenticate(exc.headers.get("WWW-Authenticate", ""), scope):
                    continue
                detail = exc.read()[:300]
                hint = "; check FLEET_REGISTRY_USER/FLEET_REGISTRY_TOKEN" if exc.code in (401, 403) else ""
                raise EngineError(f"registry {self.address}: {method} {path} failed with HTTP {exc.code}: {detail!r}{hint}") from exc
            except OSError as exc:
                raise EngineError(f"registry {self.address} is not reachable ({exc}); start it or set FLEET_REGISTRY") from exc
        return None  # pragma: no cover - the loop returns or raises

    def _authenticate(self, header: str, scope: str) -> bool:
        """Answer a 401 challenge: Basic with the credentials, or a token from the Bearer realm."""
        scheme, params = _challenge(header)
        basic = "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode() if self.token else ""
        if scheme == "basic" and basic:
            self._auth[scope] = basic
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        realm = urllib.parse.urlsplit(params["realm"])
        own_host = urllib.parse.urlsplit(f"//{self.address}").hostname
        secure = realm.scheme == "https" or (realm.scheme == "http" and is_loopback(realm.netloc))
        if not secure or realm.hostname != own_host or realm.query or realm.fragment or realm.username:
            raise EngineError(f"registry {self.address}: its token service {params['realm']!r} is not https on the registry's own host "
                              "(http only on loopback); refused, no credentials sent")  # fmt: skip
        query = {"service": params.get("service", "")}
        if scope or params.get("scope"):
            query["scope"] = scope or params["scope"]
        req = urllib.request.Request(f"{params['realm']}?{urllib.parse.urlencode(query)}")
        if basic:
            req.add_unredirected_header("Authorization", basic)
        self.requests += 1
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                answer = json.loads(read_bounded(resp, MAX_TOKEN, f"registry {self.address}: the token exchange"))
        except (urllib.error.HTTPError, OSError, ValueError) as exc:
            raise EngineError(f"registry {self.address}: the token exchange at {params['realm']} failed ({exc}); check FLEET_REGISTRY_TOKEN") from exc
        token = answer.get("token") or answer.get("access_token")
        if not token:
            return False
        self._auth[scope] = f"Bearer {token}"
        return True

    @staticmethod
    def _scope(repo: str, push: bool = False) -> str:
        return f"repository:{repo}:{'pull,push' if push else 'pull'}"

    def ping(self) -> bool:
        try:
            return self._request("GET", "") is not None
        except EngineError:
            return False

    # -- manifests and tags ------------------------------------------------------------------

    def manifest(self, repo: str, ref: str) -> Manifest | None:
        """The manifest ``repo:ref`` (a tag or a digest), or None; fetched once per run."""
        key = (repo, ref)
        if key not in self._manifests:
            resp = self._request("GET", f"{repo}/manifests/{ref}", headers={"Accept": MANIFEST_TYPES}, scope=self._scope(repo))
            if resp is None:
                self._manifests[key] = None
            else:
                what = f"registry {self.address}: {repo}:{ref}"
                with resp:
                    body = verified(read_bounded(resp, MAX_MANIFEST, what), ref, what)
                    media_type = resp.headers["Content-Type"].split(";")[0]
                    said = resp.headers.get("Docker-Content-Digest")
                    if said and said.startswith("sha256:") and said != digest_of(body):
                        raise EngineError(f"{what}: the manifest's digest is {digest_of(body)}, not the {said} the registry named; refused")
                    self._remember(repo, ref, Manifest(digest=digest_of(body), media_type=media_type, body=body))
        return self._manifests[key]

    def digest(self, repo: str, ref: str, *, fresh: bool = False) -> str | None:
        """The digest behind ``repo:ref``, or None; a manifest already fetched answers without a
        request unless ``fresh`` (a tag another client may have moved)."""
        if (repo, ref) in self._manifests and not fresh:
            m = self._manifests[(repo, ref)]
            return m.digest if m else None
        if fresh:  # what this client read of the tag may be stale now: read it again when asked
            self._manifests.pop((repo, ref), None)
        resp = self._request("HEAD", f"{repo}/manifests/{ref}", headers={"Accept": MANIFEST_TYPES}, scope=self._scope(repo))
        if resp is None:
            return None
        with resp:
            return resp.headers["Docker-Content-Digest"]

    def put_manifest(self, repo: str, tag: str, manifest: Manifest) -> None:
        resp = self._request("PUT", f"{repo}/manifests/{tag}", body=manifest.body, headers={"Content-Type": manifest.media_type}, scope=self._scope(repo, True))
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

    def tags(self, repo: str) -> list[str]:
        """Every tag of ``repo`` (following the API's pages); [] for an unknown repository."""
        out: list[str] = []
        path = f"{repo}/tags/list?n=1000"
        for _ in range(MAX_PAGES):
            resp = self._request("GET", path, scope=self._scope(repo))
            if resp is None:
                return out
            with resp:
                out += json.loads(read_bounded(resp, MAX_MANIFEST, f"registry {self.address}: tags of {repo}")).get("tags") or []
                link = resp.headers.get("Link", "")
            match = re.match(r"<([^>]+)>", link)
            if not match:
                return out
            path = match.group(1)  # checked against the registry's origin by _url
        raise EngineError(f"registry {self.address}: the tag list of {repo} goes on past {MAX_PAGES} pages; refused")

    def delete(self, repo: str, digest: str) -> bool:
        """Delete the manifest ``digest`` (and with it every tag that points at it); False if absent.
        Registries that do not allow deletes answer with an error naming the registry."""
        resp = self._request("DELETE", f"{repo}/manifests/{digest}", scope=f"repository:{repo}:delete")
        for key in [k for k, m in self._manifests.items() if k[0] == repo and (k[1] == digest or (m and m.digest == digest))]:
            del self._manifests[key]
        if resp is None:
            return False
        resp.close()
        return True

    # -- blobs -------------------------------------------------------------------------------

    def blob(self, repo: str, digest: str) -> bytes | None:
        """A small blob (a config, an SBOM, a scan report), checked against its digest; read once per run."""
        if (repo, digest) in self._blobs:
            return self._blobs[(repo, digest)]
        resp = self._request("GET", f"{repo}/blobs/{digest}", scope=self._scope(repo))
        if resp is None:
            return None
        what = f"registry {self.address}: {repo}@{digest}"
        with resp:
            data = verified(read_bounded(resp, MAX_BLOB, what), digest, what)
        if len(data) <= KEPT_BLOB:
            self._blobs[(repo, digest)] = data
        return data

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repo`` (monolithic upload; skipped when present); its digest."""
        digest = digest_of(data)
        scope = self._scope(repo, True)
        head = self._request("HEAD", f"{repo}/blobs/{digest}", scope=scope)
        if head is not None:
            head.close()
            return digest
        resp = self._request("POST", f"{repo}/blobs/uploads/", body=b"", scope=scope)
        if resp is None:
            raise EngineError(f"registry {self.address}: cannot start an upload to {repo}")
        with resp:
            location = self._url(resp.headers["Location"])  # the registry's own address, or refused
        sep = "&" if "?" in location else "?"
        octets = {"Content-Type": "application/octet-stream"}
        put = self._request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", body=data, headers=octets, scope=scope)
        if put is None:
            raise EngineError(f"registry {self.address}: the upload of {digest} to {repo} was lost")
        put.close()
        return digest

    def layer_sizes(self, repo: str, ref: str) -> list[int]:
        """Compressed sizes of the image's layer blobs, bottom layer first."""
        m = self.image_manifest(repo, ref)
        return [layer["size"] for layer in m.data.get("layers", [])] if m else []

    def config(self, repo: str, ref: str) -> dict:
        m = self.image_manifest(repo, ref)
        data = self.blob(repo, m.data["config"]["digest"]) if m else None
        return json.loads(data) if data else {}

    def uncompressed_size(self, repo: str, digest: str) -> int:
        """Bytes of a layer blob once decompressed (gzip layers are streamed, not stored)."""
        resp = self._request("GET", f"{repo}/blobs/{digest}", scope=self._scope(repo))
        if resp is None:
            return 0
        total = 0
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
        with resp:
            stream = Digesting(resp, digest, f"registry {self.address}: {repo}@{digest}")
            while chunk := stream.read(1 << 20):
                total += len(inflater.decompress(chunk))
            stream.finish()
        return total + len(inflater.flush())

    def layer_files(self, repo: str, digest: str) -> list[tuple[str, int]]:
        """(path, size) of every regular file in a layer blob; whiteouts as size -1."""
        resp = self._request("GET", f"{repo}/blobs/{digest}", scope=self._scope(repo))
        if resp is None:
            return []
        out: list[tuple[str, int]] = []
        stream = Digesting(resp, digest, f"registry {self.address}: {repo}@{digest}")
        with resp:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.name.rsplit("/", 1)[-1].startswith(".wh."):
                        out.append((name, -1))
                    elif member.isfile():
                        out.append((name, member.size))
            stream.finish()
        return out

    # -- artifacts attached to an image ------------------------------------------------------

    def attach(self, repo: str, subject: Manifest, *, artifact_type: str, data: bytes, annotations: dict[str, str] | None = None) -> Manifest:
        """Push ``data`` as an artifact whose subject is ``subject`` and list it as a referrer."""
        self.push_blob(repo, EMPTY_CONFIG)
        layer = {"mediaType": artifact_type, "digest": self.push_blob(repo, data), "size": len(data)}
        notes = dict(sorted((annotations or {}).items()))
        artifact = artifact_manifest(artifact_type, layer, subject=subject.descriptor(), annotations=notes)
        self.put_manifest(repo, artifact.digest, artifact)
        if not self._has_referrers_api(repo, subject.digest):
            self._add_to_referrers_tag(repo, subject.digest, {**artifact.descriptor(), "artifactType": artifact_type, "annotations": notes})
        return artifact

    def referrers(self, repo: str, subject_digest: str, artifact_type: str = "") -> list[dict]:
        """Descriptors of the artifacts whose subject is ``subject_digest`` (API, else the tag scheme)."""
        resp = self._request("GET", f"{repo}/referrers/{subject_digest}", headers={"Accept": OCI_INDEX}, scope=self._scope(repo))
        if resp is not None and resp.headers.get("Content-Type", "").startswith(OCI_INDEX):
            with resp:
                found = json.loads(read_bounded(resp, MAX_MANIFEST, f"registry {self.address}: referrers of {repo}@{subject_digest}")).get("manifests", [])
        else:
            if resp is not None:
                resp.close()
            index = self.manifest(repo, _referrers_tag(subject_digest))
            found = index.data.get("manifests", []) if index else []
        return [d for d in found if not artifact_type or d.get("artifactType") == artifact_type]

    def _has_referrers_api(self, repo: str, digest: str) -> bool:
        resp = self._request("GET", f"{repo}/referrers/{digest}", headers={"Accept": OCI_INDEX}, scope=self._scope(repo))
        if resp is None:
            return False
        with resp:
            return resp.headers.get("Content-Type", "").startswith(OCI_INDEX)

    def _add_to_referrers_tag(self, repo: str, subject_digest: str, descriptor: dict) -> None:
        tag = _referrers_tag(subject_digest)
        self._manifests.pop((repo, tag), None)  # another run may have added a referrer meanwhile
        current = self.manifest(repo, tag)
        entries = [d for d in (current.data.get("manifests", []) if current else []) if d.get("digest") != descriptor["digest"]]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*entries, descriptor]}
        raw = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
        self.put_manifest(repo, tag, Manifest(digest=digest_of(raw), media_type=OCI_INDEX, body=raw))


def _referrers_tag(digest: str) -> str:
    """The referrers tag scheme of the OCI distribution spec: ``sha256:abc...`` -> ``sha256-abc...``."""
    return digest.replace(":", "-", 1)
