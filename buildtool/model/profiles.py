"""Who reads each machine-profile variable, and the check that every profile key has a reader.

A machine's ``[profile]`` is baked into each of its service images as environment variables (and
into /etc/machine-profile.json). A variable that no program reads changes nothing, silently, so
each key must be one that a program in the images reads (:data:`KNOWN_READERS`) or be listed in
the machine file's ``informational`` list (keys only the fleet's own services read). Any other key
is a warning that names the real variable for the well-known misspellings; a wrong
``informational`` list is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from buildtool.model.schema import Collector

# Variables that a program in the images reads, and which program ("NAME is read by READER").
KNOWN_READERS: dict[str, str] = {
    "CUDA_VISIBLE_DEVICES": "the CUDA runtime",
    "CUDA_DEVICE_ORDER": "the CUDA runtime",
    "PYTORCH_CUDA_ALLOC_CONF": "PyTorch's CUDA caching allocator",
    "OMP_NUM_THREADS": "OpenMP (torch's CPU thread pool) and numpy's OpenBLAS when OPENBLAS_NUM_THREADS is unset",
    "OPENBLAS_NUM_THREADS": "OpenBLAS (numpy's linear algebra)",
    "MKL_NUM_THREADS": "Intel MKL (torch's CPU linear algebra)",
    # uvicorn's click command has auto_envvar_prefix="UVICORN": `uvicorn APP` reads UVICORN_<OPTION>
    # for each option; uvicorn.run() called from code reads none of them.
    "UVICORN_WORKERS": "uvicorn's command line (`uvicorn APP`, not uvicorn.run())",
    "WEB_CONCURRENCY": "uvicorn (its worker count when --workers is not given)",
}
# The entries the toolkit derives from the machine file (GENERATED_PROFILE_KEYS), and who reads them.
GENERATED_READERS: dict[str, str] = {
    "MACHINE": "the fleet's services (the machine they run on)",
    "GPU_MODEL": "the fleet's services",
    "GPU_VRAM_GB": "the fleet's services (their GPU memory budget)",
    "CUDA_ARCH": "the fleet's services",
    "TORCH_CUDA_ARCH_LIST": "torch.utils.cpp_extension and the builds of machine-specific families",
    "CMAKE_CUDA_ARCHITECTURES": "the builds of machine-specific families (CMAKE_ARGS)",
}
# Names that look right but that nothing reads -> the name the program reads.
MISSPELLINGS: dict[str, str] = {
    "GPU_VISIBLE_DEVICES": "CUDA_VISIBLE_DEVICES",
    "TORCH_CUDA_ALLOC_CONF": "PYTORCH_CUDA_ALLOC_CONF",
}
FIX = "list it in informational = [...] if your own services read it"


def real_name(key: str) -> str | None:
    """The known variable ``key`` most likely means, if any."""
    if key in MISSPELLINGS:
        return MISSPELLINGS[key]
    close = difflib.get_close_matches(key.upper(), KNOWN_READERS, n=1, cutoff=0.8)
    return close[0] if close else None


def unread_message(key: str) -> str:
    """The warning for a profile key that no known program reads and that is not informational."""
    real = real_name(key)
    if real:
        return f"no program in the images reads it, but {real} is read by {KNOWN_READERS[real]}. Rename it, or {FIX}"
    listed = "buildtool/model/profiles.py lists the variables programs read"
    return f"no program in the images reads it ({listed}). Rename it to the one its program reads, or {FIX}"


def check_profile(c: Collector, file: str, profile: Sequence[str] | None, informational: Sequence[str] | None) -> None:
    """Warn about each key of ``profile`` that has no reader; report a wrong ``informational`` list as
    errors. None: that part of the machine file is invalid (reported already), so it is not judged."""
    names = tuple(informational or ())
    for i, key in enumerate(names):
        if key in names[:i]:
            c.add(file, f"informational[{i}]", f"lists {key!r} twice; keep one entry")
        elif key in KNOWN_READERS:
            c.add(file, f"informational[{i}]", f"{key} is read by {KNOWN_READERS[key]}, so it is not informational; remove it from the list")
        elif key in GENERATED_READERS:
            c.add(file, f"informational[{i}]", f"{key} is the toolkit's own entry, not one of [profile]; remove it from the list")
        elif profile is not None and key not in profile:
            c.add(file, f"informational[{i}]", f"{key!r} is not in [profile]; remove it from the list, or add it to [profile]")
    if profile is None or informational is None:
        return
    for key in profile:
        if key not in KNOWN_READERS and key not in names:
            c.warn(file, f"profile.{key}", unread_message(key))
