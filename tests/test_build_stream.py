"""The build's OCI archive goes from buildx's stdout straight into docker load, its manifest read
on the way: real processes stand in for both ends (a script that writes an archive, and `cat`)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from buildtool.adapters.engine import _build_and_load


def oci_archive(layer: bytes) -> bytes:
    """A single-image OCI archive as BuildKit writes it: blobs, then index.json."""
    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = b"{}"
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": digest(config), "size": len(config)},
                           "layers": [{"digest": digest(layer), "size": len(layer)}]}).encode()  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": digest(manifest), "size": len(manifest)}]}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in ((digest(layer), layer), (digest(config), config), (digest(manifest), manifest), ("index.json", index)):
            info = tarfile.TarInfo("index.json" if name == "index.json" else "blobs/" + name.replace(":", "/"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "image.tar"
    path.write_bytes(oci_archive(b"L" * (3 << 20)))  # a layer larger than the blobs kept in memory
    return path


def writer(archive: Path, code: int = 0) -> list[str]:
    """A stand-in for `docker buildx build --output type=oci,dest=-`: the archive on stdout, a log on stderr."""
    script = f"import sys; sys.stderr.write('#1 DONE\\n'); sys.stdout.buffer.write(open({str(archive)!r}, 'rb').read()); sys.exit({code})"
    return [sys.executable, "-c", script]


def test_the_archive_reaches_the_loader_whole_and_its_manifest_is_read(archive: Path, tmp_path: Path, real_subprocess: None) -> None:
    loaded = tmp_path / "loaded.tar"
    with (tmp_path / "build.log").open("wb") as log:
        built, why = _build_and_load(writer(archive), log, ["sh", "-c", f"cat > {loaded}"])
    assert why == "" and built is not None
    assert loaded.read_bytes() == archive.read_bytes()
    assert built.layers == (3 << 20,)
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert built.digest == index["manifests"][0]["digest"]
    assert (tmp_path / "build.log").read_text() == "#1 DONE\n"


def test_a_failed_build_is_reported_from_its_log(archive: Path, tmp_path: Path, real_subprocess: None) -> None:
    with (tmp_path / "build.log").open("wb") as log:
        assert _build_and_load(writer(archive, code=1), log, ["sh", "-c", "cat > /dev/null"]) == (None, "")


def test_a_failed_load_is_named(archive: Path, tmp_path: Path, real_subprocess: None) -> None:
    with (tmp_path / "build.log").open("wb") as log:
        built, why = _build_and_load(writer(archive), log, ["sh", "-c", "echo 'invalid tar header' >&2; exit 1"])
    assert built is None and why.startswith("docker load of the built image failed") and "invalid tar header" in why


def test_a_build_that_writes_no_archive_is_refused(tmp_path: Path, real_subprocess: None) -> None:
    (tmp_path / "junk").write_bytes(b"not a tar" * 100)
    with (tmp_path / "build.log").open("wb") as log:
        built, why = _build_and_load(writer(tmp_path / "junk"), log, ["sh", "-c", "cat > /dev/null"])
    assert built is None and "no readable index" in why
