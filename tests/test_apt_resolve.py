"""OS package resolution with the host's apt: argv, configuration and parsing with the command
runner faked; the real archive (marked ``network``) for the minbase sets and a child's packages."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from buildtool.core.errors import LockError, MissingToolError, UnservedVersion
from buildtool.locking import apt, aptsource

DEBIAN = [
    "deb http://deb.example/debian bookworm main",
    "deb http://deb.example/debian bookworm-updates main",
    "deb http://deb.example/debian-security bookworm-security main",
]
UBUNTU = [f"deb http://archive.example/ubuntu jammy{p} main universe" for p in ("", "-updates", "-security")]
DATES = {"bookworm": "Sat, 11 Jul 2026 10:16:37 UTC", "bookworm-updates": "Sun, 22 Nov 2026 02:09:05 UTC", "bookworm-security": "Sat, 21 Nov 2026  0:53:02 UTC"}
DATES |= {"jammy": "Thu, 21 Apr 2022 17:16:08 UTC", "jammy-updates": "Sat, 21 Nov 2026  9:56:45 UTC", "jammy-security": "Sat, 21 Nov 2026 09:54:14 UTC"}
ARCHIVE = {
    ("base-files", "12.4+deb12u15"): "",
    ("libc6", "2.36-9+deb12u14"): "Depends: libgcc-s1\n",
    ("libgcc-s1", "12.2.0-14+deb12u1"): "",
    ("usr-is-merged", "37~deb12u1"): "",
    ("tini", "0.19.0-1"): "Depends: libc6\n",
    ("tzdata", "2026f-0+deb12u1"): "",
    ("tzdata", "2025b-0+deb12u1"): "",
    ("curl", "7.88.1-10+deb12u15"): "Depends: libcurl4\n",
    ("libcurl4", "7.88.1-10+deb12u15"): "",
}


def inst(name: str, version: str, old: str | None = None) -> str:
    return (
        f"Inst {name} " + (f"[{old}] " if old else "") + f"({version} Debian:12.15/oldstable [amd64])\nConf {name} ({version} Debian:12.15/oldstable [amd64])\n"
    )


class FakeApt:
    """host.run for apt-get and apt-cache: a tiny archive, scripted simulations, every call recorded."""

    def __init__(self, simulations: list[tuple[int, str, str]] | None = None) -> None:
        self.simulations = list(simulations or [])
        self.calls: list[list[str]] = []
        self.seen: list[dict[str, str]] = []  # per simulation: its apt.conf, status and preferences

    def __call__(self, argv, *, env=None, check=True, timeout=None, **kwargs) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        assert argv == ["apt-get", "--version"] or (env is not None and env.get("LC_ALL") == "C")
        if argv == ["apt-get", "--version"]:
            return subprocess.CompletedProcess(argv, 0, "apt 2.6.1 (amd64)\nSupported modules:\n", "")
        conf = Path(env["APT_CONFIG"])
        if argv[:3] == ["apt-get", "-q", "update"]:
            root = Path(re.search(r'^Dir "(.*)/";', conf.read_text(), re.M)[1])
            for line in (root / "etc/apt/sources.list").read_text().splitlines():
                uri, dist = line.split("] ")[1].split()[:2]
                (root / "var/lib/apt/lists" / aptsource.list_name(uri, dist, "InRelease")).write_text(
                    f"-----BEGIN PGP SIGNED MESSAGE-----\nSuite: x\nDate: {DATES[dist]}\n"
                )
            return subprocess.CompletedProcess(argv, 0, "Reading package lists...\n", "")
        if argv[:2] == ["apt-cache", "show"]:
            wanted = [tuple(a.split("=", 1)) for a in argv[2:]]
            out = "".join(f"Package: {n}\nVersion: {v}\nArchitecture: amd64\n{ARCHIVE[(n, v)]}Description: {n}\n\n" for n, v in wanted if (n, v) in ARCHIVE)
            return subprocess.CompletedProcess(argv, 0 if out else 100, out, "" if out else "E: No packages found\n")
        assert argv[:5] == ["apt-get", "-s", "-q", "--no-install-recommends", "install"], argv
        text = conf.read_text()
        status = Path(re.search(r'^Dir::State::status "(.*)";', text, re.M)[1])
        prefs = Path(re.search(r'^Dir::Etc::Preferences "(.*)";', text, re.M)[1])
        self.seen.append({"conf": text, "status": status.read_text(), "preferences": prefs.read_text()})
        rc, out, err = self.simulations.pop(0)
        return subprocess.CompletedProcess(argv, rc, out, err)

    def simulated(self) -> list[list[str]]:
        return [c[5:] for c in self.calls if c[:2] == ["apt-get", "-s"]]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeApt:
    fake = FakeApt()
    keyring = tmp_path / "keyring.gpg"
    keyring.write_text("key")
    monkeypatch.setattr(aptsource.host, "run", fake)
    monkeypatch.setattr(aptsource.host, "which", lambda program: f"/usr/bin/{program}")
    monkeypatch.setattr(aptsource, "sources", lambda suite, archive: UBUNTU if suite == "jammy" else DEBIAN)
    monkeypatch.setattr(aptsource, "DEBIAN_KEYRING", str(keyring))
    monkeypatch.setattr(aptsource, "UBUNTU_KEYRING", str(keyring))
    monkeypatch.setattr(aptsource, "_updated", set())
    return fake


ESSENTIAL_RUN = (
    0,
    inst("usr-is-merged", "37~deb12u1", old="1")
    + inst("base-files", "12.4+deb12u15")
    + inst("libc6", "2.36-9+deb12u14")
    + inst("libgcc-s1", "12.2.0-14+deb12u1"),
    "",
)
REQUIRED_RUN = (0, "NOTE: This is only a simulation!\n" + inst("tini", "0.19.0-1"), "")


def test_root_repeats_mmdebstrap_phases(fake: FakeApt, tmp_path: Path) -> None:
    fake.simulations = [ESSENTIAL_RUN, REQUIRED_RUN]
    res = apt.resolve_root(suite="bookworm", include=["tini"], merged_usr=True, cache=tmp_path / "cache")
    suite = "?or(?archive(^bookworm$),?codename(^bookworm$)),?architecture(amd64)"
    essential, required = fake.simulated()
    assert essential == [f"?narrow({suite},?essential)", "usr-is-merged"]
    assert required == [f"?narrow({suite},?and(?priority(required),?not(?essential)))", "tini"]
    # The merged-usr hook's placeholder, then the essential set as installed packages.
    assert "Package: usr-is-merged\nStatus: install ok installed" in fake.seen[0]["status"] and "Version: 1\n" in fake.seen[0]["status"]
    assert "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u14\n" in fake.seen[1]["status"]
    assert "Package: usr-is-merged\nStatus: install ok installed\nVersion: 37~deb12u1" in fake.seen[1]["status"]
    assert res.packages == (
        ("base-files", "12.4+deb12u15"),
        ("libc6", "2.36-9+deb12u14"),
        ("libgcc-s1", "12.2.0-14+deb12u1"),
        ("tini", "0.19.0-1"),
        ("usr-is-merged", "37~deb12u1"),
    )
    assert res.archives == (("bookworm", "20260711T101637Z"), ("bookworm-updates", "20261122T020905Z"), ("bookworm-security", "20261121T005302Z"))
    assert res.apt == "2.6.1"


def test_private_configuration_reads_nothing_of_the_host(fake: FakeApt, tmp_path: Path) -> None:
    fake.simulations = [ESSENTIAL_RUN, REQUIRED_RUN]
    apt.resolve_root(suite="bookworm", include=["tini"], merged_usr=True, cache=tmp_path / "cache")
    root = (tmp_path / "cache" / "bookworm").absolute()
    conf = fake.seen[0]["conf"]
    for line in (
        f'Dir "{root}/";',
        'Dir::Etc::Trusted "/dev/null";',
        'pkgCacheGen::ForceEssential ",";',
        'APT::Architectures { "amd64"; };',
        'Dir::Cache::pkgcache "";',
    ):
        assert line in conf
    keyring = aptsource.DEBIAN_KEYRING
    assert (root / "etc/apt/sources.list").read_text().splitlines() == [line.replace("deb ", f"deb [signed-by={keyring}] ", 1) for line in DEBIAN]
    assert not list(root.glob("run-*")), "each resolution's status and preferences are removed"
    assert all("sudo" not in c for c in fake.calls)


def test_lists_are_updated_once_per_process(fake: FakeApt, tmp_path: Path) -> None:
    fake.simulations = [ESSENTIAL_RUN, REQUIRED_RUN, ESSENTIAL_RUN, REQUIRED_RUN]
    for _ in range(2):
        apt.resolve_root(suite="bookworm", include=["tini"], merged_usr=True, cache=tmp_path / "cache")
    assert sum(c[:3] == ["apt-get", "-q", "update"] for c in fake.calls) == 1


def test_ubuntu_has_no_merged_usr_hook(fake: FakeApt, tmp_path: Path) -> None:
    fake.simulations = [(0, inst("base-files", "12.4+deb12u15"), ""), (0, "", "")]
    res = apt.resolve_root(suite="jammy", include=[], merged_usr=True, cache=tmp_path / "cache")
    assert fake.simulated()[0] == ["?narrow(?or(?archive(^jammy$),?codename(^jammy$)),?architecture(amd64),?essential)"]
    assert fake.seen[0]["status"] == ""
    assert [pocket for pocket, _ in res.archives] == ["jammy", "jammy-updates", "jammy-security"]
    assert res.archives[1] == ("jammy-updates", "20261121T095645Z")


def test_pins_are_preferences_and_requests(fake: FakeApt, tmp_path: Path) -> None:
    fake.simulations = [ESSENTIAL_RUN, REQUIRED_RUN]
    pins = {"tini": "0.19.0-1", "libc6": "2.36-9+deb12u14", "usr-is-merged": "37~deb12u1"}
    apt.resolve_root(suite="bookworm", include=["tini"], merged_usr=True, pins=pins, cache=tmp_path / "cache")
    shows = [c for c in fake.calls if c[:2] == ["apt-cache", "show"]]
    assert shows[0][2:] == ["libc6=2.36-9+deb12u14", "tini=0.19.0-1", "usr-is-merged=37~deb12u1"]  # checked before resolving
    assert fake.simulated()[0][-1] == "usr-is-merged=37~deb12u1" and fake.simulated()[1][-1] == "tini=0.19.0-1"
    assert "Package: libc6\nPin: version 2.36-9+deb12u14\nPin-Priority: 1001\n" in fake.seen[0]["preferences"]


def test_unserved_pins_are_named_together(fake: FakeApt, tmp_path: Path) -> None:
    pins = {"tzdata": "2024a-0+deb12u1", "libc6": "2.36-9+deb12u7", "tini": "0.19.0-1"}
    with pytest.raises(UnservedVersion) as info:
        apt.resolve_root(suite="bookworm", include=["tini"], merged_usr=True, pins=pins, cache=tmp_path / "cache")
    assert info.value.packages == [("libc6", "2.36-9+deb12u7"), ("tzdata", "2024a-0+deb12u1")]
    assert (
        str(info.value)
        == "libc6 2.36-9+deb12u7 is no longer served by the bookworm archive; tzdata 2024a-0+deb12u1 is no longer served by the bookworm archive"
    )
    assert isinstance(info.value, LockError) and fake.simulated() == []


def test_apt_errors_become_lock_errors(fake: FakeApt, tmp_path: Path) -> None:
    fake.simulations = [ESSENTIAL_RUN, (100, "", "E: Unable to locate package nosuchpkg\n")]
    with pytest.raises(LockError, match=r"^nosuchpkg is not in the archive of bookworm; check the package name$"):
        apt.resolve_root(suite="bookworm", include=["nosuchpkg"], merged_usr=True, cache=tmp_path / "cache")
    fake.simulations = [ESSENTIAL_RUN, (100, "", "E: Version '2.36-9+deb12u1' for 'libc6' was not found\n")]
    with pytest.raises(UnservedVersion, match=r"libc6 2\.36-9"):
        apt.resolve_root(suite="bookworm", include=["libc6=2.36-9+deb12u1"], merged_usr=True, cache=tmp_path / "cache")
    unmet = "The following packages have unmet dependencies:\n python3.11 : Depends: libpython3.11-stdlib (= 3.11.2-6) but 3.11.1 is to be installed\n"
    fake.simulations = [ESSENTIAL_RUN, (100, unmet, "E: Unable to correct problems, you have held broken packages.\n")]
    with pytest.raises(LockError) as info:
        apt.resolve_root(suite="bookworm", include=["python3.11"], merged_usr=True, cache=tmp_path / "cache")
    assert "python3.11 : Depends: libpython3.11-stdlib (= 3.11.2-6)" in str(info.value) and "E: Unable to correct problems" in str(info.value)
    virtual = "Reading package lists...\nPackage awk is a virtual package provided by:\n  mawk 1.3.4.20200120-3.1\n  gawk 1:5.2.1-2\n\n"
    fake.simulations = [ESSENTIAL_RUN, (100, virtual, "E: Package 'awk' has no installation candidate\nE: Unable to locate package nosuch\n")]
    with pytest.raises(LockError, match=r"^nosuch is not in the archive of bookworm; check the package name$"):
        apt.resolve_root(suite="bookworm", include=["awk", "nosuch"], merged_usr=True, cache=tmp_path / "cache")
    fake.simulations = [ESSENTIAL_RUN, (100, virtual, "E: Package 'awk' has no installation candidate\n")]
    with pytest.raises(LockError) as info:
        apt.resolve_root(suite="bookworm", include=["awk"], merged_usr=True, cache=tmp_path / "cache")
    assert "Package awk is a virtual package provided by:\n    mawk 1.3.4.20200120-3.1\n    gawk 1:5.2.1-2\n  E: Package 'awk'" in str(info.value)


def test_added_packages_on_a_synthesised_base(fake: FakeApt, tmp_path: Path) -> None:
    fake.simulations = [(0, inst("libcurl4", "7.88.1-10+deb12u15") + inst("curl", "7.88.1-10+deb12u15"), "")]
    base = {"libc6": "2.36-9+deb12u14", "base-files": "12.4+deb12u15"}
    res = apt.resolve_added(suite="bookworm", base=base, install=["curl"], pins={"curl": "7.88.1-10+deb12u15"}, cache=tmp_path / "cache")
    assert res.packages == (("curl", "7.88.1-10+deb12u15"), ("libcurl4", "7.88.1-10+deb12u15"))
    assert fake.simulated() == [["curl=7.88.1-10+deb12u15"]]
    status = fake.seen[0]["status"]
    assert "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9+deb12u14\nArchitecture: amd64\nDepends: libgcc-s1\n" in status
    assert status.count("Status: install ok installed") == 2


def test_added_refuses_unserved_base_and_base_upgrades(fake: FakeApt, tmp_path: Path) -> None:
    with pytest.raises(UnservedVersion, match=r"^libc6 2.36-9\+deb12u7 is no longer served by the bookworm archive$"):
        apt.resolve_added(suite="bookworm", base={"libc6": "2.36-9+deb12u7"}, install=["curl"], cache=tmp_path / "cache")
    fake.simulations = [(0, inst("tzdata", "2026f-0+deb12u1", old="2025b-0+deb12u1") + inst("curl", "7.88.1-10+deb12u15"), "")]
    with pytest.raises(LockError, match="would change tzdata 2025b-0\\+deb12u1 to 2026f-0\\+deb12u1"):
        apt.resolve_added(suite="bookworm", base={"tzdata": "2025b-0+deb12u1"}, install=["curl", "tzdata"], cache=tmp_path / "cache")


def test_missing_apt_names_the_fix(fake: FakeApt, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(aptsource.host, "which", lambda program: None)
    with pytest.raises(MissingToolError, match="Debian or Ubuntu host"):
        apt.resolve_root(suite="bookworm", include=[], merged_usr=True, cache=tmp_path)


def test_failed_update_is_a_lock_error(fake: FakeApt, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(argv, **kwargs):
        if argv[:3] == ["apt-get", "-q", "update"]:
            return subprocess.CompletedProcess(
                argv, 100, "", "W: Failed to fetch http://deb.example/debian/dists/bookworm/InRelease\nE: Some index files failed to download.\n"
            )
        return fake(argv, **kwargs)

    monkeypatch.setattr(aptsource.host, "run", offline)
    with pytest.raises(LockError, match="update of the bookworm archive failed:\n  W: Failed to fetch"):
        apt.resolve_root(suite="bookworm", include=[], merged_usr=True, cache=tmp_path)


def test_list_names_and_dates() -> None:
    assert (
        aptsource.list_name("http://deb.debian.org/debian-security/", "bookworm-security", "InRelease")
        == "deb.debian.org_debian-security_dists_bookworm-security_InRelease"
    )
    assert aptsource.list_name("https://user:pw@mirror.example:8080/my_debian", "sid", "InRelease") == "mirror.example:8080_my%5fdebian_dists_sid_InRelease"
    assert aptsource.snapshot_date("Origin: Ubuntu\nDate: Sat, 21 Nov 2026  9:56:45 UTC\n") == "20261121T095645Z"
    assert aptsource.snapshot_date("Date: Sat, 21 Nov 2026 10:56:45 +0100\n") == "20261121T095645Z"


# -- against the real archive ---------------------------------------------------------------------


def names(text: str) -> set[str]:
    return set(text.split())


# Package names of real mmdebstrap minbase roots (dpkg-query after the bootstrap).
BOOKWORM_BUILDER = names(
    "adduser apt base-files base-passwd bash bsdutils ca-certificates coreutils dash debconf debian-archive-keyring debianutils "
    "diffutils dpkg e2fsprogs findutils gcc-12-base gpgv grep gzip hostname init-system-helpers libacl1 libapt-pkg6.0 libattr1 "
    "libaudit-common libaudit1 libblkid1 libbz2-1.0 libc-bin libc6 libcap-ng0 libcap2 libcom-err2 libcrypt1 libdb5.3 "
    "libdebconfclient0 libexpat1 libext2fs2 libffi8 libgcc-s1 libgcrypt20 libgmp10 libgnutls30 libgpg-error0 libgssapi-krb5-2 "
    "libhogweed6 libidn2-0 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 liblz4-1 liblzma5 libmd0 libmount1 libncursesw6 "
    "libnettle8 libnsl2 libp11-kit0 libpam-modules-bin libpam-modules libpam-runtime libpam0g libpcre2-8-0 libpython3-stdlib "
    "libpython3.11-minimal libpython3.11-stdlib libreadline8 libseccomp2 libselinux1 libsemanage-common libsemanage2 libsepol2 "
    "libsmartcols1 libsqlite3-0 libss2 libssl3 libstdc++6 libsystemd0 libtasn1-6 libtinfo6 libtirpc-common libtirpc3 libudev1 "
    "libunistring2 libuuid1 libxxhash0 libzstd1 login logsave mawk media-types mount ncurses-base ncurses-bin openssl passwd "
    "perl-base python3-distutils python3-lib2to3 python3-minimal python3-pip-whl python3-setuptools-whl python3-venv "
    "python3.11-minimal python3.11-venv python3.11 python3 readline-common sed sysvinit-utils tar tini tzdata usr-is-merged "
    "util-linux-extra util-linux zlib1g"
)
VENV_ONLY = names("libpython3-stdlib python3-distutils python3-lib2to3 python3-pip-whl python3-setuptools-whl python3-venv python3.11-venv python3.11 python3")
JAMMY_BUILDER = names(
    "base-files base-passwd bash bsdutils ca-certificates coreutils dash debconf debianutils diffutils dpkg e2fsprogs findutils "
    "gcc-12-base grep gzip hostname init-system-helpers libacl1 libattr1 libaudit-common libaudit1 libblkid1 libbz2-1.0 libc-bin "
    "libc6 libcap-ng0 libcap2 libcom-err2 libcrypt1 libdb5.3 libdebconfclient0 libexpat1 libext2fs2 libffi8 libgcc-s1 libgcrypt20 "
    "libgmp10 libgpg-error0 libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 liblz4-1 liblzma5 libmount1 "
    "libmpdec3 libncurses6 libncursesw6 libnsl2 libpam-modules-bin libpam-modules libpam-runtime libpam0g libpcre2-8-0 libpcre3 "
    "libprocps8 libpython3-stdlib libpython3.10-minimal libpython3.10-stdlib libreadline8 libselinux1 libsemanage-common "
    "libsemanage2 libsepol2 libsmartcols1 libsqlite3-0 libss2 libssl3 libstdc++6 libsystemd0 libtinfo6 libtirpc-common "
    "libtirpc3 libudev1 libuuid1 libzstd1 login logsave lsb-base mawk media-types mount ncurses-base ncurses-bin openssl passwd "
    "perl-base procps python3-distutils python3-lib2to3 python3-minimal python3-pip-whl python3-setuptools-whl python3-venv "
    "python3.10-minimal python3.10-venv python3.10 python3 readline-common sed sensible-utils sysvinit-utils tar tini usrmerge "
    "util-linux zlib1g"
)
BASE_UTILS = names("curl dumb-init gosu libbrotli1 libcurl4 libldap-2.5-0 libnghttp2-14 libpsl5 librtmp1 libsasl2-2 libsasl2-modules-db libssh2-1")
BOOKWORM_INCLUDE = ["python3-minimal", "libpython3.11-stdlib", "python3-venv", "tini", "ca-certificates"]
JAMMY_INCLUDE = ["python3-minimal", "libpython3.10-stdlib", "python3-venv", "tini", "ca-certificates"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("apt")


@pytest.fixture(scope="module")
def bookworm_builder(cache: Path) -> apt.Resolution:
    return apt.resolve_root(suite="bookworm", include=BOOKWORM_INCLUDE, merged_usr=True, cache=cache)


@pytest.mark.network
def test_bookworm_minbase_sets(bookworm_builder: apt.Resolution, cache: Path) -> None:
    assert {name for name, _ in bookworm_builder.packages} == BOOKWORM_BUILDER
    assert [pocket for pocket, _ in bookworm_builder.archives] == ["bookworm", "bookworm-updates", "bookworm-security"]
    assert all(re.fullmatch(r"\d{8}T\d{6}Z", date) for _, date in bookworm_builder.archives)
    runtime = apt.resolve_root(suite="bookworm", include=[p for p in BOOKWORM_INCLUDE if p != "python3-venv"], merged_usr=True, cache=cache)
    assert {name for name, _ in runtime.packages} == BOOKWORM_BUILDER - VENV_ONLY
    assert set(runtime.packages) <= set(bookworm_builder.packages)


@pytest.mark.network
def test_a_lock_proves_itself(bookworm_builder: apt.Resolution, cache: Path) -> None:
    started = time.monotonic()
    again = apt.resolve_root(suite="bookworm", include=BOOKWORM_INCLUDE, merged_usr=True, pins=dict(bookworm_builder.packages), cache=cache)
    assert again == bookworm_builder
    assert time.monotonic() - started < 15  # warm: lists fetched already


@pytest.mark.network
def test_without_the_hook_the_essential_phase_comes_first(cache: Path) -> None:
    # mmdebstrap installs the essential set before the includes: asking for usr-is-merged does
    # not keep init-system-helpers from pulling usrmerge (and perl) in that phase.
    names = {name for name, _ in apt.resolve_root(suite="bookworm", include=["usr-is-merged"], merged_usr=False, cache=cache).packages}
    assert {"usrmerge", "perl", "usr-is-merged"} <= names


@pytest.mark.network
def test_jammy_minbase_set(cache: Path) -> None:
    res = apt.resolve_root(suite="jammy", include=JAMMY_INCLUDE, merged_usr=True, cache=cache)
    assert {name for name, _ in res.packages} == JAMMY_BUILDER
    assert [pocket for pocket, _ in res.archives] == ["jammy", "jammy-updates", "jammy-security"]


@pytest.mark.network
def test_child_packages_on_the_builder(bookworm_builder: apt.Resolution, cache: Path) -> None:
    base = dict(bookworm_builder.packages)
    res = apt.resolve_added(suite="bookworm", base=base, install=["curl", "dumb-init", "gosu", "tzdata"], cache=cache)
    assert {name for name, _ in res.packages} == BASE_UTILS
    assert apt.resolve_added(suite="bookworm", base=base, install=["curl", "dumb-init", "gosu", "tzdata"], pins=dict(res.packages), cache=cache) == res


@pytest.mark.network
def test_unserved_and_unknown_packages(bookworm_builder: apt.Resolution, cache: Path) -> None:
    base = dict(bookworm_builder.packages)
    with pytest.raises(UnservedVersion, match=r"^tzdata 2024a-0\+deb12u1 is no longer served by the bookworm archive$") as info:
        apt.resolve_added(suite="bookworm", base=base, install=["curl"], pins={"tzdata": "2024a-0+deb12u1"}, cache=cache)
    assert info.value.packages == [("tzdata", "2024a-0+deb12u1")]
    with pytest.raises(UnservedVersion, match=r"libc6 2\.36-9\+deb12u1 is no longer served"):
        apt.resolve_added(suite="bookworm", base={**base, "libc6": "2.36-9+deb12u1"}, install=["curl"], cache=cache)
    with pytest.raises(LockError, match=r"^nosuchpkg-xyz is not in the archive of bookworm; check the package name$"):
        apt.resolve_root(suite="bookworm", include=["tini", "nosuchpkg-xyz"], merged_usr=True, cache=cache)
