"""The shape of the package: layers that import only downwards, one way out to programs and one
to registries, small modules, and test fakes that implement the adapters' Protocols."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from buildtool.adapters import protocols
from tests.fakes import FakeEngine, FakeRegistry

PACKAGE = Path(__file__).resolve().parent.parent / "buildtool"
# Lower ranks are read by higher ones, never the other way. Same rank: only inside one package.
RANKS = {
    "core": 0,
    "model": 1,
    "settings": 2,
    "adapters": 2,
    "render": 3,
    "plan": 4,
    "locking": 5,
    "execute": 5,
    "publish": 6,
    "report": 7,
    "deploy": 7,
    "pipeline": 8,
    "bake": 9,
    "repro": 9,
    "refresh": 9,
    "ci": 9,
    "bench": 10,
    "cli": 11,
    "__main__": 12,
}
PURE = ("model", "render", "plan")  # no engine, registry, programs or writes: adapters are not theirs to use


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__init__" else ""


def imports(path: Path) -> set[str]:
    """Every buildtool module this file imports (at any depth in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("buildtool"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("buildtool")}
    return {m for m in found if m in modules() or m.removesuffix(".__init__") in modules()}


def stdlib_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_every_module_has_a_layer() -> None:
    assert {layer(m) for m in modules()} - {""} <= set(RANKS)


@pytest.mark.parametrize("module", [m for m in modules() if layer(m)])
def test_imports_only_go_down(module: str) -> None:
    mine = layer(module)
    for target in imports(modules()[module]):
        theirs = layer(target)
        if theirs == mine or not theirs:
            continue
        assert RANKS[theirs] < RANKS[mine], f"{module} (layer {mine}) imports {target} (layer {theirs})"
        if mine in PURE:
            assert theirs != "adapters", f"{module} is pure but imports {target}"


def test_no_import_cycle() -> None:
    graph = {m: imports(p) for m, p in modules().items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [n]) if n in path else f"{m} -> {n}")
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_modules_are_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    assert {m: n for m, n in sizes.items() if n > 400} == {}
    assert sizes["buildtool.__main__"] < 200 and sizes["buildtool.cli.main"] < 200


def test_one_module_runs_programs_and_two_speak_http_registry_and_github() -> None:
    programs = [m for m, p in modules().items() if stdlib_imports(p) & {"subprocess", "os.system"}]
    http = [m for m, p in modules().items() if stdlib_imports(p) & {"urllib.request", "http.client", "requests", "httpx", "urllib3"}]
    assert programs == ["buildtool.adapters.host"]
    assert sorted(http) == ["buildtool.adapters.github", "buildtool.adapters.registry"]


def test_python_on_whales_only_behind_the_engine_adapter() -> None:
    users = [m for m, p in modules().items() if any(i.startswith("python_on_whales") for i in stdlib_imports(p))]
    assert users == ["buildtool.adapters.engine"]


def test_the_model_reads_no_environment() -> None:
    for m, p in modules().items():
        if layer(m) in ("core", "model", "render", "plan", "locking", "execute", "publish", "report", "pipeline"):
            assert "os.environ" not in p.read_text(), f"{m} reads os.environ; take a Settings or a mapping instead"


@pytest.mark.parametrize(("fake", "protocol"), [(FakeEngine, protocols.Engine), (FakeRegistry, protocols.Registry)])
def test_fakes_implement_the_protocols(fake: type, protocol: type) -> None:
    wanted = {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    for name in wanted:
        assert hasattr(fake, name), f"{fake.__name__} lacks {name}"
        theirs = inspect.signature(getattr(protocol, name))
        mine = inspect.signature(getattr(fake, name))
        assert list(mine.parameters) == list(theirs.parameters), f"{fake.__name__}.{name}{mine} != {protocol.__name__}.{name}{theirs}"
        for p in theirs.parameters.values():
            assert mine.parameters[p.name].kind == p.kind, f"{fake.__name__}.{name}: {p.name} is {mine.parameters[p.name].kind}"


def test_real_adapters_implement_the_protocols() -> None:
    from buildtool.adapters.engine import Docker
    from buildtool.adapters.registry import Registry

    for real, protocol in ((Docker, protocols.Engine), (Registry, protocols.Registry)):
        for name, value in vars(protocol).items():
            if callable(value) and not name.startswith("_"):
                assert list(inspect.signature(getattr(real, name)).parameters) == list(inspect.signature(value).parameters), (real, name)


def test_the_tool_lock_holds_every_dependency() -> None:
    """pyproject's dependencies are pinned in requirements/toolkit.in, which toolkit.txt locks with hashes."""
    import re
    import tomllib

    root = PACKAGE.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    def norm(name: str) -> str:  # PEP 503: ruamel.yaml, ruamel-yaml and Ruamel_Yaml are one project
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (root / "requirements" / "toolkit.in").read_text(), re.M)}
    locked = {norm(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\", (root / "requirements" / "toolkit.txt").read_text(), re.M)}
    for req in wanted:
        name = re.split(r"[=<>!~ ]", req, maxsplit=1)[0]
        assert norm(name) in pins, f"{name} (pyproject.toml) is not pinned in requirements/toolkit.in"
    assert all(locked.get(n) == v for n, v in pins.items()), "requirements/toolkit.txt is stale: nox -s lock_tools"


def test_every_third_party_import_is_declared() -> None:
    """`pip install -e .[test]` gives everything the toolkit and its tests import."""
    import ast
    import importlib.metadata
    import re
    import sys
    import tomllib

    root = PACKAGE.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[=<>!~ \[]", r, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")
                for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]}  # fmt: skip
    dists = importlib.metadata.packages_distributions()
    missing = set()
    for path in [*PACKAGE.rglob("*.py"), *(root / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top in sys.stdlib_module_names or top in ("buildtool", "tests", "__future__"):
                    continue
                for dist in dists.get(top, [top]):
                    if dist.lower().replace("_", "-").replace(".", "-") not in declared:
                        missing.add(f"{top} ({dist}), imported by {path.relative_to(root)}")
    assert not missing, sorted(missing)
