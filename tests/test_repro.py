"""Where two builds differ: the first differing layer and file, or the config key (registry faked),
and the bake file's builder targets."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from buildtool import bake
from buildtool.adapters.bootstrap import unclamped
from buildtool.adapters.registry import Manifest, digest_of
from buildtool.plan.plan import make_plan
from buildtool.repro import config_difference, explain, first_difference
from buildtool.settings import from_sources
from tests import memory
from tests.fakes import OCI_MANIFEST, FakeRegistry


def _layer(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A gzipped layer tarball of name -> (content, mtime)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, (data, mtime) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def test_the_first_differing_member_and_field_are_named() -> None:
    one = _layer({"etc/a": (b"x", 1), "usr/lib/x.pyc": (b"header1", 1735689600)})
    assert first_difference(one, one) == "the same members: the archives differ in order or padding"
    two = _layer({"etc/a": (b"x", 1), "usr/lib/x.pyc": (b"header2", 1763900000)})
    where = first_difference(one, two)
    assert where.startswith("usr/lib/x.pyc: mtime 1735689600 != 1763900000, content sha256 ")
    assert first_difference(one, _layer({"etc/a": (b"x", 1)})) == "usr/lib/x.pyc: only in the first build"


def test_config_differences_name_the_key() -> None:
    one = {"config": {"Labels": {"a": "1", "org.opencontainers.image.revision": "abc"}}, "history": [{"created": "2025"}]}
    two = {"config": {"Labels": {"a": "1", "org.opencontainers.image.revision": "abd"}}, "history": [{"created": "2025"}]}
    assert config_difference(one, two) == 'config.config.Labels.org.opencontainers.image.revision: "abc" != "abd"'
    three = {**one, "history": [{"created": "2026"}]}
    assert config_difference(one, three) == 'config.history[0].created: "2025" != "2026"'


def _image(registry: FakeRegistry, repo: str, layers: list[bytes], config: dict) -> str:
    blobs = []
    for data in [json.dumps(config).encode(), *layers]:
        registry.blobs[digest_of(data)] = data
        blobs.append({"digest": digest_of(data), "size": len(data)})
    body = json.dumps({"mediaType": OCI_MANIFEST, "config": blobs[0], "layers": blobs[1:]}).encode()
    manifest = Manifest(digest=digest_of(body), media_type=OCI_MANIFEST, body=body)
    registry.entries[(repo, manifest.digest)] = manifest
    return manifest.digest


def test_explain_walks_from_the_manifest_to_the_file() -> None:
    registry = FakeRegistry()
    base = _layer({"etc/os-release": (b"debian", 0)})
    a = _image(registry, "r1/x", [base, _layer({"opt/venv/x": (b"1", 0)})], {"config": {}})
    b = _image(registry, "r2/x", [base, _layer({"opt/venv/x": (b"2", 0)})], {"config": {}})
    assert explain(registry, "r1/x", "r2/x", a, b).startswith("layer 2 of 2 (sha256:")
    assert "opt/venv/x: content sha256" in explain(registry, "r1/x", "r2/x", a, b)
    c = _image(registry, "r2/y", [base], {"config": {"User": "0"}})
    d = _image(registry, "r1/y", [base], {"config": {"User": "10001:10001"}})
    assert explain(registry, "r2/y", "r1/y", c, d) == 'the layers are identical; the image config differs: config.config.User: "0" != "10001:10001"'


def test_bake_builds_each_root_s_builder_root_and_children_name_it(tmp_path: Path) -> None:
    fleet = memory.fleet()
    plan = make_plan(fleet, services=["Api"])
    settings = from_sources(fleet, {"FLEET_STATE_DIR": str(tmp_path)})
    targets = bake.bake_file(plan, settings, tmp_path)["target"]
    assert list(targets)[:2] == ["base-builder", "base"]
    assert targets["base-builder"]["target"] == "builder-root" and "target" not in targets["base"]
    assert targets["base-builder"]["tags"] == [str(settings.ref("base-builder", plan.step("family:base").id_tag))]
    web = targets["web"]
    assert web["args"]["BUILDER_IMAGE"] == "builder-base-builder" and web["contexts"]["builder-base-builder"] == "target:base-builder"
    assert targets["api-big"]["contexts"] == {"parent-web": "target:web", "builder-base-builder": "target:base-builder"}
    assert web["labels"] == {"fleet.identity": plan.step("family:web").identity}  # bake's images are the toolkit's, as its own builds are


def test_a_root_tarball_with_a_file_newer_than_the_epoch_is_found(tmp_path: Path) -> None:
    """Roots are exported without the timestamp rewrite, so the bootstrap checks the clamp itself."""
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        for name, mtime in (("etc/clamped", 100), ("etc/late", 101), ("usr/at-epoch", 100)):
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(b""))
    assert unclamped(tarball, 100) == ["etc/late"]
    assert unclamped(tarball, 101) == []
