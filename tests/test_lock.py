"""Locks: format parsing, install sets, staleness, and the compile command lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildtool import lock as locking
from buildtool.__main__ import main
from buildtool.config import load_fleet
from buildtool.errors import LockError
from buildtool.lockfile import CONTENT_KEY, content_hash, install_set, parse_lock, read_lock

PARENT = """\
# header
#
numpy==1.26.4 \\
    --hash=sha256:aaa \\
    --hash=sha256:bbb
    # via -r base.in
pydantic==2.7.4 \\
    --hash=sha256:ccc
"""
CHILD = PARENT + """\
gunicorn==22.0.0 \\
    --hash=sha256:ddd
    # via -r child.in
packaging==24.1 \\
    --hash=sha256:eee
"""


def test_parse_lock_reads_pins_and_hash_blocks() -> None:
    lock = parse_lock(Path("x.txt"), CHILD)
    assert {n: p.version for n, p in lock.pins.items()} == {
        "numpy": "1.26.4",
        "pydantic": "2.7.4",
        "gunicorn": "22.0.0",
        "packaging": "24.1",
    }
    assert lock.pins["numpy"].block.splitlines() == ["numpy==1.26.4 \\", "    --hash=sha256:aaa \\", "    --hash=sha256:bbb"]


def test_install_set_is_the_child_minus_the_parent() -> None:
    own = install_set(parse_lock(Path("c"), CHILD), parse_lock(Path("p"), PARENT))
    assert own.startswith("gunicorn==22.0.0")
    assert "numpy" not in own and "pydantic" not in own
    assert "--hash=sha256:eee" in own


def test_shipped_locks_match_their_inputs(fleet_dir: Path) -> None:
    assert locking.verify(load_fleet(fleet_dir)) == []


def test_every_lock_is_fully_hashed(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    for target in locking.targets(fleet):
        lock = read_lock(target.path)
        assert lock is not None and lock.pins, target.path
        for pin in lock.pins.values():
            assert "--hash=sha256:" in pin.block, (target.path, pin.name)


def test_children_keep_their_parents_pins(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    for target in locking.targets(fleet):
        if target.constraints:
            mine, parent = read_lock(target.path), read_lock(target.constraints)
            for name, pin in parent.pins.items():
                if name in mine.pins:
                    assert mine.pins[name].version == pin.version, (target.name, name)


def test_check_reports_stale_and_missing_locks(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fam = fleet_dir / "families" / "family-web.toml"
    fam.write_text(fam.read_text().replace('"gunicorn==23.0.0"', '"gunicorn==22.0.0"'))
    (fleet_dir / "lockfiles" / "base-gpu-cu121.txt").unlink()
    assert main(["--root", str(fleet_dir), "lock", "--check"]) == LockError.exit_code
    err = capsys.readouterr().err
    assert "lockfiles/family-web.txt: stale" in err
    assert "lockfiles/base-gpu-cu121.txt: missing" in err
    assert "Traceback" not in err


def restamp(path: Path) -> None:
    """Rewrite the content hash of an edited lock, as someone covering a hand edit would."""
    text = path.read_text()
    lines = [f"# {CONTENT_KEY}: {content_hash(text)}" if line.startswith(f"# {CONTENT_KEY}: ") else line for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n")


def test_check_reports_a_child_that_moved_a_parent_pin(fleet_dir: Path) -> None:
    lock = fleet_dir / "lockfiles" / "family-web.txt"
    text = lock.read_text()
    starlette = read_lock(fleet_dir / "lockfiles" / "base-cpu-pydeps.txt").pins["starlette"].version
    lock.write_text(text.replace(f"starlette=={starlette}", "starlette==0.0.1"))
    problems = locking.verify(load_fleet(fleet_dir))
    assert problems == ["lockfiles/family-web.txt: was edited by hand (its content no longer matches its content-sha256); run `nox -s lock -- family-web`"]
    restamp(lock)
    problems = locking.verify(load_fleet(fleet_dir))
    assert any("starlette==0.0.1 but its parent pins" in p for p in problems)


def test_parent_change_makes_children_stale(fleet_dir: Path) -> None:
    lock = fleet_dir / "lockfiles" / "base-cpu-pydeps.txt"
    lock.write_text(lock.read_text().replace("numpy==1.26.4", "numpy==1.26.3"))
    problems = locking.verify(load_fleet(fleet_dir))
    assert any(p.startswith("lockfiles/family-web.txt: stale") for p in problems)


def fake_compiler(monkeypatch: pytest.MonkeyPatch, output: str, inspect=lambda argv: None) -> list[tuple[list[str], dict]]:
    """Replace the lock engine with one that runs ``inspect(argv)`` (its temporary input files exist
    only then) and writes ``output`` to its --output-file; return its calls."""
    calls: list[tuple[list[str], dict]] = []

    def fake_run(argv, **kwargs):
        calls.append((list(argv), kwargs))
        inspect(argv)
        Path(argv[argv.index("--output-file") + 1]).write_text(output)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(locking.cmd, "run", fake_run)
    return calls


def test_uv_command_line_and_constraints(fleet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def constraints_are_plain_pins(argv: list[str]) -> None:
        constraints = Path(argv[argv.index("--constraints") + 1]).read_text()
        assert "fastapi==" in constraints and "--hash" not in constraints

    header = "# This file was autogenerated by uv via the following command:\n#    nox -s lock\n"
    calls = fake_compiler(monkeypatch, header + "gunicorn==22.0.0 \\\n    --hash=sha256:abc\n", constraints_are_plain_pins)
    fleet = load_fleet(fleet_dir)
    (target,) = locking.targets(fleet, ["family-web"])
    locking.compile_target(target)
    argv, kwargs = calls[0]
    assert argv[:3] == ["uv", "pip", "compile"]
    for flag, value in (("--python-version", "3.11"), ("--python-platform", locking.PLATFORM), ("--index-url", locking.INDEX_URL)):
        assert argv[argv.index(flag) + 1] == value
    assert "--generate-hashes" in argv and "--no-config" in argv
    assert "--no-python-downloads" in argv  # else uv fetches a CPython from GitHub for other versions
    assert kwargs["env"]["PIP_CONFIG_FILE"] == "/dev/null"
    written = read_lock(target.path)
    assert written.header_value(locking.INPUTS_KEY) == target.inputs_hash()
    assert all("family-web" not in p for p in locking.verify(fleet))


def test_build_requirements_lock_without_dependencies(fleet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_compiler(monkeypatch, "cmake==4.4.4 \\\n    --hash=sha256:abc\n")
    fleet = load_fleet(fleet_dir)
    (target,) = locking.targets(fleet, ["family-llm-cu121.build"])
    assert target.no_deps and target.constraints == fleet_dir / "lockfiles" / "family-llm-cu121.txt"
    assert target.path == fleet_dir / "lockfiles" / "family-llm-cu121.build.txt"
    locking.compile_target(target)
    assert "--no-deps" in calls[0][0]
    (family,) = locking.targets(fleet, ["family-llm-cu121"])
    assert family.inputs_hash() != target.inputs_hash()
    with pytest.raises(LockError, match="cannot lock packages without their dependencies"):
        locking.compile_target(target, engine="pip-compile")


def test_pip_compile_refuses_another_python(fleet_dir: Path) -> None:
    (target,) = locking.targets(load_fleet(fleet_dir), ["legacy-py310-cpu"])
    with pytest.raises(LockError, match="use --engine uv"):
        locking.compile_target(target, engine="pip-compile")


def test_unknown_lock_target(fleet_dir: Path) -> None:
    with pytest.raises(LockError, match="nothing to lock for base-python"):
        locking.targets(load_fleet(fleet_dir), ["base-python"])


@pytest.mark.network
def test_uv_and_pip_compile_agree(fleet_dir: Path) -> None:
    """Both engines produce the same pins and hashes for the same input (real PyPI)."""
    (target,) = locking.targets(load_fleet(fleet_dir), ["base-cpu-pydeps"])
    locking.compile_target(target, engine="uv")
    uv_lock = read_lock(target.path)
    locking.compile_target(target, engine="pip-compile")
    pip_lock = read_lock(target.path)
    assert {n: p.version for n, p in uv_lock.pins.items()} == {n: p.version for n, p in pip_lock.pins.items()}
    hashes = lambda lock: {n: sorted(line.strip(" \\") for line in p.block.splitlines()[1:]) for n, p in lock.pins.items()}  # noqa: E731
    assert hashes(uv_lock) == hashes(pip_lock)


# --- against the real index (uv, PyPI) --------------------------------------------------------


def lock_texts(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted((root / "lockfiles").rglob("*.txt"))}


@pytest.mark.network
def test_lock_check_proves_the_shipped_locks(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(fleet_dir), "lock", "--check"]) == 0, capsys.readouterr().err


@pytest.mark.network
def test_lock_check_catches_a_covered_hand_edit(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hand edit whose content hash was recomputed still fails: the fresh resolution differs."""
    lock = fleet_dir / "lockfiles" / "family-web.txt"
    lock.write_text(lock.read_text().replace("gunicorn==23.0.0", "gunicorn==22.0.0"))
    restamp(lock)
    assert main(["--root", str(fleet_dir), "lock", "--check"]) == LockError.exit_code
    err = capsys.readouterr().err
    assert "lockfiles/family-web.txt: differs from a fresh resolution" in err
    assert "-gunicorn==22.0.0 \\" in err and "+gunicorn==23.0.0 \\" in err


@pytest.mark.network
def test_adding_a_service_changes_no_family_lock(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = lock_texts(fleet_dir)
    (fleet_dir / "services" / "NewAgent.toml").write_text(
        'family = "family-web"\nmachines = ["pc2"]\nport = 7301\nhealth_port = 8301\nrequirements = ["httpx==0.27.0"]\n'
    )
    assert main(["--root", str(fleet_dir), "lock"]) == 0, capsys.readouterr().err
    after = lock_texts(fleet_dir)
    assert set(after) - set(before) == {"lockfiles/services/NewAgent.txt"}
    assert {k: after[k] for k in before} == before  # byte-identical, GPU families included
    assert "httpx==0.27.0" in after["lockfiles/services/NewAgent.txt"]
    out = capsys.readouterr().out
    assert "1 of 10 locks changed" in out
    assert main(["--root", str(fleet_dir), "lock"]) == 0  # and again: nothing resolved, nothing written
    assert "0 of 10 locks changed" in capsys.readouterr().out
    assert lock_texts(fleet_dir) == after


@pytest.mark.network
def test_upgrade_package_moves_only_that_pin(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = fleet_dir / "lockfiles" / "base-cpu-pydeps.txt"
    current = read_lock(lock).pins["idna"].version
    lock.write_text(lock.read_text().replace(f"idna=={current}", "idna==3.7"))
    restamp(lock)  # an older pin that still fits: resolving again keeps it (stable) ...
    assert main(["--root", str(fleet_dir), "lock", "base-cpu-pydeps"]) == 0
    assert "resolved, unchanged" in capsys.readouterr().out
    assert read_lock(lock).pins["idna"].version == "3.7"
    others = {n: p.version for n, p in read_lock(lock).pins.items() if n != "idna"}
    # ... and --upgrade-package moves it, and nothing else.
    assert main(["--root", str(fleet_dir), "lock", "--upgrade-package", "idna"]) == 0, capsys.readouterr().err
    assert read_lock(lock).pins["idna"].version != "3.7"
    assert {n: p.version for n, p in read_lock(lock).pins.items() if n != "idna"} == others
