"""Size-report analysis on an in-memory registry: CUDA library bytes, duplicates, biggest packages."""

from __future__ import annotations

from pathlib import Path

from buildtool.adapters.registry import Manifest
from buildtool.report.sizes import ImageSize, Layer, cuda_inventory, final_files, largest_packages
from buildtool.report.tables import markdown

SP = "opt/venv/lib/python3.11/site-packages"


class LayerRegistry:
    def __init__(self, layers: dict[str, list[tuple[str, int]]]) -> None:
        self.layers = layers

    def image_manifest(self, repo: str, ref: str) -> Manifest:
        body = '{"layers": [' + ", ".join(f'{{"digest": "{d}", "size": 1}}' for d in self.layers) + "]}"
        return Manifest(digest="sha256:x", media_type="application/vnd.oci.image.manifest.v1+json", body=body.encode())

    def layer_files(self, repo: str, digest: str) -> list[tuple[str, int]]:
        return self.layers[digest]


def test_cuda_bytes_and_duplicates(tmp_path: Path) -> None:
    reg = LayerRegistry(
        {
            "sha256:a": [(f"{SP}/nvidia/cuda_runtime/lib/libcudart.so.12", 700), (f"{SP}/nvidia/cudnn/lib/libcudnn.so.8", 1000), ("usr/bin/python3", 5)],
            "sha256:b": [(f"{SP}/torch/lib/libtorch_cuda.so", 9000), (f"{SP}/torch/lib/libcudart.so.12", 700)],
        }
    )
    total, dupes = cuda_inventory(final_files(reg, "r", "t", tmp_path))
    assert total == 700 + 1000 + 700
    assert dupes == {"libcudart.so.12": [f"{SP}/nvidia/cuda_runtime/lib/libcudart.so.12", f"{SP}/torch/lib/libcudart.so.12"]}


def test_whiteouts_remove_files(tmp_path: Path) -> None:
    reg = LayerRegistry(
        {
            "sha256:a": [(f"{SP}/nvidia/cudnn/lib/libcudnn.so.8", 1000), (f"{SP}/old/lib/libcudnn.so.8", 1000)],
            "sha256:b": [(f"{SP}/.wh.old", -1)],
        }
    )
    assert cuda_inventory(final_files(reg, "r", "t", tmp_path)) == (1000, {})


def test_largest_packages_split_the_nvidia_namespace(tmp_path: Path) -> None:
    reg = LayerRegistry(
        {
            "sha256:a": [
                (f"{SP}/nvidia/cublas/lib/libcublas.so.12", 500),
                (f"{SP}/nvidia/cublas/lib/libcublasLt.so.12", 400),
                (f"{SP}/nvidia/cudnn/lib/libcudnn.so.8", 800),
                (f"{SP}/torch/lib/libtorch_cuda.so", 1000),
                (f"{SP}/torch/__init__.py", 1),
                (f"{SP}/six.py", 50),  # a module, not a package folder
                ("usr/lib/x86_64-linux-gnu/libLLVM.so.19", 5000),  # not Python
            ],
            "sha256:b": [(f"{SP}/nvidia/cudnn/.wh.lib", -1)],
        }
    )
    files = final_files(reg, "r", "t", tmp_path)
    assert largest_packages(files) == [("torch", 1001), ("nvidia/cublas", 900)]
    assert largest_packages(files, top=1) == [("torch", 1001)]


def test_markdown_flags_budget_and_duplicates() -> None:
    s = ImageSize(
        repository="family-torch-cu121", machine="any", status="built", compressed=3_500_000_000, uncompressed=None, budget_mb=3000,
        prev_compressed=3_400_000_000, largest=[Layer(size=3_000_000_000, created_by="COPY /install/ /opt/venv/")],
        cuda_bytes=2_000_000_000, cuda_duplicates={"libcudart.so.12": ["a/libcudart.so.12", "b/libcudart.so.12"]},
        packages=[("torch", 1_500_000_000), ("nvidia/cudnn", 700_000_000)],
    )
    text = markdown([s])
    assert "- family-torch-cu121 (any): torch 1500.0, nvidia/cudnn 700.0" in text
    assert "3000 **OVER**" in text and "+100.0" in text and "2000.0 **DUPLICATES**" in text
    assert "`libcudart.so.12` is present 2 times" in text
