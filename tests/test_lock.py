"""Locks: format parsing, install sets, staleness, and the compile command lines."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from buildtool.cli.main import main
from buildtool.core.errors import LockError
from buildtool.locking import lock as locking
from buildtool.locking import resolver
from buildtool.locking.targets import INDEX_URL, PLATFORM, targets
from buildtool.model.load import load_fleet
from buildtool.model.locks import CONTENT_KEY, INPUTS_KEY, content_hash, install_set, parse_lock, stamp


def read_lock(path: Path):
    return parse_lock(path.name, path.read_text())

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
    lock = parse_lock("x.txt", CHILD)
    assert {n: p.version for n, p in lock.pins.items()} == {
        "numpy": "1.26.4",
        "pydantic": "2.7.4",
        "gunicorn": "22.0.0",
        "packaging": "24.1",
    }
    assert lock.pins["numpy"].block.splitlines() == ["numpy==1.26.4 \\", "    --hash=sha256:aaa \\", "    --hash=sha256:bbb"]


def test_install_set_is_the_child_minus_the_parent() -> None:
    own = install_set(parse_lock("c", CHILD), parse_lock("p", PARENT))
    assert own.startswith("gunicorn==22.0.0")
    assert "numpy" not in own and "pydantic" not in own
    assert "--hash=sha256:eee" in own


def test_shipped_locks_match_their_inputs(fleet_dir: Path) -> None:
    assert locking.verify(load_fleet(fleet_dir)) == []


def test_every_lock_is_fully_hashed(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    for target in targets(fleet):
        lock = fleet.locks[target.path]
        assert lock.pins, target.path
        for pin in lock.pins.values():
            assert "--hash=sha256:" in pin.block, (target.path, pin.name)


def test_children_keep_their_parents_pins(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    for target in targets(fleet):
        if target.constraints:
            mine, parent = fleet.locks[target.path], fleet.locks[target.constraints]
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


@pytest.mark.parametrize("parent_moves", [False, True])
def test_a_child_resolves_alongside_its_parent_and_again_only_when_the_parent_moved(fleet_dir: Path, parent_moves: bool) -> None:
    fleet = load_fleet(fleet_dir)
    calls: list[tuple[str, str | None]] = []
    first_round = threading.Barrier(2, timeout=10)  # parent and child are resolved at once
    added = "six==1.16.0 \\\n    --hash=sha256:" + "0" * 64

    def resolve(t, parent, *, engine, preferences, upgrade_packages, ca_bundle):
        calls.append((t.name, parent.text if parent else None))
        if len(calls) <= 2:
            first_round.wait()
        if not parent_moves:
            return fleet.locks[t.path].text
        pins = {**(parent.pins if parent else {}), **fleet.locks[t.path].pins}
        body = "".join(f"{p.block}\n" for _, p in sorted(pins.items())) + (f"{added}\n" if t.name == "base-cpu-pydeps" else "")
        return stamp("# resolved in the test\n" + body, t.inputs_hash(parent), engine)

    outcomes = locking.lock(fleet, ["base-cpu-pydeps", "family-web"], upgrade=True, resolve=resolve)
    assert [(o.target.name, o.changed) for o in outcomes] == [("base-cpu-pydeps", parent_moves), ("family-web", parent_moves)]
    new_parent = (fleet_dir / "lockfiles" / "base-cpu-pydeps.txt").read_text()
    if parent_moves:  # the first result of the child was against the old lock: resolved again on the new one
        assert [name for name, _ in calls] == ["base-cpu-pydeps", "family-web", "family-web"]
        assert calls[-1][1] == new_parent and "six==1.16.0" in (fleet_dir / "lockfiles" / "family-web.txt").read_text()
    else:
        assert sorted(name for name, _ in calls) == ["base-cpu-pydeps", "family-web"]
    assert not [p for p in locking.verify(load_fleet(fleet_dir), ["family-web"])]


def fake_runner(output: str, inspect=lambda argv: None) -> tuple[list[tuple[list[str], dict]], object]:
    """A command runner standing in for the lock engine: runs ``inspect(argv)`` (its temporary input
    files exist only then) and writes ``output`` to its --output-file; returns its calls and itself."""
    calls: list[tuple[list[str], dict]] = []

    def run(argv, **kwargs):
        calls.append((list(argv), kwargs))
        inspect(argv)
        Path(argv[argv.index("--output-file") + 1]).write_text(output)
        return subprocess.CompletedProcess(argv, 0, "", "")

    return calls, run


def test_uv_command_line_and_constraints(fleet_dir: Path) -> None:
    def constraints_are_plain_pins(argv: list[str]) -> None:
        constraints = Path(argv[argv.index("--constraints") + 1]).read_text()
        assert "fastapi==" in constraints and "--hash" not in constraints

    header = "# This file was autogenerated by uv via the following command:\n#    nox -s lock\n"
    calls, runner = fake_runner(header + "gunicorn==22.0.0 \\\n    --hash=sha256:abc\n", constraints_are_plain_pins)
    fleet = load_fleet(fleet_dir)
    (target,) = targets(fleet, ["family-web"])
    parent = fleet.locks[target.constraints]
    text = resolver.resolve(target, parent, runner=runner, ca_bundle=Path("/ca.crt"))
    argv, kwargs = calls[0]
    assert argv[:3] == ["uv", "pip", "compile"]
    for flag, value in (("--python-version", "3.11"), ("--python-platform", PLATFORM), ("--index-url", INDEX_URL)):
        assert argv[argv.index(flag) + 1] == value
    assert "--generate-hashes" in argv and "--no-config" in argv
    assert "--no-python-downloads" in argv  # else uv fetches a CPython from GitHub for other versions
    assert kwargs["env"]["PIP_CONFIG_FILE"] == "/dev/null" and kwargs["env"]["SSL_CERT_FILE"] == "/ca.crt"
    written = parse_lock(target.path, text)
    assert written.header_value(INPUTS_KEY) == target.inputs_hash(parent)
    assert not written.edited()


def test_preferences_and_upgrade_packages_reach_the_engine(fleet_dir: Path) -> None:
    fleet = load_fleet(fleet_dir)
    (target,) = targets(fleet, ["base-cpu-pydeps"])
    current = fleet.locks[target.path]
    seen: dict[str, str] = {}
    calls, runner = fake_runner(current.text, lambda argv: seen.update(pref=Path(argv[argv.index("--output-file") + 1]).read_text()))
    resolver.resolve(target, None, preferences=current.text, upgrade_packages=["idna"], runner=runner)
    assert seen["pref"] == current.text  # the existing lock is the engine's output file: its pins are preferred
    argv = calls[0][0]
    assert argv[argv.index("--upgrade-package") + 1] == "idna"


def test_build_requirements_lock_without_dependencies(fleet_dir: Path) -> None:
    calls, runner = fake_runner("cmake==4.4.4 \\\n    --hash=sha256:abc\n")
    fleet = load_fleet(fleet_dir)
    (target,) = targets(fleet, ["family-llm-cu121.build"])
    assert target.no_deps and target.constraints == "lockfiles/family-llm-cu121.txt"
    assert target.path == "lockfiles/family-llm-cu121.build.txt"
    parent = fleet.locks[target.constraints]
    resolver.resolve(target, parent, runner=runner)
    assert "--no-deps" in calls[0][0]
    (family,) = targets(fleet, ["family-llm-cu121"])
    assert family.inputs_hash(fleet.locks["lockfiles/family-torch-cu121.txt"]) != target.inputs_hash(parent)
    with pytest.raises(LockError, match="cannot lock packages without their dependencies"):
        resolver.resolve(target, parent, engine="pip-compile", runner=runner)


def test_pip_compile_refuses_another_python(fleet_dir: Path) -> None:
    (target,) = targets(load_fleet(fleet_dir), ["legacy-py310-cpu"])
    with pytest.raises(LockError, match="use --engine uv"):
        resolver.resolve(target, None, engine="pip-compile")


def test_unknown_lock_target(fleet_dir: Path) -> None:
    with pytest.raises(LockError, match="nothing to lock for base-python"):
        targets(load_fleet(fleet_dir), ["base-python"])


@pytest.mark.network
def test_uv_and_pip_compile_agree(fleet_dir: Path) -> None:
    """Both engines produce the same pins and hashes for the same input (real PyPI)."""
    (target,) = targets(load_fleet(fleet_dir), ["base-cpu-pydeps"])
    uv_lock = parse_lock(target.path, resolver.resolve(target, None, engine="uv"))
    pip_lock = parse_lock(target.path, resolver.resolve(target, None, engine="pip-compile"))
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
    assert "1 of 14 locks changed" in out  # 10 Python locks and 4 OS package locks
    assert main(["--root", str(fleet_dir), "lock"]) == 0  # and again: nothing resolved, nothing written
    assert "0 of 14 locks changed" in capsys.readouterr().out
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
