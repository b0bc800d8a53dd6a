"""Executor and release logic with an in-memory engine and registry (the real ones: tests/engine)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from buildtool import settings as run_settings
from buildtool.adapters.registry import Manifest
from buildtool.core.errors import BuildError, CommandError, UsageError
from buildtool.execute.executor import Executor
from buildtool.execute.structure import structure_checks
from buildtool.model.load import load_fleet
from buildtool.plan.plan import make_plan
from buildtool.publish.release import publish, rollback
from tests.fakes import OCI_MANIFEST, FakeEngine, FakeRegistry, QuietProgress

FakeDocker = FakeEngine


def settings_for(fleet, state: Path, **env: str) -> run_settings.Settings:
    return run_settings.from_sources(fleet, {"FLEET_STATE_DIR": str(state), "FLEET_PIP_CA": "/ca.crt", **env})


def write_rootfs(*, out: Path, **kwargs) -> Path:
    out.write_bytes(b"rootfs")
    return out


def run(fleet_dir: Path, tmp_path: Path, registry: FakeRegistry, docker: FakeEngine, bootstrap=write_rootfs, **selection):
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, **selection)
    settings = settings_for(fleet, tmp_path / "state")
    results = Executor(plan, settings=settings, engine=docker, registry=registry, progress=QuietProgress(), bootstrap=bootstrap).run()
    return plan, {r.key: r for r in results}


def test_builds_parents_first_and_passes_parent_digests(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    _, results = run(fleet_dir, tmp_path, registry, docker, services=["ServiceRegistry"])
    assert [r.status for r in results.values()] == ["built"] * 5
    tags = [b[0] for b in docker.builds]
    # The root family builds its builder root (target builder-root) and its runtime image at once.
    assert sorted(tags[:2]) == sorted(t for t in tags if "/base-python" in t)
    assert {(t.split("/")[2].split(":")[0], target) for t, target in docker.targets[:2]} == {("base-python-builder", "builder-root"), ("base-python", None)}
    # A child names its parent by digest once the registry holds it, by identity tag while only the engine does.
    root = results["family:base-python"]
    builder = {f"127.0.0.1:5000/fleet/base-python-builder@{root.builder}", "127.0.0.1:5000/fleet/base-python-builder:" + tags[0].rsplit(":", 1)[1]}
    assert all(b[1]["BUILDER_IMAGE"] in builder for b in docker.builds[2:])  # every child and service builds on it
    web = next(b for b in docker.builds if "/family-web:" in b[0])
    assert registry.resolve(web[1]["PARENT_IMAGE"]) == results["family:base-cpu-pydeps"].digest
    assert web[1]["PARENT_IMAGE"].startswith("127.0.0.1:5000/fleet/base-cpu-pydeps")
    svc = docker.builds[-1]
    assert registry.resolve(svc[1]["FAMILY_IMAGE"]) == results["family:family-web"].digest
    assert svc[1]["FAMILY_IMAGE"].startswith("127.0.0.1:5000/fleet/family-web")
    assert all(b[2] == ["id=pip_ca,src=/ca.crt"] for b in docker.builds)
    assert docker.healthy == [tags[-1]]
    for result in results.values():  # every stage of every image is timed, in the order walked
        assert list(result.stages) == ["build", "load", "checks", "health", "scan", "parent", "push", "sbom", "queued"]
        assert result.started <= result.ended and result.seconds >= sum(result.stages.values()) - 1e-6


def test_the_wait_for_a_build_slot_is_queue_time_not_build_time(fleet_dir: Path, tmp_path: Path) -> None:
    """One build slot, two services: the one that waits for the other's build says so, and its
    build stage is its own build alone."""
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    fleet = load_fleet(fleet_dir)
    plan = make_plan(fleet, services=["ServiceRegistry", "ObservabilityDashboardAPI"], machines=["mainpc"])
    settings = dataclasses.replace(settings_for(fleet, tmp_path / "state"), jobs=1)
    original = docker.build

    def slow_services(**kwargs):
        if "/fleet/family-" not in kwargs["tag"] and "/fleet/base-" not in kwargs["tag"]:
            time.sleep(0.5)
        return original(**kwargs)

    docker.build = slow_services
    results = Executor(plan, settings=settings, engine=docker, registry=registry, progress=QuietProgress(), bootstrap=write_rootfs).run()
    services = sorted((r for r in results if plan.step(r.key).kind == "service"), key=lambda r: r.stages["queued"])
    assert [r.status for r in results] == ["built"] * len(results) and len(services) == 2
    first, second = services
    assert second.stages["queued"] >= 0.4 > first.stages["queued"]  # it waited for the other's build
    assert 0.5 <= second.stages["build"] < 0.5 + second.stages["queued"]  # its own build, without the wait


def test_a_service_comes_up_for_its_health_check_while_its_checks_run(fleet_dir: Path, tmp_path: Path) -> None:
    """The health container starts before the checks and its wait runs beside them: a service's
    verification takes the longer of the two, not their sum."""
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    started = threading.Event()
    healthy, checked = docker.wait_healthy, docker.run_checks

    def wait_healthy(ref, name, timeout=120):
        started.set()
        return healthy(ref, name, timeout)

    def run_checks(ref, checks, *, gpus=False):
        if "/service-registry-mainpc:" in ref:
            assert started.wait(10), "the health check waited for the checks to end"
        return checked(ref, checks, gpus=gpus)

    docker.wait_healthy, docker.run_checks = wait_healthy, run_checks
    _, results = run(fleet_dir, tmp_path, registry, docker, services=["ServiceRegistry"], machines=["mainpc"])
    assert {r.status for r in results.values()} == {"built"}
    assert any("/service-registry-mainpc:" in ref for ref in docker.healthy)


def test_a_failed_check_ends_the_health_wait_and_removes_its_container(fleet_dir: Path, tmp_path: Path) -> None:
    """The checks fail before the health container has even started: it is removed once it runs,
    and the run ends without waiting out the health timeout."""
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    docker.fail_checks = {"service-registry-mainpc"}
    removed: list[str] = []
    ended: list[str] = []

    def wait_healthy(ref, name, timeout=120):  # starts late, never healthy: only its removal ends the wait
        time.sleep(0.5)
        seen, deadline = len(removed), time.monotonic() + 10
        while len(removed) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
        ended.append("removed" if len(removed) > seen else "left running")
        raise BuildError(f"{ref}: container gone")

    def remove_containers(image=""):
        removed.append(image)
        return 1

    docker.wait_healthy, docker.remove_containers = wait_healthy, remove_containers
    _, results = run(fleet_dir, tmp_path, registry, docker, services=["ServiceRegistry"], machines=["mainpc"])
    service = next(r for r in results.values() if r.repository == "service-registry-mainpc")
    assert service.status == "failed" and "smoke checks failed" in service.message
    assert ended == ["removed"]
    assert all("/service-registry-mainpc:" in ref for ref in removed)
    assert not any("/service-registry-mainpc:" in ref for event, ref in docker.events if event == "push")


def test_a_child_builds_on_its_parent_in_the_engine_and_pushes_after_the_parent(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    held = threading.Event()
    checked = docker.run_checks

    def slow_checks(ref, checks, *, gpus=False):  # base-utils' checks wait until its child has been built
        if "/base-utils:" in ref:
            assert held.wait(10), "the child never started while its parent was being checked"
        return checked(ref, checks, gpus=gpus)

    docker.run_checks = slow_checks
    original = docker.build

    def build(**kwargs):
        built = original(**kwargs)
        if "/base-cpu-pydeps:" in kwargs["tag"]:
            held.set()
        return built

    docker.build = build
    _, results = run(fleet_dir, tmp_path, registry, docker, families=["base-cpu-pydeps"])
    assert {r.status for r in results.values()} == {"built"}
    order = [(what, ref.split("/")[2].split(":")[0]) for what, ref in docker.events]
    assert order.index(("build", "base-cpu-pydeps")) < order.index(("push", "base-utils"))  # built before its parent was pushed
    assert order.index(("push", "base-utils")) < order.index(("push", "base-cpu-pydeps"))  # pushed only after it
    child = results["family:base-cpu-pydeps"]
    assert child.stages["parent"] > 0.0  # it waited for its parent's verdict


def test_a_parent_that_fails_its_checks_after_its_child_was_built_blocks_it_and_nothing_of_it_is_pushed(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    docker.fail_checks = {"base-utils"}
    _, results = run(fleet_dir, tmp_path, registry, docker, families=["base-cpu-pydeps"])
    assert results["family:base-utils"].status == "failed"
    assert "planted" in results["family:base-utils"].message
    assert results["family:base-cpu-pydeps"].status == "blocked"
    assert results["family:base-cpu-pydeps"].message == "base-utils failed"
    assert {repo for repo, _ in registry.entries} == {"fleet/base-python", "fleet/base-python-builder"}


def test_only_clamped_bootstrap_roots_are_exported_without_a_timestamp_rewrite(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    run(fleet_dir, tmp_path, registry, docker, services=["ServiceRegistry"])
    skipped = sorted(tag.split("/")[2].split(":")[0] for tag, rewritten in docker.rewritten.items() if not rewritten)
    assert skipped == ["base-python", "base-python-builder"]
    assert len(docker.rewritten) == 6  # and every other image is rewritten


def test_service_runs_the_smoke_checks_of_its_whole_lineage(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    run(fleet_dir, tmp_path, registry, docker, services=["ServiceRegistry"])
    fleet = load_fleet(fleet_dir)
    expected = [c.run for f in fleet.lineage("family-web") for c in f.smoke]
    svc_checks = [argv for ref, argv in docker.checks if "/service-registry-mainpc:" in ref]
    assert svc_checks == [argv for _, argv in structure_checks()] + expected


def test_second_run_with_nothing_changed_builds_nothing(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    run(fleet_dir, tmp_path, registry, FakeDocker(registry), services=["ServiceRegistry"])
    docker = FakeDocker(registry)
    _, results = run(fleet_dir, tmp_path, registry, docker, services=["ServiceRegistry"])
    assert docker.builds == []
    assert {r.status for r in results.values()} == {"cached"}


def test_failure_blocks_descendants_only(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry, fail=["base-cpu-pydeps"])
    _, results = run(fleet_dir, tmp_path, registry, docker, services=["ServiceRegistry", "IntentionValidatorAgent"])
    assert results["family:base-cpu-pydeps"].status == "failed"
    assert results["family:family-web"].status == "blocked"
    assert results["service:ServiceRegistry@mainpc"].status == "blocked"
    assert results["service:IntentionValidatorAgent@mainpc"].status == "built"
    # Nothing failed was pushed.
    assert not any(repo == "fleet/base-cpu-pydeps" for repo, _ in registry.entries)


def test_a_child_that_fails_a_check_it_inherits_from_a_parent_that_fails_it_too_is_blocked_by_that_parent(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    docker.fail_checks = {"base-utils", "base-cpu-pydeps"}  # a smoke check of base-utils, which its child runs too
    child_checked = threading.Event()
    checked = docker.run_checks

    def ordered(ref, checks, *, gpus=False):  # the child's checks fail before its parent's verdict is in
        if "/base-cpu-pydeps:" in ref:
            child_checked.set()
        elif "/base-utils:" in ref:
            assert child_checked.wait(10)
        return checked(ref, checks, gpus=gpus)

    docker.run_checks = ordered
    _, results = run(fleet_dir, tmp_path, registry, docker, families=["base-cpu-pydeps"])
    assert results["family:base-utils"].status == "failed"
    assert (results["family:base-cpu-pydeps"].status, results["family:base-cpu-pydeps"].message) == ("blocked", "base-utils failed")


def test_root_user_fails_verification_and_is_not_pushed(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    _, results = run(fleet_dir, tmp_path, registry, FakeDocker(registry, user=""), families=["base-python"])
    assert results["family:base-python"].status == "failed"
    assert "must be 10001:10001" in results["family:base-python"].message
    assert registry.entries == {}


def test_publish_moves_latest_and_prev() -> None:
    registry = FakeRegistry()
    old = registry.add("fleet/a", "id-1", "one")
    new = registry.add("fleet/a", "id-2", "two")
    publish(registry, "fleet", {"a": "id-1"}, "20261121-aaaaaaa")
    publish(registry, "fleet", {"a": "id-2"}, "20261122-bbbbbbb")
    assert registry.digest("fleet/a", "latest") == new.digest
    assert registry.digest("fleet/a", "prev") == old.digest
    assert registry.digest("fleet/a", "20261121-aaaaaaa") == old.digest
    # Publishing the same images again moves nothing.
    publish(registry, "fleet", {"a": "id-2"}, "20261122-bbbbbbb")
    assert registry.digest("fleet/a", "prev") == old.digest


def test_publish_reads_everything_before_moving_anything() -> None:
    registry = FakeRegistry()
    registry.add("fleet/a", "id-1", "one")
    with pytest.raises(Exception, match="nothing was published"):
        publish(registry, "fleet", {"a": "id-1", "b": "id-missing"}, "t")
    assert ("fleet/a", "t") not in registry.entries and ("fleet/a", "latest") not in registry.entries


def test_rollback_swaps_and_honours_force_image_tag() -> None:
    registry = FakeRegistry()
    one = registry.add("fleet/a", "id-1", "one")
    two = registry.add("fleet/a", "id-2", "two")
    publish(registry, "fleet", {"a": "id-1"}, "r1")
    publish(registry, "fleet", {"a": "id-2"}, "r2")
    rollback(registry, "fleet", ["a"])
    assert registry.digest("fleet/a", "latest") == one.digest
    assert registry.digest("fleet/a", "prev") == two.digest
    rollback(registry, "fleet", ["a"], "r2")
    assert registry.digest("fleet/a", "latest") == two.digest
    with pytest.raises(UsageError, match="does not exist"):
        rollback(registry, "fleet", ["a"], "nope")


@pytest.mark.parametrize(
    ("media_type", "body", "named"),
    [
        ("application/vnd.oci.image.index.v1+json", {"manifests": []}, "a manifest of type 'application/vnd.oci.image.index.v1+json'"),
        (OCI_MANIFEST, {"artifactType": "application/vnd.cyclonedx+json", "config": {"mediaType": "application/vnd.oci.empty.v1+json"}},
         "an artifact of type 'application/vnd.cyclonedx+json'"),
        (OCI_MANIFEST, {"config": {"mediaType": "application/vnd.cyclonedx+json"}}, "an artifact of type 'application/vnd.cyclonedx+json'"),
        (OCI_MANIFEST, {"config": "x"}, "an unreadable manifest"),
    ],
)
def test_rollback_refuses_a_target_that_is_not_an_image_and_moves_nothing(media_type: str, body: dict, named: str) -> None:
    registry = FakeRegistry()
    current = registry.add("fleet/a", "latest", "one")
    registry.add("fleet/a", "r1", "older")  # a's target is an image; b's is not: neither moves
    raw = json.dumps({"mediaType": media_type, **body}).encode()
    registry.entries[("fleet/b", "r1")] = Manifest(digest="sha256:" + hashlib.sha256(raw).hexdigest(), media_type=media_type, body=raw)
    with pytest.raises(UsageError, match="not an image") as info:
        rollback(registry, "fleet", ["a", "b"], "r1")
    assert named in info.value.message and "fleet/b:r1" in info.value.message and "no tag was moved" in info.value.message
    assert registry.digest("fleet/a", "latest") == current.digest and ("fleet/a", "prev") not in registry.entries


def test_unpullable_root_image_fails_that_family_alone_with_a_hint(fleet_dir: Path, tmp_path: Path) -> None:
    legacy = fleet_dir / "families" / "legacy-py310-cpu.toml"
    legacy.write_text(legacy.read_text().replace('source = "bootstrap"', 'source = "image"'))
    registry = FakeRegistry()

    class NoUpstream(FakeDocker):
        def build(self, *, context, tag, build_args, secrets, cache_ref, labels, log, target=None, rewrite_timestamps=True, cache_mode="min"):
            if "/legacy-py310-cpu" in tag:
                raise BuildError("failed to resolve source metadata for docker.io/library/python:3.10-slim-bookworm")
            return super().build(context=context, tag=tag, build_args=build_args, secrets=secrets, cache_ref=cache_ref, labels=labels, log=log,
                                 target=target, rewrite_timestamps=rewrite_timestamps)

    _, results = run(fleet_dir, tmp_path, registry, NoUpstream(registry), families=["legacy-py310-cpu", "base-utils"])
    legacy = results["family:legacy-py310-cpu"]
    assert legacy.status == "failed"
    assert "root image 'python:3.10-slim-bookworm' could not be pulled" in legacy.message
    assert "does not substitute another Python" in legacy.message
    assert results["family:base-utils"].status == "built"


def test_failed_bootstrap_names_the_family_file_and_root_keys(fleet_dir: Path, tmp_path: Path) -> None:
    def no_such_package(*, suite: str, packages: list[str], **kwargs) -> Path:
        raise CommandError(["mmdebstrap", suite], 25, "I: chroot\nE: Unable to locate package libpython3.99-stdlib\nE: mmdebstrap failed to run\n")

    registry = FakeRegistry()
    _, results = run(fleet_dir, tmp_path, registry, FakeDocker(registry), bootstrap=no_such_package, families=["legacy-py310-cpu"])
    legacy = results["family:legacy-py310-cpu"]
    assert legacy.status == "failed"
    assert legacy.message.startswith("families/legacy-py310-cpu.toml: root: bootstrapping the runtime root of jammy failed")
    assert "root.packages" in legacy.message and "E: Unable to locate package libpython3.99-stdlib" in legacy.message
    assert "I: chroot" not in legacy.message
    assert registry.entries == {}  # nothing built, nothing pushed


@pytest.mark.parametrize("gpus", [False, True])
def test_gpu_smoke_checks_run_only_where_the_engine_has_a_gpu(fleet_dir: Path, tmp_path: Path, gpus: bool) -> None:
    fam = fleet_dir / "families" / "base-gpu-cu121.toml"
    fam.write_text(fam.read_text() + '\n[[smoke]]\nname = "a CUDA op"\nrun = ["python", "-c", "pass"]\ngpu = true\n')
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    docker.gpus = gpus
    _, results = run(fleet_dir, tmp_path, registry, docker, families=["base-gpu-cu121"])
    assert results["family:base-gpu-cu121"].status == "built"
    assert bool(docker.gpu_runs) is gpus  # with --gpus all only where there is a GPU
    ran_gpu_check = any(argv == ("python", "-c", "pass") for _, argv in docker.checks)
    assert ran_gpu_check is gpus


def test_pip_index_token_reaches_builds_only_as_a_secret(fleet_dir: Path, tmp_path: Path) -> None:
    fleet = load_fleet(fleet_dir)
    settings = settings_for(fleet, tmp_path, FLEET_PIP_INDEX_URL="https://user:token@index.example/simple")
    assert settings.secrets() == ["id=pip_ca,src=/ca.crt", "id=pip_index,env=FLEET_PIP_INDEX_URL"]
    text = make_plan(fleet, families=["family-web"]).step("family:family-web").rendered.dockerfile
    assert "--mount=type=secret,id=pip_index,required=false" in text
    assert "FLEET_PIP_INDEX_URL" not in text and "ARG PIP_INDEX_URL" not in text


def test_an_image_over_its_budget_fails_before_it_is_pushed(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    docker.sizes["base-utils"] = 46_000_000  # base-python's budget of 45 MB holds for base-utils too
    _, results = run(fleet_dir, tmp_path, registry, docker, families=["base-cpu-pydeps"])
    utils = results["family:base-utils"]
    assert utils.status == "failed" and utils.message.startswith("base-utils is 46.0 MB compressed, over its budget of 45 MB")
    assert results["family:base-cpu-pydeps"].status == "blocked"
    assert not any(repo == "fleet/base-utils" for repo, _ in registry.entries)


def test_a_family_may_only_warn_about_its_budget_and_says_why(fleet_dir: Path, tmp_path: Path) -> None:
    utils = fleet_dir / "families" / "base-utils.toml"
    utils.write_text(utils.read_text().replace("[env]", 'budget_policy = "warn"\nbudget_reason = "curl brings gnutls back"\n\n[env]'))
    registry = FakeRegistry()
    docker = FakeDocker(registry)
    docker.sizes["base-utils"] = 46_000_000
    _, results = run(fleet_dir, tmp_path, registry, docker, families=["base-utils"])
    utils_result = results["family:base-utils"]
    assert utils_result.status == "built" and utils_result.compressed == 46_000_000
    assert utils_result.warnings == ('WARN base-utils is 46.0 MB compressed, over its budget of 45 MB (budget_mb of families/base-utils.toml or its '
                                     'parents); make it smaller or raise the budget (budget_policy = "warn")',)  # fmt: skip


def test_a_root_without_its_builder_root_in_the_registry_is_built_again(fleet_dir: Path, tmp_path: Path) -> None:
    registry = FakeRegistry()
    run(fleet_dir, tmp_path, registry, FakeDocker(registry), families=["base-utils"])
    builder = next(key for key in registry.entries if key[0] == "fleet/base-python-builder")
    del registry.entries[builder]
    docker = FakeDocker(registry)
    _, results = run(fleet_dir, tmp_path, registry, docker, families=["base-utils"])
    assert results["family:base-python"].status == "built" and results["family:base-utils"].status == "cached"
    assert results["family:base-python"].builder == registry.digest("fleet/base-python-builder", builder[1])


def test_structure_checks_refuse_package_managers_unless_the_family_lists_them() -> None:
    names = [name for name, _ in structure_checks()]
    assert names == ["no setuid or setgid files", "no man pages, info pages or docs (copyright files excepted)",
                     "no apt, dpkg, perl, pip (a family that needs one lists it in runtime_tools)"]  # fmt: skip
    tools = structure_checks(["perl", "pip"])[-1]
    assert tools[0] == "no apt, dpkg (a family that needs one lists it in runtime_tools)"
    assert tools[1][-2:] == ("apt apt-get dpkg", "")  # pip allowed: neither the command nor the module is refused
    assert len(structure_checks(["apt", "dpkg", "perl", "pip"])) == 2


def test_the_structure_checks_find_what_they_look_for(real_subprocess: None) -> None:
    """Run on this host (which has pip, apt and docs), the checks fail and say what they found."""
    import subprocess
    import sys

    checks = dict(structure_checks())
    tools = checks["no apt, dpkg, perl, pip (a family that needs one lists it in runtime_tools)"]
    found = subprocess.run([sys.executable, *tools[1:]], capture_output=True, text=True)
    assert found.returncode == 1 and "python -m pip (" in found.stderr
    nothing = subprocess.run([sys.executable, *tools[1:3], "no-such-tool", ""], capture_output=True, text=True)
    assert nothing.returncode == 0
    docs = subprocess.run([sys.executable, *checks["no man pages, info pages or docs (copyright files excepted)"][1:]], capture_output=True, text=True)
    assert docs.returncode == 1 and "files, e.g. /usr/share/" in docs.stderr
