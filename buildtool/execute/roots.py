"""The bootstrapped roots of a root family, as its build context holds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from buildtool.adapters.bootstrap import keyring
from buildtool.core.errors import BuildError, CommandError
from buildtool.core.hashing import sha256_json
from buildtool.plan.plan import Step
from buildtool.settings import Settings

Bootstrapper = Callable[..., Path]

ROOTFS = {"runtime": "rootfs.tar", "builder": "builder-rootfs.tar"}  # variant -> name in the root family's context


def rootfs(step: Step, settings: Settings, bootstrap: Bootstrapper) -> dict[str, Path]:
    """The two bootstrapped roots of a root family (name in the context -> tarball), cached under
    the state dir by their locks."""
    assert step.root is not None
    out = {}
    for variant, name in ROOTFS.items():
        pins = dict(step.root_pins.get(f"root-{variant}", ()))
        archive = step.root.archive
        spec = sha256_json([step.root.suite, variant, list(step.root.packages), list(step.root.builder_packages), sorted(pins.items()),
                            settings.source_date_epoch, *([archive.declared()] if archive.declared() else [])])[:16]  # fmt: skip
        tar = settings.state_dir / "rootfs" / f"{step.root.suite}-{variant}-{spec}.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        try:
            out[name] = bootstrap(suite=step.root.suite, variant=variant, packages=list(step.root.packages),
                                  builder_packages=list(step.root.builder_packages), pins=pins, out=tar,
                                  source_date_epoch=settings.source_date_epoch, archive=archive,
                                  keyring=keyring(step.root.suite, archive, settings.root))  # fmt: skip
        except CommandError as exc:
            apt = _apt_errors(exc.stderr) or exc.stderr.strip().splitlines()[-3:]
            raise BuildError(
                f"families/{step.name}.toml: root: bootstrapping the {variant} root of {step.root.suite} failed; "
                f"check that root.suite is reachable and each of root.packages exists in it:\n" + "\n".join(apt)
            ) from exc
    return out


def _apt_errors(stderr: str) -> list[str]:
    """apt's own reasons in mmdebstrap's output: its E:, W: and Err: lines and the lines that
    explain an Err: (a missing key, an unreachable mirror), not the command lines mmdebstrap echoes."""
    lines = stderr.splitlines()
    keep = [i for i, line in enumerate(lines) if line.startswith(("E:", "W:", "Err:"))]
    keep += [i + 1 for i in keep if lines[i].startswith("Err:") and i + 1 < len(lines) and lines[i + 1].startswith("  ")]
    return [lines[i][:300] for i in sorted(set(keep))][-8:]
