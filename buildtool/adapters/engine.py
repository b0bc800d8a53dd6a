"""The container engine operations the executor needs, through python-on-whales.

python-on-whales (and the ``docker`` CLI it runs) is imported on first use only: a run that
builds nothing never loads it. Tests replace this class with a fake of
:class:`buildtool.adapters.protocols.Engine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from buildtool.adapters import host
from buildtool.adapters.files import disk_full
from buildtool.adapters.protocols import Built
from buildtool.core.errors import BuildError, EngineError, VerifyError

if TYPE_CHECKING:
    from python_on_whales import DockerClient
    from python_on_whales.exceptions import DockerException

# Every container the toolkit starts is sealed off: no network, read-only root, no privileges.
# Every container a run starts carries the run (this process) and the image it checks, so a
# stopped run or a step past its time limit removes exactly its own.
RUN_LABEL = "fleet.run"
IMAGE_LABEL = "fleet.image"

HARDENED = {
    "networks": ["none"],
    "read_only": True,
    "tmpfs": ["/tmp"],
    "cap_drop": ["ALL"],
    "security_options": ["no-new-privileges"],
}


CHECK_DRIVER = """
import json, subprocess, sys
failures = []
for name, argv in json.loads(sys.argv[1]):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            failures.append([name, f"exit {p.returncode}: " + (p.stdout + p.stderr)[-2000:]])
    except Exception as exc:
        failures.append([name, repr(exc)])
print(json.dumps(failures))
sys.exit(1 if failures else 0)
"""


IDENTITY_LABEL = "fleet.identity"  # on every image the toolkit builds: how prune knows its own
SMALL_BLOB = 1 << 20  # index and manifests are kept from the stream; layers only pass through


def _build_and_load(argv: list[str], out: BinaryIO, load_argv: Sequence[str] = ("docker", "load", "--quiet")) -> tuple[Built | None, str]:
    """Run the build (``argv`` writes an OCI archive to stdout, its log to ``out``) and pipe that
    archive straight into ``docker load``: no copy of the image on disk. The archive's index and
    manifest are read as they pass. Returns (what was built, ""), or (None, why): the build failed
    (its reasons are the end of ``out``) or docker load did (its output)."""
    # BuildKit secrets read from a variable (id=pip_index,env=NAME): the one program that gets it.
    keep = [part[4:] for i, a in enumerate(argv[1:]) if argv[i] == "--secret" for part in a.split(",") if part.startswith("env=")]
    build = host.spawn(argv, stdin=host.DEVNULL, stdout=host.PIPE, stderr=out, keep=keep)
    load = host.spawn(load_argv, stdin=host.PIPE, stdout=host.PIPE, stderr=host.STDOUT)
    assert build.stdout is not None and load.stdin is not None
    small: dict[str, bytes] = {}
    written = 0.0
    tee = _Tee(build.stdout, load.stdin)
    try:
        with tarfile.open(fileobj=tee, mode="r|", bufsize=SMALL_BLOB) as tar:
            for member in tar:
                if member.isfile() and member.size <= SMALL_BLOB and (member.name == "index.json" or member.name.startswith("blobs/")):
                    data = tar.extractfile(member)
                    small[member.name] = data.read() if data else b""
        while tee.read(SMALL_BLOB):  # the archive's end blocks, for docker load
            pass
        written = time.monotonic()
    except (tarfile.TarError, OSError):
        pass  # the build failed or was stopped (its log says why), or docker load ended
    finally:
        with contextlib.suppress(OSError):
            load.stdin.close()
        if tee.broken:
            build.kill()
        build.stdout.close()
    assert load.stdout is not None
    with load.stdout:
        said = load.stdout.read().decode(errors="replace").strip()
    load.wait()
    built_ok = build.wait() == 0
    if tee.broken or (built_ok and load.returncode != 0):
        return None, f"docker load of the built image failed:\n{said[-3000:] or f'exit status {load.returncode}'}"
    if not built_ok:
        return None, ""
    built = _manifest(small)
    if built is None:
        return None, "the built OCI archive holds no readable index and image manifest"
    return dataclasses.replace(built, load_seconds=max(0.0, time.monotonic() - written) if written else 0.0), ""


def _manifest(small: Mapping[str, bytes]) -> Built | None:
    """The image manifest's digest and layer sizes from an OCI archive's index and blobs."""
    try:
        descriptor = json.loads(small["index.json"])["manifests"][0]
        manifest = json.loads(small["blobs/" + descriptor["digest"].replace(":", "/")])
        return Built(digest=descriptor["digest"], layers=tuple(int(layer["size"]) for layer in manifest["layers"]))
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class _Tee(io.RawIOBase):
    """Reads from ``src`` and writes what it read to ``dst`` (until ``dst`` breaks)."""

    def __init__(self, src: BinaryIO, dst: BinaryIO) -> None:
        self.src, self.dst, self.broken = src, dst, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self.src.readinto(buffer)
        if n and not self.broken:
            try:
                self.dst.write(memoryview(buffer)[:n])
            except OSError:
                self.broken = True
                raise
        return n or 0


def _labels(ref: str) -> dict[str, str]:
    return {RUN_LABEL: str(os.getpid()), IMAGE_LABEL: ref}


def _docker_exception() -> type[DockerException]:
    from python_on_whales.exceptions import DockerException

    return DockerException


# How the docker client says the engine is gone, and a registry that stopped answering a push.
ENGINE_GONE = ("Cannot connect to the Docker daemon", "docker.sock: connect:", "Is the docker daemon running?")
REGISTRY_GONE = ("connect: connection refused", "dial tcp")
DOCKER_ROOT = Path("/var/lib/docker")  # the engine's images and build cache


def _failed(what: str, exc: DockerException, detail: str = "", *, answers: Callable[[], bool] = lambda: True) -> Exception:
    """A failed engine call in the terms the user acts on: the engine (its client says so, or it no
    longer ``answers``) or the registry stopped answering (EngineError: the next run brings them
    back), or the step itself failed (BuildError)."""
    return _failed_text(what, _tail(exc), detail, answers=answers)


def _failed_text(what: str, text: str, detail: str = "", *, answers: Callable[[], bool] = lambda: True) -> Exception:
    """:func:`_failed` for a command whose output is ``text`` (its last lines)."""
    if any(m in text for m in ENGINE_GONE) or not answers():
        return EngineError(f"the Docker engine stopped answering during {what}; nothing was published. The next run starts it again "
                           "(or start dockerd yourself), and resumes from what was pushed")  # fmt: skip
    if "no space left on device" in text:
        return EngineError(f"{what} failed: {disk_full(DOCKER_ROOT)}:\n{text}")
    if what.startswith("push") and any(m in text for m in REGISTRY_GONE):
        return EngineError(f"the registry stopped answering during {what}; nothing was published. The next run starts a local registry "
                           f"again (or start yours, FLEET_REGISTRY), and resumes from what was pushed:\n{text}")  # fmt: skip
    return BuildError(f"{what} failed{detail}:\n{text or 'no output'}")


def _tail(exc: DockerException, lines: int = 30) -> str:
    text = (exc.stderr or "") + (exc.stdout or "")
    return "\n".join(text.strip().splitlines()[-lines:])


class Docker:
    def __init__(self) -> None:
        self._gpus: bool | None = None

    @cached_property
    def client(self) -> DockerClient:
        from python_on_whales import DockerClient

        return DockerClient()

    def build(
        self,
        *,
        context: Path,
        tag: str,
        build_args: Mapping[str, str],
        secrets: Sequence[str],
        cache_ref: str | None,
        cache_mode: str = "min",
        labels: Mapping[str, str],
        log: Path,
        target: str | None = None,
        rewrite_timestamps: bool = True,
    ) -> Built:
        """Build ``target`` (default: the last stage) and load it into the engine's image store as ``tag``.

        The image is exported as an OCI archive with every file time clamped to the build's
        SOURCE_DATE_EPOCH (``rewrite-timestamp``: this BuildKit refuses it on the image
        exporter), then loaded; the containerd store keeps the manifest, so the digest loaded is
        the digest pushed later. ``rewrite_timestamps`` False skips that pass (it decompresses,
        rewrites and recompresses every layer) for images whose files carry clamped times
        already. ``cache_ref`` None builds from scratch: no BuildKit cache, no registry cache;
        ``cache_mode`` is what goes to the registry cache: "min", the image's layers, or "max",
        every stage's.
        Not pushed: images are pushed after verification.
        """
        argv = ["docker", "buildx", "build", "--file", str(context / "Dockerfile"), "--network", "host", "--provenance=false", "--progress=plain",
                "--output", ",".join(["type=oci", "dest=-", f"name={tag}", *(["rewrite-timestamp=true"] if rewrite_timestamps else [])])]  # fmt: skip
        argv += ["--target", target] if target else []
        for flag, pairs in (("--build-arg", build_args), ("--label", labels)):
            for key, value in pairs.items():
                argv += [flag, f"{key}={value}"]
        for secret in secrets:
            argv += ["--secret", secret]
        if cache_mode not in ("min", "max"):
            raise ValueError(f"cache mode {cache_mode!r} is not min or max")
        if cache_ref is None:
            argv.append("--no-cache")
        else:
            argv += ["--cache-from", f"type=registry,ref={cache_ref}", "--cache-to", f"type=registry,ref={cache_ref},mode={cache_mode},ignore-error=true"]
        argv.append(str(context))
        with log.open("wb") as out:
            built, why = _build_and_load(argv, out)
        if built is None:
            text = why or "\n".join(log.read_text(errors="replace").strip().splitlines()[-30:])
            raise _failed_text(f"build of {tag}", text, f" (log: {log})", answers=self.answers)
        return built

    def ready(self) -> None:
        """Nothing more to do once constructed: a run's engine comes up, with room on its disks, through
        :class:`buildtool.execute.space.EngineOnDemand`, whose first use this is."""

    def answers(self) -> bool:
        """Whether the engine still answers (asked after a failure: a stopped engine fails every call)."""
        try:
            self.client.version()
        except _docker_exception():
            return False
        return True

    def push(self, ref: str) -> None:
        try:
            self.client.image.push(ref, quiet=True)
        except _docker_exception() as exc:
            raise _failed(f"push of {ref}", exc, answers=self.answers) from exc

    def pull(self, ref: str) -> None:
        self.client.image.pull(ref, quiet=True)

    def save(self, ref: str, out: Path) -> Path:
        """Write the image as an archive (``docker save``) for the scanner; return ``out``."""
        try:
            self.client.image.save(ref, output=out)
        except _docker_exception() as exc:
            raise _failed(f"saving {ref} for the scan", exc, answers=self.answers) from exc
        return out

    def prune_build_cache(self, keep: str) -> str:
        """Drop BuildKit cache beyond ``keep`` (e.g. "20gb"; "": all that no build holds); what buildx says it freed."""
        out = host.run(["docker", "buildx", "prune", "--force", *(["--keep-storage", keep] if keep else [])], timeout=1800).stdout
        return (out.strip().splitlines() or [""])[-1]

    def root_dir(self) -> Path:
        """The engine's data root, where its images and build cache live."""
        out = host.run(["docker", "info", "--format", "{{.DockerRootDir}}"], timeout=30).stdout.strip()
        return Path(out) if out.startswith("/") else DOCKER_ROOT

    def remove_images(self, prefix: str, keep_org: str = "", *, only_org: str = "", current: Collection[str] | None = None) -> list[str]:
        """Remove local images the toolkit built (they carry its ``fleet.identity`` label) under
        ``prefix`` (a registry's address) whose org is not ``keep_org`` or below it (or, with
        ``only_org``, is that org or one named after it, ``ORG-...``); with ``current`` (image
        references), ``keep_org``'s own identity tags that are none of them go too: earlier
        identities, which the registry keeps as long as a release needs them. Never another project's."""
        if not (keep_org or only_org):
            raise ValueError("remove_images needs the org to keep or the one org to remove")
        removed = []
        for image in self.client.image.list():
            if IDENTITY_LABEL not in (image.config.labels or {}):
                continue
            for tag in image.repo_tags:
                if not tag.startswith(prefix + "/"):
                    continue
                org = tag[len(prefix) + 1 :].rpartition("/")[0]
                if only_org:
                    mine = org == only_org or org.startswith(only_org + "-")
                else:
                    earlier = current is not None and org == keep_org and ":id-" in tag and tag not in current
                    mine = (org != keep_org and not org.startswith(keep_org + "/")) or earlier
                if mine:
                    self.client.image.remove(tag, force=True)
                    removed.append(tag)
        return removed

    def image_digest(self, ref: str) -> str:
        """The manifest digest of a local image (the containerd store keeps the one it will push)."""
        return self.client.image.inspect(ref).id

    def image_user(self, ref: str) -> str:
        return self.client.image.inspect(ref).config.user or ""

    def has_image(self, ref: str) -> bool:
        return self.client.image.exists(ref)

    def gpus_available(self, ref: str) -> bool:
        """Whether this engine can give a container the GPUs (`--gpus all`); asked once per run."""
        if self._gpus is None:
            # create + start rather than run: run passes the engine's refusal through to the terminal.
            container = None
            try:
                container = self.client.container.create(ref, ["true"], gpus="all", labels=_labels(ref), **HARDENED)
                self.client.container.start(container)
                self._gpus = True
            except _docker_exception():
                self._gpus = False
            finally:
                if container is not None:
                    self.client.container.remove(container, force=True)
        return self._gpus

    def run_checks(self, ref: str, checks: Sequence[tuple[str, Sequence[str]]], *, gpus: bool = False) -> list[tuple[str, str]]:
        """Run every (name, argv) check in one throwaway hardened container; return the failures.

        One container start for all checks instead of one each: the driver runs them in order
        and reports each failure with its output as JSON on its last line.
        """
        if not checks:
            return []
        payload = json.dumps([[name, list(argv)] for name, argv in checks])
        try:
            out = self.client.run(ref, ["python", "-c", CHECK_DRIVER, payload], remove=True, gpus="all" if gpus else None, labels=_labels(ref),
                                  **HARDENED)  # fmt: skip
        except _docker_exception() as exc:
            lines = (exc.stdout or "").strip().splitlines()
            try:
                return [tuple(f) for f in json.loads(lines[-1])]
            except (IndexError, ValueError):
                return [("smoke-check driver", _tail(exc))]
        return [] if str(out).strip().endswith("[]") else [("smoke-check driver", str(out)[-2000:])]

    def remove_containers(self, image: str = "") -> int:
        """Remove the containers this run started (of ``image`` only, when given); how many."""
        filters = [("label", f"{RUN_LABEL}={os.getpid()}")] + ([("label", f"{IMAGE_LABEL}={image}")] if image else [])
        try:
            found = self.client.container.list(all=True, filters=filters)
            if found:
                self.client.container.remove(found, force=True)
        except _docker_exception():
            return 0
        return len(found)

    def wait_healthy(self, ref: str, name: str, timeout: float = 120) -> None:
        """Start the image as a hardened container and wait for its own HEALTHCHECK to say healthy."""
        container = self.client.run(ref, detach=True, name=name, labels=_labels(ref), **HARDENED)
        try:
            deadline = time.monotonic() + timeout
            status = "starting"
            while time.monotonic() < deadline:
                state = self.client.container.inspect(container).state
                status = state.health.status if state.health else "no healthcheck"
                if status == "healthy":
                    return
                if not state.running or status in ("unhealthy", "no healthcheck"):
                    break
                time.sleep(1)
            logs = self.client.container.logs(container, tail=30)
            raise VerifyError(f"{ref} did not become healthy (status: {status}); container logs:\n{logs}")
        finally:
            self.client.container.remove(container, force=True)
