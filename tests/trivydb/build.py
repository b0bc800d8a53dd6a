"""Build the test advisory database: a Trivy database (schema 2) written from advisories.json.

Trivy's public database cannot be downloaded on these machines, so the tests build one offline:
writer.go (standard library and bbolt) is compiled with Debian's Go in GOPATH mode (golang-go and
golang-github-coreos-bbolt-dev, installed when missing; no module proxy is asked) and writes
``OUT/db/trivy.db`` and ``OUT/db/metadata.json``, the same bytes for the same input.

    python -m tests.trivydb.build OUT   (nox -s testdb)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.setup import ensure_host_packages
from buildtool.core.hashing import sha256

HERE = Path(__file__).resolve().parent
WRITER = HERE / "writer.go"
ADVISORIES = HERE / "advisories.json"
GOCODE = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources


def compile_writer(work_dir: Path) -> Path:
    """The writer binary, compiled once per version of writer.go."""
    work_dir = work_dir.absolute()  # GOPATH entries must be absolute
    binary = work_dir / f"trivydb-writer-{sha256(WRITER.read_bytes())[:16]}"
    if binary.is_file():
        return binary
    ensure_host_packages(["golang-go", "golang-github-coreos-bbolt-dev"])
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {"GO111MODULE": "off", "GOPATH": f"{work_dir / 'gopath'}:{GOCODE}", "GOCACHE": str(work_dir / "gocache"), "GOFLAGS": "",
           "GOPROXY": "off", "CGO_ENABLED": "0"}  # fmt: skip
    tmp = binary.with_name(f"{binary.name}.tmp{os.getpid()}")
    host.run(["go", "build", "-trimpath", "-o", str(tmp), str(WRITER)], env=env, cwd=work_dir, timeout=600)
    os.replace(tmp, binary)
    return binary


def build_db(out: Path, *, work_dir: Path, advisories: dict | None = None) -> Path:
    """Write the database for ``advisories`` (default: advisories.json) into ``out``; return ``out``."""
    binary = compile_writer(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = advisories if advisories is not None else json.loads(ADVISORIES.read_text())
    host.run([str(binary), str(out), "-"], input=json.dumps(data))
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/trivy-testdb")
    print(build_db(target, work_dir=target.parent / "trivydb-work"))


DB_MEDIA = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
DB_CONFIG = "application/vnd.aquasec.trivy.config.v1+json"


def publish_db(db: Path, registry, repo: str, tag: str = "2") -> None:
    """Push the database in ``db`` as Trivy's database repositories serve it (an OCI artifact whose
    one layer is db.tar.gz): a stand-in for ghcr.io/aquasecurity/trivy-db on the local registry."""
    import io
    import tarfile

    from buildtool.adapters.registry import OCI_MANIFEST, Manifest, digest_of

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("trivy.db", "metadata.json"):
            tar.add(db / "db" / name, arcname=name)
    layer, config = buf.getvalue(), b"{}"
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": DB_CONFIG,
        "config": {"mediaType": DB_CONFIG, "digest": registry.push_blob(repo, config), "size": len(config)},
        "layers": [{"mediaType": DB_MEDIA, "digest": registry.push_blob(repo, layer), "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "db.tar.gz"}}],
    }  # fmt: skip
    raw = json.dumps(body).encode()
    registry.put_manifest(repo, tag, Manifest(digest=digest_of(raw), media_type=OCI_MANIFEST, body=raw))
