"""Compose stacks: what each service of a machine runs with, rendered from the plan and a
release's digests, stored beside the release and read back checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from buildtool.adapters.registry import artifact_manifest
from buildtool.core.errors import ReleaseError, UsageError
from buildtool.deploy import compose, stacks
from buildtool.model import deploy
from buildtool.model.load import load_fleet
from buildtool.model.types import Fleet
from buildtool.publish import record
from buildtool.publish.release import publish, rollback
from tests.conftest import REPO
from tests.fakes import FakeRegistry

RELEASE = "20261204-abcdef0"
ADDRESS = "127.0.0.1:5000"


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return load_fleet(REPO)


def digests(fleet: Fleet, machine: str) -> dict[str, str]:
    return {s.repository: "sha256:" + f"{i:064x}" for i, s in enumerate(compose.machine_plan(fleet, machine).steps)}


def parsed(fleet: Fleet, machine: str) -> dict:
    text = compose.render(fleet, machine, registry="127.0.0.1:5000", org="fleet", digests=digests(fleet, machine), release=RELEASE)
    return YAML(typ="safe").load(text)


@pytest.mark.parametrize("machine", ["mainpc", "pc2"])
def test_every_service_of_the_machine_runs_its_image_by_digest_hardened(fleet: Fleet, machine: str) -> None:
    stack = parsed(fleet, machine)
    on = deploy.on_machine(fleet, machine)
    assert sorted(stack["services"]) == sorted(s.slug for s in on)
    by_repo = digests(fleet, machine)
    plan = {s.name: s for s in compose.machine_plan(fleet, machine).steps if s.kind == "service"}
    for svc in on:
        entry = stack["services"][svc.slug]
        assert entry["image"] == f"127.0.0.1:5000/fleet/{plan[svc.name].repository}@{by_repo[plan[svc.name].repository]}"
        assert entry["user"] == "10001:10001" and entry["read_only"] is True and entry["tmpfs"] == ["/tmp"]
        assert entry["cap_drop"] == ["ALL"] and entry["security_opt"] == ["no-new-privileges:true"]
        assert entry["restart"] == "on-failure:5"
        assert entry["ports"] == [f"127.0.0.1:{svc.port}:{svc.port}", f"127.0.0.1:{svc.health_port}:{svc.health_port}"]
        assert entry["logging"]["options"] == {"max-size": "10m", "max-file": "3"}
        assert "healthcheck" not in entry and "environment" not in entry  # the image's own health check; secrets never as values
        assert entry["mem_limit"] == f"{deploy.memory_mb(fleet, svc)}m"
        gpu = fleet.families[svc.family].gpu
        assert ("deploy" in entry) == gpu
        if gpu:
            assert entry["deploy"]["resources"]["reservations"]["devices"] == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
            assert "hf-models:/data/models/huggingface" in entry["volumes"]


def test_a_service_starts_after_the_nearest_earlier_layers_on_its_machine_are_healthy(fleet: Fleet) -> None:
    mainpc, pc2 = parsed(fleet, "mainpc")["services"], parsed(fleet, "pc2")["services"]
    assert "depends_on" not in mainpc["service-registry"]  # infra-core: first
    assert set(mainpc["model-ops-coordinator"]["depends_on"]) == {"service-registry", "system-digital-twin"}
    # language-stack comes after coordination and memory-stack, both with services on mainpc
    assert set(mainpc["nlu-agent"]["depends_on"]) == {"model-ops-coordinator", "cross-machine-gpu-scheduler", "memory-fusion-hub"}
    assert all(v == {"condition": "service_healthy"} for v in mainpc["nlu-agent"]["depends_on"].values())
    # speech-gpu comes after coordination, which has no service on pc2: its layer before it is the one that counts
    assert set(pc2["speech-relay-service"]["depends_on"]) == {"resource-manager"}


def test_secrets_are_compose_secrets_from_files_beside_the_stack(fleet: Fleet) -> None:
    stack = parsed(fleet, "mainpc")
    assert stack["services"]["cloud-translation-service"]["secrets"] == ["openai_api_key"]
    assert stack["secrets"]["openai_api_key"] == {"file": "./secrets/openai_api_key"}
    assert set(stack["volumes"]) == {"hf-models", "memory-data"}


def test_a_release_without_an_image_of_the_machine_makes_no_stack_and_says_which(fleet: Fleet) -> None:
    some = digests(fleet, "pc2")
    missing = next(r for r in some if r.startswith("cache-manager"))
    del some[missing]
    with pytest.raises(ReleaseError, match=missing):
        compose.stack(fleet, "pc2", registry="r", org="fleet", digests=some, release=RELEASE)


@pytest.mark.parametrize("value", ['a"b', "line\nbreak: x", "- item", "#c", "{x: 1}", "*ref", "\u202e", "yes", "~"])
def test_yaml_keeps_every_string_a_string(value: str) -> None:
    data = {"services": {"s": {"labels": {"k": value}, "list": [value, {"a": value}]}}, "odd key: x": value, "yes": value, "Null": [value]}
    assert YAML(typ="safe").load(compose.to_yaml(data)) == data


def test_stacks_are_stored_beside_the_release_and_read_back(fleet: Fleet, tmp_path: Path) -> None:
    registry = FakeRegistry()
    images = {**{r: "id" for r in digests(fleet, "mainpc")}, **{r: "id" for r in digests(fleet, "pc2")}}
    for repo in images:
        registry.add(f"fleet/{repo}", "id", repo)
    publish(registry, "fleet", images, RELEASE)
    notes = stacks.store(registry, fleet, address=ADDRESS, org="fleet", release=RELEASE)
    assert notes == [f"compose stacks of mainpc, pc2 stored as fleet/releases:{RELEASE}.stacks"]
    assert stacks.current_release(registry, "fleet") == RELEASE
    found = stacks.fetch(registry, "fleet", RELEASE, address=ADDRESS)
    assert set(found) == {"mainpc", "pc2"}
    image = YAML(typ="safe").load(found["pc2"])["services"]["cache-manager"]["image"]
    assert image == f"127.0.0.1:5000/fleet/cache-manager-pc2@{registry.digest('fleet/cache-manager-pc2', 'latest')}"
    written = stacks.write(tmp_path / "deploy", found)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == ["deploy/mainpc/compose.yaml", "deploy/pc2/compose.yaml"]
    rollback(registry, "fleet", ["cache-manager-pc2"], RELEASE)
    with pytest.raises(UsageError, match="rollback"):
        stacks.current_release(registry, "fleet")  # no one release describes the state any more
    assert record.state(registry, "fleet").release == ""


def test_a_machine_with_an_unpublished_service_gets_no_stack_and_the_run_says_why(fleet: Fleet) -> None:
    registry = FakeRegistry()
    images = {r: "id" for r in digests(fleet, "pc2")}
    for repo in images:
        registry.add(f"fleet/{repo}", "id", repo)
    publish(registry, "fleet", images, RELEASE)
    notes = stacks.store(registry, fleet, address=ADDRESS, org="fleet", release=RELEASE)
    assert notes[0].startswith("no compose stack for mainpc: release 20261204-abcdef0 has no image of ")
    assert set(stacks.fetch(registry, "fleet", RELEASE, address=ADDRESS)) == {"pc2"}


@pytest.mark.parametrize("title", ["../etc/compose.json", "pc2/../../x", "PC2/compose.json", "pc2/compose.yaml"])
def test_an_entry_that_is_not_a_machine_stack_is_refused(fleet: Fleet, title: str) -> None:
    registry = FakeRegistry()
    data = b"{}"
    layer = {"mediaType": stacks.LAYER_TYPE, "digest": registry.push_blob("fleet/releases", data), "size": len(data), "annotations": {stacks.TITLE: title}}
    registry.put_manifest("fleet/releases", f"{RELEASE}.stacks", artifact_manifest(stacks.STACKS_TYPE, layer))
    with pytest.raises(ReleaseError, match=r"not MACHINE/compose\.json"):
        stacks.fetch(registry, "fleet", RELEASE, address=ADDRESS)


@pytest.mark.parametrize("release", ["../x", "a b", "x" * 128, ""])
def test_a_release_that_is_not_a_tag_is_refused(release: str) -> None:
    with pytest.raises(UsageError):
        stacks.fetch(FakeRegistry(), "fleet", release, address=ADDRESS)


def test_a_state_record_naming_no_tag_is_not_trusted() -> None:
    registry = FakeRegistry()
    record._write(registry, "fleet", record.STATE, {"kind": "state", "latest": {}, "prev": {}, "release": "../../x"})
    assert record.state(registry, "fleet") is None


def stored(fleet: Fleet, change) -> FakeRegistry:
    """A registry holding pc2's stack of RELEASE as publish stores it, after ``change`` edits it."""
    registry = FakeRegistry()
    data = compose.stack(fleet, "pc2", registry=ADDRESS, org="fleet", digests=digests(fleet, "pc2"), release=RELEASE)
    change(data)
    blob = json.dumps(data).encode()
    layer = {"mediaType": stacks.LAYER_TYPE, "digest": registry.push_blob("fleet/releases", blob), "size": len(blob),
             "annotations": {stacks.TITLE: "pc2/compose.json"}}  # fmt: skip
    registry.put_manifest("fleet/releases", f"{RELEASE}.stacks", artifact_manifest(stacks.STACKS_TYPE, layer))
    return registry


def test_a_stored_stack_as_the_toolkit_writes_it_reads_back_as_the_same_compose_file(fleet: Fleet) -> None:
    registry = stored(fleet, lambda data: None)
    expected = compose.render(fleet, "pc2", registry=ADDRESS, org="fleet", digests=digests(fleet, "pc2"), release=RELEASE)
    assert stacks.fetch(registry, "fleet", RELEASE, address=ADDRESS) == {"pc2": expected}


def _svc(data: dict) -> dict:
    return data["services"]["cache-manager"]


HOSTILE = {
    "privileged": lambda d: _svc(d).update(privileged=True),
    "capabilities-back": lambda d: _svc(d).update(cap_drop=[]),
    "root-user": lambda d: _svc(d).update(user="0:0"),
    "writable-root": lambda d: _svc(d).update(read_only=False),
    "host-network": lambda d: _svc(d).update(network_mode="host"),
    "another-registry": lambda d: _svc(d).update(image="evil.example/fleet/cache-manager-pc2@sha256:" + "0" * 64),
    "a-tag-not-a-digest": lambda d: _svc(d).update(image=f"{ADDRESS}/fleet/cache-manager-pc2:latest"),
    "bind-mount-of-the-host": lambda d: _svc(d).update(volumes=["/:/data/host"]),
    "volume-over-etc": lambda d: (_svc(d).update(volumes=["x:/etc"]), d.update(volumes={"x": {}})),
    "secret-from-anywhere": lambda d: d["secrets"].update(openai_api_key={"file": "/etc/shadow"}) if "secrets" in d else d.update(
        secrets={"k": {"file": "/etc/shadow"}}),
    "ports-on-all-addresses": lambda d: _svc(d).update(ports=["0.0.0.0:22:22", "2375:2375"]),
    "a-gpu-plus-limits": lambda d: _svc(d).update(deploy={"resources": {"limits": {"cpus": "0"}}}),
    "depends-on-a-stranger": lambda d: _svc(d).update(depends_on={"elsewhere": {"condition": "service_started"}}),
    "another-project": lambda d: d.update(name="other"),
    "a-top-level-network": lambda d: d.update(networks={"n": {"driver": "bridge"}}),
}


@pytest.mark.parametrize("change", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_stored_stack_with_what_the_toolkit_never_writes_is_refused(fleet: Fleet, change) -> None:
    with pytest.raises(ReleaseError, match="not one this toolkit wrote"):
        stacks.fetch(stored(fleet, change), "fleet", RELEASE, address=ADDRESS)


def test_a_service_without_a_layer_starts_with_the_first_and_validate_warns(fleet_dir: Path) -> None:
    svc = fleet_dir / "services" / "AsyncProcessor.toml"
    svc.write_text(svc.read_text().replace('layer = "async-pipeline"\n', ""))
    fleet = load_fleet(fleet_dir)
    assert [(w.file, w.key) for w in fleet.warnings if w.key == "layer"] == [("services/AsyncProcessor.toml", "layer")]
    assert deploy.depends_on(fleet, fleet.services["AsyncProcessor"], "pc2") == []
    assert "async-processor" not in compose.stack(fleet, "pc2", registry=ADDRESS, org="fleet", digests=digests(fleet, "pc2"), release=RELEASE)[
        "services"]["unified-web-agent"]["depends_on"]


def test_a_gpu_reservation_takes_only_device_indexes_or_uuids(fleet_dir: Path) -> None:
    machine = fleet_dir / "machines" / "pc2.toml"
    machine.write_text(machine.read_text().replace('CUDA_VISIBLE_DEVICES = "0"', 'CUDA_VISIBLE_DEVICES = "0,all"'))
    fleet = load_fleet(fleet_dir)
    with pytest.raises(ReleaseError, match="CUDA_VISIBLE_DEVICES is not GPU indexes"):
        compose.stack(fleet, "pc2", registry=ADDRESS, org="fleet", digests=digests(fleet, "pc2"), release=RELEASE)
