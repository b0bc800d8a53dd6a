"""A real, signed apt archive on disk, served over HTTP on 127.0.0.1, for tests.

Tests use it to show how the toolkit reacts when Debian/Ubuntu archives move (a version replaced
in place, a pocket updated, a snapshot taken) without the live archive::

    with AptArchive(tmp_path) as archive:
        archive.publish("debian", "bookworm", [archive.make_deb("tool", "1.0-1")])
        archive.snapshot("20261101T000000Z")
        archive.url("debian", "20261101T000000Z")  # http://127.0.0.1:PORT/archive/debian/20261101T000000Z

Layout under ``root/www``: ``<base>/dists/<dist>/...`` and ``<base>/pool/<component>/<x>/<name>/``;
snapshots as on snapshot.debian.org (``archive/<base>/<time>/``) and snapshot.ubuntu.com
(``ubuntu/<time>/``). Files are never changed in place (new files are renamed over old ones), so
snapshots can share them through hard links. apt must be able to read the archive with the key
in :attr:`AptArchive.keyring` (``deb [signed-by=KEYRING] URL DIST main``); :func:`apt_config`
sets up an apt that reads nothing of the host's configuration.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

SNAPSHOT_TIME = re.compile(r"\d{8}T\d{6}Z")
HOST_PACKAGES = {"dpkg-deb": "dpkg", "gpg": "gnupg", "gpgconf": "gnupg"}
EPOCH = 1_700_000_000  # fixed mtime of everything inside the .debs


def run(argv: list[str], *, env: dict[str, str] | None = None, input: bytes | None = None) -> bytes:
    """Run ``argv``; return its stdout, or raise RuntimeError with its stderr."""
    try:
        return subprocess.run(argv, check=True, capture_output=True, env=env, input=input).stdout
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{' '.join(argv)} failed ({e.returncode}): {e.stderr.decode(errors='replace').strip()}") from e


def _ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if not shutil.which(tool)})
    if missing:
        from buildtool.adapters.setup import ensure_host_packages

        ensure_host_packages(missing)


def _rfc2822(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC).replace(microsecond=0), usegmt=True).replace("GMT", "UTC")


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` as a new file (rename over any old one: a snapshot may hard-link the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    tmp.replace(path)


class AptArchive:
    """A signed apt archive under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        _ensure_tools()
        self.root = Path(root)
        self.www = self.root / "www"
        self.www.mkdir(parents=True, exist_ok=True)
        self.requests: list[str] = []  # request paths served, in order
        self.server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # gpg-agent's socket path must fit in 108 bytes: a deep `root` gets a short home elsewhere.
        home = self.root / "gnupg"
        self._own_home = len(str(home)) > 80
        self.gnupghome = Path(tempfile.mkdtemp(prefix="aptarchive-gpg-")) if self._own_home else home
        self.gnupghome.mkdir(mode=0o700, exist_ok=True)
        self._gpg("--passphrase", "", "--quick-gen-key", "fleet test archive <archive@localhost>", "ed25519", "sign", "never")
        self.keyring = self.root / "keyring.gpg"
        self.keyring.write_bytes(self._gpg("--export"))

    def _gpg(self, *args: str, input: bytes | None = None) -> bytes:
        return run(["gpg", "--homedir", str(self.gnupghome), "--batch", "--yes", "--quiet", *args], input=input)

    # -- packages and pockets ---------------------------------------------------------------------

    def make_deb(
        self,
        name: str,
        version: str,
        *,
        depends: str = "",
        essential: bool = False,
        priority: str = "optional",
        section: str = "misc",
        arch: str = "amd64",
        files: dict[str, bytes] | None = None,
        description: str | None = None,
    ) -> Path:
        """Build ``root/debs/<name>_<version>_<arch>.deb`` (reproducibly) holding ``files`` (path -> content; "#!..." gets mode 755)."""
        tree = Path(tempfile.mkdtemp(dir=self.root, prefix=".deb-"))
        try:
            for rel, data in (files or {}).items():
                (tree / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel.lstrip("/")).write_bytes(data)
            size = sum(len(d) for d in (files or {}).values()) // 1024 + 1
            fields = [("Package", name), ("Version", version), ("Architecture", arch), ("Maintainer", "Fleet Tests <archive@localhost>")]
            fields += [("Installed-Size", str(size)), ("Depends", depends), ("Essential", "yes" if essential else ""), ("Priority", priority)]
            fields += [("Section", section), ("Description", description or f"{name}, a test package\n {name} is made by tests.")]
            control = "".join(f"{k}: {v}\n" for k, v in fields if v)
            (tree / "DEBIAN").mkdir()
            (tree / "DEBIAN" / "control").write_text(control)
            for path in [tree, *tree.rglob("*")]:  # fixed modes and mtimes; "#!" scripts are executable
                path.chmod(0o755 if path.is_dir() or path.read_bytes().startswith(b"#!") else 0o644)
                os.utime(path, (EPOCH, EPOCH))
            deb = self.root / "debs" / f"{name}_{version.split(':')[-1]}_{arch}.deb"
            deb.parent.mkdir(exist_ok=True)
            env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)}
            run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb.with_suffix(".new"))], env=env)
            deb.with_suffix(".new").replace(deb)
            return deb
        finally:
            shutil.rmtree(tree)

    def publish(
        self,
        base: str,
        dist: str,
        debs: Iterable[Path],
        *,
        components: Iterable[str] = ("main",),
        date: datetime | None = None,
        valid_until: datetime | None = None,
    ) -> None:
        """(Re)write pocket ``dist`` of ``base`` to hold exactly ``debs``, signed.

        A deb goes to the component its Section names ("contrib/misc"), else to the first one.
        """
        components = list(components)
        top = self.www / base
        stanzas: dict[tuple[str, str], list[str]] = {}  # (component, architecture) -> Packages stanzas
        for deb in map(Path, debs):
            control = run(["dpkg-deb", "--field", str(deb)]).decode()
            fields = dict(re.findall(r"^(\S+): (.*)$", control, re.M))
            name, section = fields["Package"], fields.get("Section", "")
            comp = section.split("/")[0] if "/" in section else components[0]
            if comp not in components:
                raise ValueError(f"{deb.name}: component {comp} is not one of {components}")
            pool = top / "pool" / comp / (name[:4] if name.startswith("lib") else name[0]) / name / deb.name
            data = deb.read_bytes()
            if not pool.is_file() or pool.read_bytes() != data:
                _write(pool, data)
            stanzas.setdefault((comp, fields["Architecture"]), []).append(
                control.rstrip("\n") + f"\nFilename: {pool.relative_to(top)}\nSize: {len(data)}\n"
                f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
        archs = sorted({"amd64"} | {a for _, a in stanzas if a != "all"})
        new = top / "dists" / f".{dist}.new"
        shutil.rmtree(new, ignore_errors=True)
        files: dict[str, bytes] = {}
        for comp, arch in [(c, a) for c in components for a in archs]:  # "all" packages are in every architecture's index
            text = "\n".join(sorted(stanzas.get((comp, arch), []) + stanzas.get((comp, "all"), []))).encode()
            files[f"{comp}/binary-{arch}/Packages"] = text
            files[f"{comp}/binary-{arch}/Packages.gz"] = gzip.compress(text, mtime=0)
        release = f"Origin: Fleet Tests\nLabel: Fleet Tests\nSuite: {dist}\nCodename: {dist}\nDate: {_rfc2822(date or datetime.now(UTC))}\n"
        if valid_until:
            release += f"Valid-Until: {_rfc2822(valid_until)}\n"
        release += f"Architectures: {' '.join(archs)}\nComponents: {' '.join(components)}\nDescription: test archive {base} {dist}\n"
        for field, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
            release += f"{field}:\n" + "".join(f" {algo(d).hexdigest()} {len(d):>8} {p}\n" for p, d in files.items())
        files["Release"] = release.encode()
        files["InRelease"] = self._gpg("--digest-algo", "SHA512", "--clearsign", input=files["Release"])
        files["Release.gpg"] = self._gpg("--digest-algo", "SHA512", "--detach-sign", "--armor", input=files["Release"])
        for path, data in files.items():
            _write(new / path, data)
        # Swap the whole pocket: no file a snapshot links to is touched, stale indexes disappear.
        live, old = top / "dists" / dist, top / "dists" / f".{dist}.old"
        if live.exists():
            live.rename(old)
        new.rename(live)
        shutil.rmtree(old, ignore_errors=True)

    def snapshot(self, time: str) -> None:
        """Freeze the live tree as snapshot ``time`` (``20261121T095414Z``), with hard links.

        ``www/ubuntu*/`` goes to ``www/ubuntu*/<time>/``, any other base to ``www/archive/<base>/<time>/``.
        """
        if not SNAPSHOT_TIME.fullmatch(time):
            raise ValueError(f"snapshot time {time!r} is not like 20261121T095414Z")
        for top in sorted(p for p in self.www.iterdir() if p.is_dir() and p.name != "archive"):
            dest = top / time if top.name.startswith("ubuntu") else self.www / "archive" / top.name / time
            dest.mkdir(parents=True)
            for child in top.iterdir():
                if child.name not in ("dists", "pool"):  # earlier ubuntu snapshots, partial files
                    continue
                shutil.copytree(child, dest / child.name, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))

    # -- serving ----------------------------------------------------------------------------------

    def start(self) -> str:
        """Serve ``root/www`` on 127.0.0.1 (a free port) from a daemon thread; return the base URL."""
        if self.server is None:
            archive = self

            class Handler(http.server.SimpleHTTPRequestHandler):
                def send_head(self):  # type: ignore[no-untyped-def]
                    archive.requests.append(self.path)
                    # Always send the file: mtimes have a 1 s resolution and tests publish faster.
                    del self.headers["If-Modified-Since"]
                    return super().send_head()

                def log_message(self, format: str, *args: object) -> None:
                    pass

            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(self.www)))
            self.server.daemon_threads = True
            self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="aptarchive", daemon=True)
            self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving (the tree stays)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            assert self._thread is not None
            self._thread.join()
            self.server = self._thread = None

    def close(self) -> None:
        """Stop serving and end this archive's gpg-agent."""
        self.stop()
        subprocess.run(["gpgconf", "--homedir", str(self.gnupghome), "--kill", "gpg-agent"], check=False, capture_output=True)
        if self._own_home:
            shutil.rmtree(self.gnupghome, ignore_errors=True)

    def __enter__(self) -> AptArchive:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        if self.server is None:
            raise RuntimeError("the archive is not being served: call start()")
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, base: str, time: str | None = None) -> str:
        """URL of mirror ``base``, or of its snapshot ``time`` (Debian's or Ubuntu's snapshot layout)."""
        if time is None:
            return f"{self.base_url}/{base}"
        if not SNAPSHOT_TIME.fullmatch(time):
            raise ValueError(f"snapshot time {time!r} is not like 20261121T095414Z")
        return f"{self.base_url}/{base}/{time}" if base.startswith("ubuntu") else f"{self.base_url}/archive/{base}/{time}"


def apt_config(tmp: Path, sources: list[str]) -> dict[str, str]:
    """Write a private apt setup under ``tmp`` with these ``deb ...`` lines; return the environment to run apt with.

    apt-get update / apt-cache then run as the current user and read nothing of the host's apt.
    """
    tmp = Path(tmp).resolve()
    for sub in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "etc/apt/trusted.gpg.d", "var/lib/apt/lists/partial"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    (tmp / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (tmp / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (tmp / "var/lib/dpkg/status").touch()
    (tmp / "etc/apt/sources.list").write_text("".join(f"{line}\n" for line in sources))
    # Every apt path is relative to Dir except these two (and the programs in /usr).
    settings = {"Dir": f"{tmp}/", "Dir::State::status": f"{tmp}/var/lib/dpkg/status", "Dir::Etc::Trusted": "/dev/null"}
    settings |= {"APT::Architecture": "amd64", "APT::Sandbox::User": "root", "Acquire::Languages": "none"}
    conf = tmp / "apt.conf"
    conf.write_text("".join(f'{k} "{v}";\n' for k, v in settings.items()) + 'APT::Architectures { "amd64"; };\n')
    return {**os.environ, "APT_CONFIG": str(conf), "LC_ALL": "C.UTF-8"}
