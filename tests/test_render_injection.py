"""No fleet value can change the shape of a rendered Dockerfile.

Every string field that the schema lets hold quotes, ``$``, backslashes, ``{{ }}``, backticks
and non-ASCII text gets such a value (and line breaks where the field is written as JSON:
entrypoints); every Dockerfile of the fleet is rendered and parsed with ``dockerfile-parse``;
the instruction list, and the keys each ENV and LABEL sets, must equal the clean fleet's.
The fields that forbid these characters are rejected by validation (tests/test_hostile_inputs.py).
That the values also arrive unchanged in a built image is checked against the real engine in
tests/engine/test_build.py.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from dockerfile_parse import DockerfileParser

from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from tests.conftest import REPO

# One line, every character class a Dockerfile or a template engine treats specially.
LINE = "He said \"hi\" 'q' $HOME ${PATH} $(id) `id` \\ \\n {{ x }} {% if %} # not a comment café — 日本 \\"
# Build stages substitute ${CMAKE_CUDA_ARCHITECTURES}: any other reference is refused there.
BUILD_LINE = "cost $5 \"q\" \\ {{ x }} é ${CMAKE_CUDA_ARCHITECTURES} \\"
# Exec-form JSON carries line breaks too.
MULTI = LINE + "\nRUN touch /pwned\nUSER 0:0\n"


def toml(value: object) -> str:
    return json.dumps(value)  # JSON strings and arrays of strings are TOML too


def hostile_copy(root: Path) -> None:
    for path in (root / "families").glob("*.toml"):
        text = re.sub(r'^description = ".*"$', lambda _: f"description = {toml(LINE)}", path.read_text(), count=1, flags=re.M)
        path.write_text(text)
    utils = root / "families" / "base-utils.toml"
    utils.write_text(utils.read_text().replace('TZ = "Etc/UTC"', f'TZ = "Etc/UTC"\nHOSTILE = {toml(LINE)}'))
    llm = root / "families" / "family-llm-cu121.toml"
    llm.write_text(llm.read_text().replace('SKBUILD_WHEEL_EXCLUDE = "/lib/;/include/;/bin/"', f"SKBUILD_WHEEL_EXCLUDE = {toml(BUILD_LINE)}"))
    for path in (root / "machines").glob("*.toml"):
        text = re.sub(r'^description = ".*"$', lambda _: f"description = {toml(LINE)}", path.read_text(), count=1, flags=re.M)
        text = re.sub(r'^gpu = "(.*)"$', lambda m: f"gpu = {toml(m.group(1) + ' ' + LINE)}", text, count=1, flags=re.M)
        path.write_text(text + f"HOSTILE_PROFILE = {toml(LINE)}\n")
    for path in (root / "services").glob("*.toml"):
        text = re.sub(r'^needs = ".*"$', lambda _: f"needs = {toml(LINE)}", path.read_text(), count=1, flags=re.M)
        path.write_text(f'entrypoint = {toml(["python", "-c", MULTI])}\n{text}\n[env]\nHOSTILE_ENV = {toml(LINE)}\n')


def shapes(root: Path) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Per image: each instruction's name, with the keys it sets (ENV and LABEL)."""
    plan = make_plan(load_fleet(root), all_families=True, all_services=True)
    out = {}
    for step in plan.steps:
        parser = DockerfileParser(fileobj=io.BytesIO())
        parser.content = step.rendered.dockerfile
        shape = []
        for ins in parser.structure:
            keys: tuple[str, ...] = ()
            if ins["instruction"] in ("ENV", "LABEL"):
                keys = tuple(re.findall(r'(?:^|\s)([A-Za-z_][A-Za-z0-9_.-]*)=(?="|\S)', ins["value"]))
            shape.append((ins["instruction"], keys))
        out[step.key] = shape
    return out


def test_hostile_values_leave_every_instruction_list_unchanged(fleet_dir: Path) -> None:
    clean = shapes(fleet_dir)
    hostile_copy(fleet_dir)
    fleet = load_fleet(fleet_dir)
    assert fleet.families["base-python"].description == LINE  # the values did load
    assert fleet.services["ServiceRegistry"].entrypoint[-1] == MULTI
    dirty = shapes(fleet_dir)
    assert dirty.keys() == clean.keys()
    added = {"HOSTILE", "HOSTILE_ENV", "HOSTILE_PROFILE"}

    def strip(shape: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, tuple[str, ...]]]:
        return [(name, tuple(k for k in keys if k not in added)) for name, keys in shape]

    for key in clean:
        assert strip(dirty[key]) == strip(clean[key]), key
    env_keys = {k for _, keys in dirty["service:ServiceRegistry@mainpc"] for k in keys}
    assert {"HOSTILE_ENV", "HOSTILE_PROFILE"} <= env_keys


def parsed(dockerfile: str) -> DockerfileParser:
    parser = DockerfileParser(fileobj=io.BytesIO())
    parser.content = dockerfile
    return parser


def unescape(value: str) -> str:
    """dockerfile-parse removes the quotes and unescapes \\" but keeps \\$ and \\\\; Docker unescapes all three."""
    return re.sub(r"\\([\\$])", r"\1", value)


def test_hostile_values_are_the_values_set(fleet_dir: Path) -> None:
    hostile_copy(fleet_dir)
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, services=["ServiceRegistry"], families=["family-llm-cu121"], machines=["mainpc"])
    service = parsed(plan.step("service:ServiceRegistry@mainpc").rendered.dockerfile)
    assert unescape(service.envs["HOSTILE_ENV"]) == LINE
    assert unescape(service.envs["HOSTILE_PROFILE"]) == LINE
    assert unescape(service.labels["org.opencontainers.image.description"]) == f"ServiceRegistry ({LINE}) for mainpc"
    assert json.loads(service.structure[-1]["value"]) == ["python", "-c", MULTI]
    llm = parsed(plan.step("family:family-llm-cu121@mainpc").rendered.dockerfile)
    build_env = next(i["value"] for i in llm.structure if i["instruction"] == "ENV" and "SKBUILD_WHEEL_EXCLUDE" in i["value"])
    assert "${CMAKE_CUDA_ARCHITECTURES}" in build_env and "\\$5" in build_env


def test_the_shipped_fleet_renders_as_before(fleet_dir: Path) -> None:
    """The quoting functions write the shipped fleet's values exactly as the plain template did."""
    text = make_plan(load_fleet(REPO), families=["family-llm-cu121"], machines=["mainpc"]).steps[-1].rendered.dockerfile
    assert "-DCMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES} " in text  # the one substitution kept
    assert "ARG TORCH_CUDA_ARCH_LIST=8.9\n" in text
