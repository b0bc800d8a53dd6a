"""The toolkit writes and deletes only its own: a marker counts in its own folder alone, and no
symlink below an owned folder is followed, by a write, a lock or a delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildtool.adapters.files import MARKER, MARKER_TEXT, atomic_write, held, owned_dir, remove, write_context
from buildtool.cli.main import main
from buildtool.core.errors import OutputError


def test_a_marker_in_a_folder_above_owns_nothing_below(tmp_path: Path, fleet_dir: Path) -> None:
    shared = tmp_path / "shared-tmp"  # a folder anyone may write to, such as /tmp
    (shared / "someone" / "work").mkdir(parents=True)
    (shared / MARKER).write_text(MARKER_TEXT)  # planted by another user
    kept = shared / "someone" / "work" / "thesis.tex"
    kept.write_text("years of work")
    assert main(["--root", str(fleet_dir), "render", "--out", str(shared / "someone" / "work")]) == OutputError.exit_code
    assert kept.read_text() == "years of work"
    with pytest.raises(OutputError, match=r"no \.buildtool-output marker of its own"):
        owned_dir(shared / "someone", what="render --out", clear=True)
    assert kept.exists()


def test_a_new_folder_below_an_owned_one_gets_its_own_marker(tmp_path: Path) -> None:
    state = owned_dir(tmp_path / "state", what="state dir")
    contexts = owned_dir(state / "contexts", what="build contexts")
    assert (contexts / MARKER).is_file()


def test_the_folders_a_claim_creates_above_it_are_owned_so_a_later_claim_of_them_succeeds(tmp_path: Path) -> None:
    # A fresh clone: a cache below the state dir is claimed before the state dir itself.
    state = tmp_path / "build" / "test-state"
    owned_dir(state / "apt", what="apt index cache")
    (state / "logs").mkdir()
    assert owned_dir(state, what="state dir") == state
    assert (tmp_path / "build" / MARKER).read_text() == MARKER_TEXT
    assert not (tmp_path / MARKER).exists()  # what existed before stays unmarked
    # A folder the toolkit did not create is still refused once something is in it.
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        owned_dir(tmp_path / "user", what="state dir")


def test_threads_that_claim_folders_below_one_new_folder_at_once_all_succeed(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for attempt in range(20):
        state = tmp_path / f"state-{attempt}"
        with ThreadPoolExecutor(max_workers=8) as pool:
            made = list(pool.map(lambda i, state=state: owned_dir(state / "contexts" / f"image-{i}", what="build context"), range(8)))
        assert all((folder / MARKER).is_file() for folder in made)
        assert (state / "contexts" / MARKER).is_file() and (state / MARKER).is_file()


def test_writes_and_locks_follow_no_symlink_below_an_owned_folder(tmp_path: Path) -> None:
    state = owned_dir(tmp_path / "state", what="state dir")
    outside = tmp_path / "outside"
    outside.mkdir()
    (state / "reports").symlink_to(outside)
    with pytest.raises(OutputError, match="reports is a symlink inside the toolkit's folder"):
        atomic_write(state / "reports" / "sizes.json", "{}")
    (state / "run.lock").symlink_to(outside / "victim")
    with pytest.raises(OutputError, match=r"run\.lock is a symlink"), held(state / "run.lock", waiting=print):
        pass
    (state / "contexts").symlink_to(outside)
    with pytest.raises(OutputError, match="symlink"):
        write_context(state / "contexts" / "x", [("Dockerfile", b"FROM scratch\n")])
    assert list(outside.iterdir()) == []  # nothing written through any link


def test_a_planted_marker_symlink_is_refused_and_never_written_through(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "target"
    (out / MARKER).symlink_to(target)
    with pytest.raises(OutputError, match="not the toolkit's marker"):
        owned_dir(out, what="render --out")
    assert not target.exists()


def test_removing_a_folder_unlinks_the_symlinks_in_it(tmp_path: Path) -> None:
    state = owned_dir(tmp_path / "state", what="state dir")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    (state / "scan").mkdir()
    (state / "scan" / "link").symlink_to(precious)
    remove(state / "scan")
    assert (precious / "keep.txt").read_text() == "keep" and not (state / "scan").exists()


def test_a_state_dir_of_the_old_layout_is_upgraded_once(tmp_path: Path) -> None:
    """Its one marker on top covered every folder below: each gets its own, so a later run may
    clear them; a folder made by someone else later is not adopted."""
    from buildtool.adapters.files import adopt

    state = tmp_path / "build"
    (state / "contexts" / "base-python").mkdir(parents=True)
    (state / "contexts" / "base-python" / "Dockerfile").write_text("FROM scratch\n")
    (state / "link").symlink_to(tmp_path)
    (state / MARKER).write_text("This folder is written by buildtool; everything in it may be deleted and regenerated.\n")  # the old text
    adopt(state)
    assert (state / "contexts" / MARKER).is_file() and (state / "contexts" / "base-python" / MARKER).is_file()
    assert not (tmp_path / MARKER).exists()  # a symlinked folder is not entered
    write_context(state / "contexts" / "base-python", [("Dockerfile", b"FROM scratch\n")])  # clearable now
    (state / "later").mkdir()
    adopt(state)
    assert not (state / "later" / MARKER).exists()
