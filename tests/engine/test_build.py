"""Real builds: the CPU family chain and services, built by BuildKit into the local registry.

One run builds base-python -> base-utils -> base-cpu-pydeps -> family-web and ServiceRegistry
under a fresh registry org, verifies them (smoke checks, health under --network=none), and
publishes tags. The tests below read that run, then change the fleet and build again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from python_on_whales import docker

from buildtool.adapters.engine import HARDENED
from buildtool.adapters.files import copy_fleet
from buildtool.adapters.registry import Registry
from buildtool.core.errors import BuildError
from buildtool.publish.release import rollback
from tests.conftest import REPO
from tests.engine.helpers import commit_all, run_build, settings_for

pytestmark = pytest.mark.engine

ADDRESS = "127.0.0.1:5000"
SERVICE = "ServiceRegistry"
CHAIN = ["base-python", "base-utils", "base-cpu-pydeps", "family-web", "service-registry-mainpc"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """A copy of the fleet, its own registry org and state dir, and the first real build."""
    root = tmp_path_factory.mktemp("fleet")
    copy_fleet(REPO, root)
    # A service with its own code, so a one-file change touches exactly one image.
    shutil.copytree(REPO / "agents" / "reference_agent", root / "agents" / "own_agent")
    svc = root / "services" / f"{SERVICE}.toml"
    svc.write_text(svc.read_text() + 'source = "agents/own_agent"\n')
    commit_all(root)
    org = f"test-{int(time.time())}-{os.getpid()}"
    run_settings = settings_for(root, org)
    code = run_build(run_settings, SERVICE, tag="release-1")
    return {"root": root, "org": org, "state": run_settings.state_dir, "settings": run_settings, "first_code": code}


def last_run(env) -> dict[str, str]:
    data = json.loads((env["state"] / "reports" / "last-run.json").read_text())
    return {r["repository"]: r["status"] for r in data["results"]}


def tags(env, tag: str) -> dict[str, str | None]:
    reg = Registry(ADDRESS)
    return {repo: reg.digest(f"{env['org']}/{repo}", tag) for repo in CHAIN}


def build(env, *services: str, tag: str) -> int:
    return run_build(env["settings"], *services, tag=tag)


def test_first_build_builds_the_chain_and_publishes(env) -> None:
    assert env["first_code"] == 0
    assert last_run(env) == {repo: "built" for repo in CHAIN}
    released = tags(env, "release-1")
    assert all(released.values())
    assert tags(env, "latest") == released


def test_service_image_runs_healthy_as_10001(env) -> None:
    ref = f"{ADDRESS}/{env['org']}/service-registry-mainpc:latest"
    docker.image.pull(ref, quiet=True)
    image = docker.image.inspect(ref)
    assert image.config.user == "10001:10001"
    container = docker.run(ref, detach=True, **HARDENED)
    try:
        for _ in range(60):
            state = docker.container.inspect(container).state
            if state.health and state.health.status == "healthy":
                break
            time.sleep(1)
        assert state.health.status == "healthy"
        body = docker.container.execute(container, ["python", "-c", "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8200/health').read().decode())"])
        assert json.loads(body) == {"status": "ok"}
        assert docker.container.execute(container, ["id", "-u"]).strip() == "10001"
        profile = json.loads(docker.container.execute(container, ["cat", "/etc/machine-profile.json"]))
        assert profile["MACHINE"] == "mainpc" and profile["UVICORN_WORKERS"] == "32"
    finally:
        docker.container.remove(container, force=True)


LEAN = """
import json, os, shutil, stat, sys
found = {}
found['tools'] = [t for t in ('pip', 'pip3', 'perl', 'apt', 'apt-get', 'dpkg', 'bash', 'su', 'mount') if shutil.which(t)]
found['venv_pip'] = os.path.exists('/opt/venv/lib/python3.11/site-packages/pip')
found['setuid'] = [os.path.join(d, f) for d, _, fs in os.walk('/') if not d.startswith(('/proc', '/sys', '/dev'))
                   for f in fs if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
                   and os.lstat(os.path.join(d, f)).st_mode & (stat.S_ISUID | stat.S_ISGID)]
found['man'] = os.path.exists('/usr/share/man')
status = open('/var/lib/dpkg/status').read()
found['packages'] = sorted(line.split()[1] for line in status.splitlines() if line.startswith('Package: '))
print(json.dumps(found))
"""


def test_runtime_images_hold_no_package_manager_pip_perl_or_setuid_but_keep_the_dpkg_database(env) -> None:
    ref = f"{ADDRESS}/{env['org']}/service-registry-mainpc:release-1"
    docker.image.pull(ref, quiet=True)
    found = json.loads(docker.run(ref, ["python", "-c", LEAN], remove=True, **HARDENED))
    assert found["tools"] == [] and not found["venv_pip"] and found["setuid"] == [] and not found["man"]
    # Scanners read the status database: it lists what is there (curl came with base-utils), not apt or perl.
    assert {"libc6", "python3.11-minimal", "tini", "ca-certificates", "curl", "libcurl4", "tzdata"} <= set(found["packages"])
    assert not {"apt", "dpkg", "perl-base", "debconf", "bash", "login", "usrmerge"} & set(found["packages"])
    # Labels name the commit and its date, never the day of the build.
    labels = docker.image.inspect(ref).config.labels
    assert labels["fleet.commit-date"].endswith("Z") and len(labels["org.opencontainers.image.revision"].split("-")[0]) == 40
    assert docker.image.inspect(ref).created.year == 2025  # SOURCE_DATE_EPOCH, not the build's clock


def test_ca_bundle_is_not_in_any_layer(env) -> None:
    host = hashlib.sha256(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()).hexdigest()
    ref = f"{ADDRESS}/{env['org']}/family-web:latest"
    out = docker.run(
        ref,
        ["sh", "-c", "ls /run/secrets 2>/dev/null; find / -xdev -name '*.crt' -type f -exec sha256sum {} + 2>/dev/null; true"],
        remove=True,
        **HARDENED,
    )
    assert host not in out
    assert "pip_ca" not in out


def test_second_identical_run_builds_nothing(env) -> None:
    before = tags(env, "latest")
    assert build(env, SERVICE, tag="release-1") == 0
    assert set(last_run(env).values()) == {"cached"}
    assert tags(env, "latest") == before


class NoEngine:
    """An engine that must not be used: a run with nothing to build needs none."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"a no-op touched the engine ({name})")


def test_a_no_op_uses_no_engine_and_reads_each_image_from_the_registry_concurrently_and_once(env) -> None:
    from buildtool import pipeline
    from buildtool.model.load import load_fleet
    from buildtool.plan.plan import make_plan
    from tests.fakes import QuietProgress

    fleet = load_fleet(env["root"])
    plan = make_plan(fleet, services=[SERVICE])
    counted = Registry(ADDRESS)
    run = pipeline.build(env["settings"], fleet, plan, progress=QuietProgress(), engine=NoEngine(), registry=counted, tag="release-1")
    assert run.count("cached") == len(plan.steps) and run.moves == []
    # One lookup per image (and the builder root); then the release records, shared by all images
    # (the release's and the org's state: a manifest and a blob each): no image's release, latest
    # or prev tag is read.
    assert counted.requests <= len(plan.steps) + 1 + 4, counted.requests


def test_one_file_code_change_rebuilds_one_image(env) -> None:
    agent = env["root"] / "agents" / "own_agent" / "agent.py"
    agent.write_text(agent.read_text() + "\n# change\n")
    before = tags(env, "latest")
    assert build(env, SERVICE, tag="release-2") == 0
    statuses = last_run(env)
    assert [r for r, s in statuses.items() if s == "built"] == ["service-registry-mainpc"]
    after = tags(env, "latest")
    assert after["service-registry-mainpc"] != before["service-registry-mainpc"]
    assert {k: v for k, v in after.items() if k != "service-registry-mainpc"} == {k: v for k, v in before.items() if k != "service-registry-mainpc"}
    assert tags(env, "prev")["service-registry-mainpc"] == before["service-registry-mainpc"]


def test_a_failing_image_moves_no_tag(env) -> None:
    # One image that breaks its smoke check, and one good change in the same run.
    fam = env["root"] / "families" / "family-web.toml"
    text = fam.read_text()
    fam.write_text(text + '\n[[smoke]]\nname = "deliberately failing"\nrun = ["python", "-c", "raise SystemExit(3)"]\n')
    agent = env["root"] / "agents" / "own_agent" / "agent.py"
    agent.write_text(agent.read_text() + "\n# another change\n")
    before = {tag: tags(env, tag) for tag in ("latest", "prev")}
    try:
        assert build(env, SERVICE, tag="release-3") == BuildError.exit_code
    finally:
        fam.write_text(text)  # the later tests build on a family-web that passes
    statuses = last_run(env)
    assert statuses["family-web"] == "failed" and statuses["service-registry-mainpc"] == "blocked"
    message = next(r["message"] for r in json.loads((env["state"] / "reports" / "last-run.json").read_text())["results"] if r["repository"] == "family-web")
    assert "smoke check 'deliberately failing' failed: exit 3" in message
    assert {tag: tags(env, tag) for tag in ("latest", "prev")} == before
    assert not any(tags(env, "release-3").values())


def test_rollback_points_latest_at_prev(env) -> None:
    before = tags(env, "latest")
    prev = tags(env, "prev")
    assert rollback(Registry(ADDRESS), env["org"], ["service-registry-mainpc"])
    assert tags(env, "latest")["service-registry-mainpc"] == prev["service-registry-mainpc"]
    assert tags(env, "prev")["service-registry-mainpc"] == before["service-registry-mainpc"]
    # A FORCE_IMAGE_TAG pin re-points latest at that release instead.
    assert rollback(Registry(ADDRESS), env["org"], ["service-registry-mainpc"], "release-2")
    assert tags(env, "latest")["service-registry-mainpc"] == tags(env, "release-2")["service-registry-mainpc"]


def test_size_report_lists_every_image(env) -> None:
    data = json.loads((env["state"] / "reports" / "sizes.json").read_text())
    assert {d["repository"] for d in data} == set(CHAIN)
    for d in data:
        assert d["compressed"] > 0 and d["largest"]


def test_legacy_service_runs_python_310_from_ubuntu(env) -> None:
    assert build(env, "NLUAgent", tag="legacy-1") == 0
    assert last_run(env) == {"legacy-py310-cpu": "built", "nlu-agent-mainpc": "built"}
    ref = f"{ADDRESS}/{env['org']}/nlu-agent-mainpc:legacy-1"
    docker.image.pull(ref, quiet=True)
    assert docker.image.inspect(ref).config.user == "10001:10001"
    out = docker.run(ref, ["python", "-c", "import sys, pydantic; print(sys.version.split()[0], pydantic.VERSION)"], remove=True, **HARDENED)
    version, pydantic = out.split()
    assert version.startswith("3.10.") and pydantic == "1.10.15"


def test_hostile_values_arrive_unchanged_in_the_image(env) -> None:
    """Quotes, $, backslashes, {{ }}, non-ASCII (and line breaks in exec form) reach the image as written."""
    from tests.test_render_injection import LINE, MULTI, toml

    (env["root"] / "services" / "HostileAgent.toml").write_text(
        f'family = "family-web"\nmachines = ["pc2"]\nport = 7399\nhealth_port = 8399\nneeds = {toml(LINE)}\n'
        f'entrypoint = {toml(["python", "/app/agent.py", MULTI])}\n[env]\nHOSTILE = {toml(LINE)}\n'
    )
    assert build(env, "HostileAgent", tag="hostile-1") == 0
    ref = f"{ADDRESS}/{env['org']}/hostile-agent-pc2:hostile-1"
    docker.image.pull(ref, quiet=True)
    config = docker.image.inspect(ref).config
    assert dict(e.split("=", 1) for e in config.env)["HOSTILE"] == LINE
    assert config.labels["org.opencontainers.image.description"] == f"HostileAgent ({LINE}) for pc2"
    assert config.cmd == ["python", "/app/agent.py", MULTI]


def test_release_records_diff_names_the_images_rebuilt_why_the_package_and_the_layers(env, tmp_path) -> None:
    """The release records of this module's runs, compared as `report --diff` compares them."""
    from buildtool.bench import ADDED_REQUIREMENT, with_requirement
    from buildtool.locking import lock as locking
    from buildtool.model.load import load_fleet
    from buildtool.report import history

    registry, org = Registry(ADDRESS), env["org"]
    release_2 = history.fetch(registry, org, "release-2")
    assert release_2["previous"] == "release-1"
    code = history.diff(history.fetch(registry, org, "release-1"), release_2)
    assert [(c.repository, c.why) for c in code] == [("service-registry-mainpc", ["app code"])]  # one file of its code
    assert {origin for origin, *_ in code[0].layers} <= {"app"} and not code[0].packages  # only the app layer can move

    fam = env["root"] / "families" / "family-web.toml"
    fam.write_text(with_requirement(fam.read_text(), ADDED_REQUIREMENT))
    locking.lock(load_fleet(env["root"]), None, ca_bundle=env["settings"].ca_bundle)
    assert build(env, SERVICE, tag="release-4") == 0
    changes = {c.repository: c for c in history.diff(release_2, history.fetch(registry, org, "release-4"))}
    assert sorted(changes) == ["family-web", "service-registry-mainpc"]  # the family's subtree, nothing else
    assert changes["family-web"].why == ["Python lock"]
    assert changes["service-registry-mainpc"].why == ["app code", "parent"]  # a new parent, and the code change of the failed release-3
    name, version = ADDED_REQUIREMENT.split("==")
    for change in changes.values():
        assert change.packages["python"] == [f"+{name} {version}"]  # from the SBOMs the gate attached
    for change in changes.values():  # family-web's own Python layer grew, and the service has it too
        grown = [(origin, new - old) for origin, _, old, new in change.layers if origin != "app"]
        assert [origin for origin, _ in grown] == ["python"] and grown[0][1] > 0
    page = (env["state"] / "reports" / "index.html").read_text()  # the publish's page, beside its reports
    assert "release-4</h1>" in page and "family-web</td><td>rebuilt</td><td>Python lock</td>" in page
    from tests.test_report_page import check_in_chromium, shots

    check_in_chromium(env["state"] / "reports" / "index.html", tmp_path, shots() / "report-page-release-4.png")  # the page of this run, in a browser
