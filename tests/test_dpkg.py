"""buildtool/core/dpkg.py: the dependency closure the runtime roots keep, the lock check of a
bootstrap, and the export of a child family's OS packages from a builder root (on a fake root)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from buildtool.core import dpkg

STATUS = """\
Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u13

Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.21.22
Pre-Depends: libc6 (>= 2.34)

Package: mawk
Status: install ok installed
Architecture: amd64
Version: 1.3.4
Provides: awk

Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4+deb12u15
Pre-Depends: awk

Package: tini
Status: install ok installed
Architecture: amd64
Version: 0.19.0-1
Depends: libc6 (>= 2.34)

Package: curl
Status: install ok installed
Architecture: amd64
Version: 7.88.1-10+deb12u15
Depends: libc6 (>= 2.17), libcurl4 (= 7.88.1-10+deb12u15) | libcurl-gnutls4, dpkg

Package: libcurl4
Status: install ok installed
Architecture: amd64
Version: 7.88.1-10+deb12u15
Depends: libc6

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1
"""


def test_closure_follows_dependencies_takes_the_first_installed_alternative_and_leaves_package_managers_out() -> None:
    status = dpkg.stanzas(STATUS)
    assert "gone" not in status  # only installed packages count
    assert dpkg.closure(status, ["curl"]) == {"curl", "libcurl4", "libc6"}  # dpkg: cut, left dangling
    assert dpkg.closure(status, ["base-files"]) == {"base-files"}  # awk (mawk) is cut by its virtual name
    assert dpkg.closure(status, ["dpkg"]) == {"dpkg", "libc6"}  # a family that names it keeps it
    with pytest.raises(dpkg.DpkgError, match="nosuch is not installed"):
        dpkg.closure(status, ["nosuch"])


def test_check_names_every_difference_from_the_lock() -> None:
    locked = {n: v for n, v in dpkg.versions(STATUS).items()}
    assert dpkg.check(STATUS, locked) == []
    locked["tini"] = "0.19.0-2"
    locked["bash"] = "5.2.15-2+b13"
    del locked["curl"]
    assert dpkg.check(STATUS, locked) == [
        "tini 0.19.0-1 is installed, the lock says 0.19.0-2",
        "bash 5.2.15-2+b13 is locked but not installed",
        "curl 7.88.1-10+deb12u15 is installed but not locked",
    ]


def _root(tmp_path: Path) -> Path:
    """A builder root on disk: merged /usr, curl and libcurl4 with their files and dpkg lists."""
    root = tmp_path / "builder"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/curl").write_bytes(b"curl")
    os.chmod(root / "usr/bin/curl", 0o4755)  # setuid in the builder: the export drops it
    (root / "usr/lib/libcurl.so.4.8.0").write_bytes(b"lib")
    (root / "usr/lib/libcurl.so.4").symlink_to("libcurl.so.4.8.0")
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    # The builder's path-excludes leave the doc folders behind, empty but for copyright files.
    (root / "usr/share/man/man1").mkdir(parents=True)
    (root / "usr/share/doc/curl").mkdir(parents=True)
    (root / "usr/share/doc/curl/copyright").write_text("MIT")
    docs = "/usr/share\n/usr/share/man\n/usr/share/man/man1\n/usr/share/man/man1/curl.1.gz\n/usr/share/doc\n/usr/share/doc/curl\n"
    (info / "curl.list").write_text(f"/.\n/bin\n/bin/curl\n{docs}/usr/share/doc/curl/changelog.gz\n/usr/share/doc/curl/copyright\n")
    (info / "curl.md5sums").write_text("abc  usr/bin/curl\n")
    (info / "libcurl4:amd64.list").write_text("/.\n/usr\n/usr/lib\n/usr/lib/libcurl.so.4\n/usr/lib/libcurl.so.4.8.0\n")
    return root


def test_export_copies_what_the_parent_lacks_with_its_status_and_lists(tmp_path: Path) -> None:
    root = _root(tmp_path)
    parent = "".join(s + "\n\n" for n, s in dpkg.stanzas(STATUS).items() if n in ("libc6", "base-files", "mawk"))
    out = tmp_path / "staging"
    locked = {"curl": "7.88.1-10+deb12u15", "libcurl4": "7.88.1-10+deb12u15"}
    done = dpkg.export(root=root, parent_status=parent, out=out, packages=["curl"], locked=locked)
    assert done == ["curl 7.88.1-10+deb12u15", "libcurl4 7.88.1-10+deb12u15"]
    assert (out / "usr/bin/curl").read_bytes() == b"curl"  # /bin/curl of the list, under merged /usr
    assert not (out / "bin").exists()
    assert not (out / "usr/share/man").exists() and (out / "usr/share/doc/curl/copyright").read_text() == "MIT"
    assert stat.S_IMODE((out / "usr/bin/curl").stat().st_mode) == 0o755
    assert os.readlink(out / "usr/lib/libcurl.so.4") == "libcurl.so.4.8.0"
    assert (out / "var/lib/dpkg/info/curl.md5sums").is_file() and (out / "var/lib/dpkg/info/libcurl4:amd64.list").is_file()
    assert list(dpkg.versions((out / "var/lib/dpkg/status").read_text())) == ["base-files", "curl", "libc6", "libcurl4", "mawk"]


def test_export_refuses_what_the_lock_does_not_hold_and_a_parent_at_another_version(tmp_path: Path) -> None:
    root = _root(tmp_path)
    with pytest.raises(dpkg.DpkgError, match=r"libcurl4 7.88.1-10\+deb12u15 was installed but is not in the lock"):
        dpkg.export(root=root, parent_status="", out=tmp_path / "a", packages=["curl"], locked={"curl": "7.88.1-10+deb12u15", "libc6": "2.36-9+deb12u13"})
    older = dpkg.stanzas(STATUS)["libc6"].replace("2.36-9+deb12u13", "2.36-9+deb12u7")
    with pytest.raises(dpkg.DpkgError, match=r"libc6 is 2.36-9\+deb12u7 in the parent image but 2.36-9\+deb12u13 here"):
        dpkg.export(root=root, parent_status=older, out=tmp_path / "b", packages=["curl"], locked={})


def test_the_script_entry_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)
    pins = tmp_path / "pins"
    pins.write_text("".join(f"{n}={v}\n" for n, v in dpkg.versions(STATUS).items()))
    assert dpkg.main(["check", str(status), str(pins)]) == 0
    pins.write_text("tini=0.19.0-2\n")
    assert dpkg.main(["check", str(status), str(pins)]) == 1
    assert "the installed packages are not the locked ones" in capsys.readouterr().err
    assert dpkg.main(["purge-set", str(status), "tini"]) == 0
    assert capsys.readouterr().out.split() == ["base-files", "curl", "dpkg", "libcurl4", "mawk"]
