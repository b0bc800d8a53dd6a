"""OS package locks with the apt resolver faked: which families have one, what makes one stale,
what `lock` moves (only what it must), what a build's forward moves when the archive replaced a
version, and what `lock --check` says when the archive moved on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from buildtool.core.errors import UnservedVersion
from buildtool.locking import apt, oslock
from buildtool.model.oslocks import os_lock_path, parse_os_lock
from tests import memory
from tests.test_lock import restamp

ARCHIVES = (("bookworm", "20260711T101637Z"), ("bookworm-security", "20261121T005302Z"))


class Archive:
    """A fake archive: what apt would resolve, the versions it serves, and the calls made."""

    def __init__(self) -> None:
        self.served = {"apt": "2.6.1", "libc6": "2.36-9+deb12u13", "python3-minimal": "3.11.2-1+b1", "python3-venv": "3.11.2-1+b1",
                       "curl": "7.88.1-10+deb12u15", "libcurl4": "7.88.1-10+deb12u15", "clang-19": "1:19.1.7-3~deb12u1"}  # fmt: skip
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.pocket = {"curl": "bookworm-security", "libcurl4": "bookworm-security"}

    def _pick(self, names: list[str], pins: dict[str, str]) -> apt.Resolution:
        gone = [(n, v) for n, v in pins.items() if n in names and self.served.get(n) != v]
        if gone:
            raise UnservedVersion(gone, "bookworm")
        return apt.Resolution(packages=tuple(sorted((n, pins.get(n, self.served[n])) for n in names)), archives=ARCHIVES, apt="2.6.1")

    def resolve_root(self, *, include: list[str], merged_usr: bool, pins: dict[str, str], cache: Path, **source) -> apt.Resolution:
        self.calls.append(("root", dict(pins)))
        return self._pick(sorted({"libc6", *[p for p in include if p in self.served]}), pins)

    def resolve_added(self, *, base: dict[str, str], install: list[str], pins: dict[str, str], cache: Path, **source) -> apt.Resolution:
        self.calls.append(("added", dict(pins)))
        gone = [(n, v) for n, v in base.items() if n in self.served and self.served[n] != v]
        if gone:  # the base's stanzas come from the archive too
            raise UnservedVersion(gone, "bookworm")
        extra = ["libcurl4"] if "curl" in install else []
        return self._pick(sorted({*install, *extra} - set(base)), pins)

    def unserved(self, *, pins: dict[str, str], cache: Path, **source) -> list[tuple[str, str]]:
        self.calls.append(("unserved", dict(pins)))
        return sorted((n, v) for n, v in pins.items() if self.served.get(n, v) != v)

    def pockets(self, *, packages, cache: Path, **source) -> dict[tuple[str, str], str]:
        return {(n, v): self.pocket.get(n, "bookworm") for n, v in packages}


def _fleet(tmp_path: Path):
    fleet = memory.fleet(root=tmp_path)
    return dataclasses.replace(fleet, os_locks={})


def _lock(fleet, archive: Archive, **kw):
    return oslock.lock(fleet, cache=Path("/cache"), resolver=archive, **kw)


def _reload(fleet, tmp_path: Path):
    locks = {}
    for path in sorted((tmp_path / "lockfiles" / "os").glob("*.txt")):
        rel = path.relative_to(tmp_path).as_posix()
        locks[rel] = parse_os_lock(rel, path.read_text())
    return dataclasses.replace(fleet, os_locks=locks)


def test_which_families_have_which_sections() -> None:
    fleet = memory.fleet()
    got = {t.family: t.sections for t in oslock.os_targets(fleet)}
    assert got == {"base": ("root-builder", "root-runtime"), "utils": ("runtime",), "gpu": ("root-builder", "root-runtime"), "llm": ("builder",)}
    # An image root is not locked (its digest pins it), nor is anything below it.
    image = dataclasses.replace(fleet.families["base"], root=dataclasses.replace(fleet.families["base"].root, source="image", image="python:3.11"))
    assert "utils" not in {t.family for t in oslock.os_targets(dataclasses.replace(fleet, families={**fleet.families, "base": image}))}


def test_lock_writes_each_lock_with_its_archive_dates_and_is_stable(tmp_path: Path) -> None:
    archive = Archive()
    fleet = _fleet(tmp_path)
    outcomes = _lock(fleet, archive)
    assert [o.changed for o in outcomes] == [True] * 4
    text = (tmp_path / os_lock_path("utils")).read_text()
    assert "# archive: bookworm 20260711T101637Z, bookworm-security 20261121T005302Z" in text
    assert "[runtime]\ncurl=7.88.1-10+deb12u15\nlibcurl4=7.88.1-10+deb12u15\n" in text
    fleet = _reload(fleet, tmp_path)
    assert oslock.verify(fleet) == []
    archive.calls.clear()
    assert not any(o.resolved for o in _lock(fleet, archive))  # nothing changed: nothing resolved
    assert archive.calls == []


def test_a_relock_keeps_versions_unless_asked_and_a_moved_root_makes_children_stale(tmp_path: Path) -> None:
    archive = Archive()
    fleet = _fleet(tmp_path)
    _lock(fleet, archive)
    fleet = _reload(fleet, tmp_path)
    archive.served["curl"] = archive.served["libcurl4"] = "7.88.1-10+deb12u16"  # a security update
    outcomes = {o.target.family: o for o in _lock(fleet, archive, upgrade_packages=["curl"])}
    assert outcomes["utils"].changed and not outcomes["base"].resolved
    assert "curl=7.88.1-10+deb12u16" in (tmp_path / os_lock_path("utils")).read_text()
    # Asked for: curl; its old version was gone anyway, and libcurl4's too (held, it would not resolve).
    assert [(m.package, m.reason) for m in outcomes["utils"].moves] == [("curl", "upgraded"), ("libcurl4", "no longer served by the archive")]
    fleet = _reload(fleet, tmp_path)
    # The root moves: its children's locks are stale until they are resolved against it.
    archive.served["libc6"] = "2.36-9+deb12u14"
    _lock(fleet, archive, upgrade_packages=["libc6"])
    moved = _reload(fleet, tmp_path)
    assert oslock.verify(moved) == []  # lock resolved the children again, parents first
    # A child lock resolved against the old root is stale against the new one, though its packages are the same.
    path = os_lock_path("utils")
    assert moved.os_locks[path].sections == fleet.os_locks[path].sections
    old_child = dataclasses.replace(moved, os_locks={**moved.os_locks, path: fleet.os_locks[path]})
    assert oslock.verify(old_child) == [f"{path}: stale (its packages, or the versions it builds on, changed since it was locked); run `nox -s lock -- utils`"]


def test_check_proves_each_lock_against_the_archive(tmp_path: Path) -> None:
    archive = Archive()
    fleet = _fleet(tmp_path)
    _lock(fleet, archive)
    fleet = _reload(fleet, tmp_path)
    check = lambda **kw: oslock.check(fleet, cache=Path("/c"), resolver=archive, **kw)  # noqa: E731
    assert check() == oslock.Checked(problems=[], replaced=[])
    # The archive replaced a version: reported with the refresh, and a failure only where --locked.
    archive.served["clang-19"] = "1:19.1.7-3~deb12u2"
    checked = check()
    assert checked.problems == []
    assert checked.replaced == ["lockfiles/os/llm.txt: clang-19 1:19.1.7-3~deb12u1 no longer served by the bookworm archive; "
                                "`nox -s refresh` moves them (a build without --locked forwards them)"]  # fmt: skip
    assert check(locked=True) == oslock.Checked(problems=checked.replaced, replaced=[])
    # A lock that resolves differently still fails, whatever the archive replaced elsewhere: a hand
    # edit, its content hash made to match, adds a package no resolution of its inputs holds.
    path = tmp_path / os_lock_path("utils")
    path.write_text(path.read_text().replace("libcurl4=7.88.1-10+deb12u15\n", "libcurl4=7.88.1-10+deb12u15\nlibssh2-1=1.10.0-3+b1\n"))
    restamp(path)
    archive.served["libssh2-1"] = "1.10.0-3+b1"
    checked = oslock.check(_reload(fleet, tmp_path), cache=Path("/c"), resolver=archive)
    assert len(checked.problems) == 1 and checked.problems[0].startswith("lockfiles/os/utils.txt: differs from a fresh resolution")
    assert "-libssh2-1=1.10.0-3+b1" in checked.problems[0]
    assert [r.split(":")[0] for r in checked.replaced] == ["lockfiles/os/llm.txt"]


def test_a_lock_edited_by_hand_or_missing_is_a_problem_without_resolving(tmp_path: Path) -> None:
    fleet = memory.fleet()
    lock = fleet.os_locks[os_lock_path("utils")]
    edited = parse_os_lock(lock.path, lock.text.replace("curl=7.88.1-10+deb12u15", "curl=7.88.1-10+deb12u9"))
    problems = oslock.verify(dataclasses.replace(fleet, os_locks={**fleet.os_locks, lock.path: edited}))
    assert problems == [f"{lock.path}: was edited by hand (its content no longer matches its content-sha256); run `nox -s lock -- utils`"]
    missing = {k: v for k, v in fleet.os_locks.items() if k != lock.path}
    assert oslock.verify(dataclasses.replace(fleet, os_locks=missing)) == [f"{lock.path}: missing; run `nox -s lock`"]
    changed = dataclasses.replace(fleet.families["utils"], os_packages=("curl", "gosu"))
    stale = dataclasses.replace(fleet, families={**fleet.families, "utils": changed})
    assert [p for p in oslock.verify(stale) if "stale" in p and "utils" in p]


def test_forward_moves_exactly_the_replaced_versions_and_names_each_move(tmp_path: Path) -> None:
    archive = Archive()
    fleet = _fleet(tmp_path)
    _lock(fleet, archive)
    fleet = _reload(fleet, tmp_path)
    before = {path: (tmp_path / path).read_text() for path in fleet.os_locks}
    archive.served["curl"] = archive.served["libcurl4"] = "7.88.1-10+deb12u16"  # replaced in place by a security update
    archive.served["clang-19"] = "1:19.1.7-3~deb12u2"  # llm's: not read by this build
    gone = oslock.unserved(fleet, {os_lock_path("utils"): ("runtime",)}, cache=Path("/c"), resolver=archive)
    assert gone == {os_lock_path("utils"): [("curl", "7.88.1-10+deb12u15"), ("libcurl4", "7.88.1-10+deb12u15")]}
    archive.calls.clear()
    moves = oslock.forward(fleet, gone, cache=Path("/c"), resolver=archive)
    assert [m.line() for m in moves] == [
        "curl 7.88.1-10+deb12u15 -> 7.88.1-10+deb12u16 (bookworm-security): no longer served by the archive",
        "libcurl4 7.88.1-10+deb12u15 -> 7.88.1-10+deb12u16 (bookworm-security): no longer served by the archive",
    ]
    assert [kind for kind, _ in archive.calls if kind != "unserved"] == ["added"]  # only utils was resolved again
    after = {path: (tmp_path / path).read_text() for path in fleet.os_locks}
    assert {p for p in after if after[p] != before[p]} == {os_lock_path("utils")}
    assert oslock.verify(_reload(fleet, tmp_path)) == []


def test_a_child_to_resolve_again_reads_its_root_whose_replaced_versions_move_too(tmp_path: Path) -> None:
    archive = Archive()
    fleet = _fleet(tmp_path)
    _lock(fleet, archive)
    fleet = _reload(fleet, tmp_path)
    archive.served["libc6"] = "2.36-9+deb12u14"
    wanted = {os_lock_path("utils"): ("runtime",)}
    assert oslock.unserved(fleet, wanted, cache=Path("/c"), resolver=archive) == {}  # the child installs nothing of its root
    archive.served["curl"] = archive.served["libcurl4"] = "7.88.1-10+deb12u16"
    gone = oslock.unserved(fleet, wanted, cache=Path("/c"), resolver=archive)
    assert set(gone) == {os_lock_path("utils"), os_lock_path("base")}
    assert gone[os_lock_path("base")] == [("libc6", "2.36-9+deb12u13")]
    moves = oslock.forward(fleet, gone, cache=Path("/c"), resolver=archive)
    assert {(m.path, m.package, m.new) for m in moves} == {
        (os_lock_path("base"), "libc6", "2.36-9+deb12u14"),  # both root sections
        (os_lock_path("utils"), "curl", "7.88.1-10+deb12u16"),
        (os_lock_path("utils"), "libcurl4", "7.88.1-10+deb12u16"),
    }
    assert oslock.verify(_reload(fleet, tmp_path)) == []  # the children of the moved root are resolved against it again
