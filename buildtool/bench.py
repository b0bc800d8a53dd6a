"""`nox -s bench`: the toolkit against `docker buildx bake` of the same targets, in one run.

Everything runs on a copy of the fleet under the state dir, with its own registry orgs, through
the library call the command line makes (the no-op and the unchanged lock through the command
line itself, interpreter start included). Bake builds the bake file the toolkit writes for the
same plan (``python -m buildtool bake``), with a buildx that can run it (:func:`bake.ensure_bake`).

Rows, each with the same selection on both sides:

1. cold build of the CPU family chain: no BuildKit cache, no registry cache;
2. no-op of the selection after both sides built it once (median of paired runs);
3. one service's code change; 4. one family's requirement change (relocked, then its subtree);
   each side builds a change of its own, so that neither finds the other's in BuildKit's cache;
5. locking: an unchanged fleet (incremental), and a full re-resolve (``lock --upgrade``, uv) vs pip-compile of the same targets, one after another;
6. image sizes: the toolkit's services against a naive single-stage Dockerfile of them;
7. (full runs only, unless ``--without-cuda``) cold build of one machine's CUDA chain, base-gpu-cu121 → family-torch-cu121 →
   family-llm-cu121: about 10 GB and many minutes on each side.

Each toolkit row's critical path (the chain of images that set its length, with each image's
longest stage) is a note of the report.

The toolkit's rows build, verify (smoke checks, health under --network=none) and push; bake's
build and load. The supply-chain gate is off on both sides (bake has none). ``quick`` takes the
CPU chain and three services on one machine, one run per row: what CI runs, so a broken bench
fails CI. Results go to the state dir's reports/bench.json and bench.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from buildtool import bake, pipeline, refresh
from buildtool.adapters import host
from buildtool.adapters.bootstrap import bootstrap_rootfs
from buildtool.adapters.engine import IDENTITY_LABEL, Docker
from buildtool.adapters.files import atomic_write, copy_fleet, owned_dir, write_context
from buildtool.adapters.protocols import Engine, Registry
from buildtool.core.errors import BuildError
from buildtool.execute import space
from buildtool.execute.executor import Progress
from buildtool.execute.roots import rootfs
from buildtool.locking import lock as locking
from buildtool.locking.resolver import pip_compile_can_lock, resolve
from buildtool.locking.targets import targets
from buildtool.model.load import load_fleet
from buildtool.model.locks import family_lock_path, service_lock_path
from buildtool.model.types import Fleet, Service
from buildtool.plan.plan import MB, Plan, make_plan
from buildtool.render import quote
from buildtool.settings import PIP_INDEX_VAR, Settings

CHANGED_SERVICE = "ServiceRegistry"  # gets its own copy of the agent code, changed by the bench
CHANGED_FAMILY = "family-web"
ADDED_REQUIREMENT = "itsdangerous==2.2.0"  # small, pure Python, in no lock of the fleet
BAKE_REQUIREMENT = "itsdangerous==2.1.2"  # bake's own change: the toolkit's build left the first one in BuildKit's cache
NAIVE = ["ServiceRegistry", "SelfHealingSupervisor", "AdvancedCommandHandler"]  # web, own requirements, legacy
CUDA_CHAIN, CUDA_MACHINE = "family-llm-cu121", "mainpc"  # base-gpu-cu121 → family-torch-cu121 → family-llm-cu121-mainpc
REQUESTS_BUDGET = 1.5  # registry requests per image a no-op may make
GROUPS = {"cpu", "legacy"}  # the CPU fleet: no CUDA family builds in the bench
TOOLKIT_SECRETS = ("FLEET_REGISTRY_TOKEN", PIP_INDEX_VAR)  # what a toolkit child process needs of its parent's secrets


@dataclass(frozen=True, kw_only=True)
class Row:
    measurement: str
    toolkit: float
    baseline: str
    baseline_value: float | None
    unit: str = "s"
    goal: float | None = None  # the ratio baseline/toolkit the row should reach (at least)

    @property
    def ratio(self) -> float | None:
        return self.baseline_value / self.toolkit if self.baseline_value is not None and self.toolkit else None

    @property
    def met(self) -> bool | None:
        return None if self.goal is None or self.ratio is None else self.ratio >= self.goal

    def cells(self) -> tuple[str, str, str, str, str, str]:
        """measurement, toolkit, baseline, baseline value, ratio, goal: as the table and Markdown show them."""
        base = "-" if self.baseline_value is None else f"{self.baseline_value:.2f} {self.unit}"
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}x"
        goal = "" if self.goal is None else f"≥ {self.goal:.2f}x: {'met' if self.met else 'NOT met'}"
        return self.measurement, f"{self.toolkit:.2f} {self.unit}", self.baseline, base, ratio, goal


@dataclass(kw_only=True)
class Report:
    mode: str
    images: int
    bake: bake.Bake
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "images": self.images,
            "bake": {"buildx": self.bake.buildx, "buildkit": self.bake.buildkit, "plugin": str(self.bake.docker_config or "")},
            "rows": [{**dataclasses.asdict(r), "ratio": r.ratio, "met": r.met} for r in self.rows],
            "notes": self.notes,
        }

    def markdown(self) -> str:
        lines = [
            f"# bench ({self.mode}: {self.images} images)",
            "",
            f"bake: {self.bake.buildx}; BuildKit {self.bake.buildkit}",
            "",
            "| measurement | toolkit | baseline | baseline value | ratio (baseline / toolkit) | goal |",
            "|---|---:|---|---:|---:|---|",
        ]
        lines += ["| " + " | ".join(r.cells()) + " |" for r in self.rows]
        lines += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"


def with_requirement(family_toml: str, requirement: str) -> str:  # the family file's text, ``requirement`` listed first
    return re.sub(r"^requirements = \[", f'requirements = ["{requirement}", ', family_toml, count=1, flags=re.M)


class _Quiet:
    def update(self, key: str, status: str, detail: str = "") -> None:
        pass

    def note(self, text: str) -> None:
        pass


def _timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def _copy_fleet(src: Path, dest: Path) -> None:
    owned_dir(dest, repo=src, what="bench fleet copy", clear=True)
    copy_fleet(src, dest)
    agent = dest / "agents" / "reference_agent" / "agent.py"
    write_context(dest / "agents" / "bench_agent", [("agent.py", agent.read_bytes())])
    svc = dest / "services" / f"{CHANGED_SERVICE}.toml"
    svc.write_text(svc.read_text() + 'source = "agents/bench_agent"\n')


class Bench:
    """One bench run: the fleet copy, its settings, the bake that builds the same targets."""

    def __init__(self, settings: Settings, *, quick: bool, progress: Progress) -> None:
        pipeline.prepare_state(settings)
        pipeline.bring_up(settings)
        space.ensure_space(settings, Docker())  # both sides build from cold: room first, before the fleet copy
        self.state = settings.state_dir / "bench"
        self.root = self.state / "fleet"
        _copy_fleet(settings.root, self.root)
        stamp = int(time.time())
        self.settings = dataclasses.replace(settings, root=self.root, org=f"bench-{stamp}", state_dir=self.state / "state", scan=False)
        # Both sides build from the copy's locks: what the archive replaced moves first, as a build would move it.
        refresh.archive_moves(self.settings, load_fleet(self.root))
        self.cold = dataclasses.replace(self.settings, org=f"bench-{stamp}-cold", cache=False)
        self.quick = quick
        self.progress = progress
        self.notes: list[str] = []  # each toolkit row's critical path
        self.registry = pipeline.bring_up(self.settings)
        self.bake = bake.ensure_bake(self.settings.state_dir)

    # -- the two sides ------------------------------------------------------------------------

    def plan(self, families_only: bool = False) -> Plan:
        """The CPU family chain, and (unless ``families_only``) the selection's services."""
        fleet = load_fleet(self.root)
        groups = sorted(GROUPS)
        if families_only:
            return make_plan(fleet, groups=groups)
        if self.quick:
            return make_plan(fleet, groups=groups, services=NAIVE, machines=["mainpc"])
        return make_plan(fleet, groups=groups, services=[n for n, s in fleet.services.items() if fleet.families[s.family].group in GROUPS])

    def toolkit(self, tag: str, settings: Settings | None = None, plan: Plan | None = None) -> float:
        """One build through the library; ``tag`` names its release (each row's its own: release
        tags are immutable, and the fleet copy's revision is the checkout's)."""
        settings = settings or self.settings
        plan = plan or self.plan()
        start = time.monotonic()
        run = pipeline.build(settings, load_fleet(self.root), plan, progress=self.progress, tag=tag)
        took = time.monotonic() - start
        self.notes.append(f"{tag}: {run.critical}")
        return took

    def toolkit_cli(self, *args: str) -> float:
        """The command line, as a user runs it: interpreter start, imports and all."""
        env = {"FLEET_STATE_DIR": str(self.settings.state_dir), "FLEET_ORG": self.settings.org}
        argv = [sys.executable, "-m", "buildtool", "--root", str(self.root), *args]
        start = time.monotonic()
        proc = host.run(argv, env=env, check=False, keep=TOOLKIT_SECRETS)  # the toolkit itself: its own credentials
        took = time.monotonic() - start
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(argv[2:])} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return took

    def bake_file(self, plan: Plan, settings: Settings | None = None) -> Path:
        settings = settings or self.settings
        dest = self.state / ("bake-cold" if settings is self.cold else "bake")
        return bake.write(plan, settings, owned_dir(dest, what="bench bake file", clear=True),
                          bootstrap=lambda step: rootfs(step, settings, bootstrap_rootfs))  # fmt: skip

    def baked(self, file: Path, *extra: str) -> float:
        argv = self.bake.argv(file, "--progress=plain", *extra, reads=(self.settings.ca_bundle, file.parent))
        log = file.parent / "bake.log"
        start = time.monotonic()
        proc = host.run(argv, env=self.bake.env, check=False, keep=(PIP_INDEX_VAR,))  # the BuildKit secret pip_index
        took = time.monotonic() - start
        log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise BuildError(f"docker buildx bake failed (exit {proc.returncode}, log: {log}):\n{log.read_text()[-3000:]}")
        return took

    # -- the rows -----------------------------------------------------------------------------

    def cold_chain(self) -> Row:
        plan = self.plan(families_only=True)
        file = self.bake_file(plan, self.cold)  # bootstraps the roots first: neither side pays for them
        ours = self.toolkit("bench-cold", self.cold, plan)
        theirs = self.baked(file, "--no-cache")
        return Row(measurement=f"cold build of the CPU family chain ({len(plan.steps)} images)", toolkit=ours,
                   baseline="bake --no-cache", baseline_value=theirs, goal=1.0)  # fmt: skip

    def cuda_chain(self) -> Row:
        """The CUDA chain of one machine, cold on both sides: where users wait longest (full runs only)."""
        plan = make_plan(load_fleet(self.root), families=[CUDA_CHAIN], machines=[CUDA_MACHINE])
        cold = dataclasses.replace(self.cold, org=self.cold.org + "-cuda")
        file = self.bake_file(plan, cold)
        ours = self.toolkit("bench-cuda", cold, plan)
        theirs = self.baked(file, "--no-cache")
        chain = " → ".join(s.repository for s in plan.steps)
        return Row(measurement=f"cold build of the CUDA chain ({chain})", toolkit=ours, baseline="bake --no-cache", baseline_value=theirs, goal=1.0)

    def noop(self, runs: int) -> tuple[Row, Row]:
        plan = self.plan()
        file = self.bake_file(plan)
        # The command line's selection of the same plan.
        args = ["build", "--all", "--within-groups", "cpu,legacy"]
        if self.quick:
            args = ["build", "--group", "cpu", "--group", "legacy", "--machine", "mainpc", *NAIVE]
        self.toolkit_cli(*args)
        self.baked(file)  # both sides built once, not measured
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(self.toolkit_cli(*args))
            theirs.append(self.baked(file))
        counted = pipeline.bring_up(self.settings, engine=False)
        run = pipeline.build(self.settings, load_fleet(self.root), plan, progress=self.progress, registry=counted)  # the command line's release tag
        if run.count("built"):
            raise BuildError(f"the no-op built {run.count('built')} image(s): the bench's fleet changed under it")
        per_image = counted.requests / len(plan.steps)
        n = f"median of {runs}" if runs > 1 else "one run"
        return (
            Row(measurement=f"no-op, {len(plan.steps)} images ({n}, command line)", toolkit=statistics.median(ours),
                baseline="bake, warm", baseline_value=statistics.median(theirs), goal=10.0),
            # At most REQUESTS_BUDGET: the image's identity lookup and its share of the release reads.
            Row(measurement="registry requests per image in a no-op", toolkit=per_image, baseline="budget", baseline_value=REQUESTS_BUDGET, unit="req",
                goal=1.0),
        )  # fmt: skip

    def code_change(self) -> Row:
        agent = self.root / "agents" / "bench_agent" / "agent.py"
        agent.write_text(agent.read_text() + "\n# bench change 1\n")
        ours = self.toolkit("bench-change")
        agent.write_text(agent.read_text() + "\n# bench change 2\n")
        theirs = self.baked(self.bake_file(self.plan()))
        return Row(measurement=f"one service's code change ({CHANGED_SERVICE})", toolkit=ours, baseline="bake", baseline_value=theirs, goal=1.1)

    def requirement_change(self) -> Row:
        fam = self.root / "families" / f"{CHANGED_FAMILY}.toml"  # each side its own change (row 4 of the module docstring)
        text = fam.read_text()

        def relocked(requirement: str) -> Plan:
            fam.write_text(with_requirement(text, requirement))
            locking.lock(load_fleet(self.root), None, ca_bundle=self.settings.ca_bundle)
            return self.plan()

        plan = relocked(ADDED_REQUIREMENT)
        subtree = [s for s in plan.steps if CHANGED_FAMILY in s.lineage]
        ours = self.toolkit("bench-requirement", plan=plan)
        built = json.loads((self.settings.state_dir / "reports" / "last-run.json").read_text())["results"]
        rebuilt = sorted(r["repository"] for r in built if r["status"] == "built")
        if rebuilt != sorted(s.repository for s in subtree):
            raise BuildError(f"a {CHANGED_FAMILY} requirement change rebuilt {rebuilt}, not its subtree")
        theirs = self.baked(self.bake_file(relocked(BAKE_REQUIREMENT)))
        relocked(ADDED_REQUIREMENT)  # the fleet as the toolkit built it, for the rows after this one
        return Row(measurement=f"{CHANGED_FAMILY} requirement change ({len(subtree)} images rebuilt)", toolkit=ours, baseline="bake", baseline_value=theirs,
                   goal=1.0)  # fmt: skip

    def locks(self) -> list[Row]:
        unchanged = self.toolkit_cli("lock")
        fleet = load_fleet(self.root)
        chosen = [t for t in targets(fleet) if pip_compile_can_lock(t) and (t.name not in fleet.families or not fleet.families[t.name].gpu)]
        if self.quick:
            chosen = chosen[:1]
        parent = lambda t: fleet.locks.get(t.constraints) if t.constraints else None  # noqa: E731
        ca = self.settings.ca_bundle
        # The toolkit's `lock --upgrade` of these targets, on a scratch copy (it may move pins);
        # pip-compile as pip-tools runs it, one target after another, each on its parent's lock.
        scratch = owned_dir(self.state / "fleet-relock", repo=self.root, what="bench relock copy", clear=True)
        copy_fleet(self.root, scratch)
        relock = load_fleet(scratch)
        uv = _timed(lambda: locking.lock(relock, [t.name for t in chosen], upgrade=True, engine="uv", ca_bundle=ca))
        pipc = sum(_timed(lambda t=t: resolve(t, parent(t), engine="pip-compile", ca_bundle=ca)) for t in chosen)
        return [
            Row(measurement="lock an unchanged fleet (command line)", toolkit=unchanged, baseline="-", baseline_value=None),
            Row(measurement=f"full re-resolve of {len(chosen)} targets (lock --upgrade, uv)", toolkit=uv, baseline="pip-compile, one by one",
                baseline_value=pipc, goal=50.0),
        ]  # fmt: skip


def naive_dockerfile(fleet: Fleet, service: Service, machine: str) -> str:
    """One stage, as a hand-written Dockerfile would have it: the root family's builder root (the
    same OS and Python, with apt and pip), the lineage's OS packages and the service's complete
    lock installed on top, the app copied in, nothing cleaned up."""
    os_packages = sorted({p for f in fleet.lineage(service.family) for p in f.os_packages})
    profile = fleet.machines[machine].profile_dict()
    lines = ["ARG BUILDER_IMAGE", "FROM ${BUILDER_IMAGE}", "USER 0:0"]
    if os_packages:  # fleet values, written as the toolkit's own Dockerfiles write them
        lines.append(f"RUN apt-get update && apt-get install -y {quote.shell_words(os_packages)}")
    lines += [
        "COPY requirements.txt /tmp/requirements.txt",
        "RUN --network=host --mount=type=secret,id=pip_ca PIP_CERT=/run/secrets/pip_ca pip install --require-hashes --no-deps -r /tmp/requirements.txt",
        "COPY app/ /app/",
        f"ENV {quote.key_values(sorted(profile.items()))}",
        "USER 10001:10001",
        f"CMD {quote.exec_form(service.entrypoint)}",
    ]
    return "\n".join(lines) + "\n"


def naive_sizes(settings: Settings, fleet: Fleet, engine: Engine, registry: Registry, names: list[str]) -> list[Row]:
    """Compressed size of each service as the toolkit built it vs a naive single-stage build of it."""
    plan = make_plan(fleet, services=names, machines=["mainpc"])
    rows: list[Row] = []
    for step in (s for s in plan.steps if s.kind == "service"):
        service = fleet.services[step.name]
        owner = fleet.lock_owner(service.family)
        path = service_lock_path(service.name) if service.requirements else family_lock_path(owner.name) if owner else None
        lock = fleet.lock(path) if path else None
        files = [("Dockerfile", naive_dockerfile(fleet, service, step.machine or "").encode()), ("requirements.txt", (lock.text if lock else "").encode())]
        files += [(f"app/{p}", d) for p, d in fleet.sources[service.source].files]
        context = write_context(settings.state_dir / "naive" / step.repository, files)
        root = plan.step(step.builder or "")
        builder = registry.digest(settings.ref(root.builder_repository).path, root.id_tag)
        built = engine.build(context=context, tag=str(settings.ref(f"naive-{step.repository}", "bench")), secrets=settings.secrets(), cache_ref=None,
                             build_args={"BUILDER_IMAGE": str(settings.ref(root.builder_repository, digest=builder or ""))}, labels={IDENTITY_LABEL: "naive"},
                             log=settings.state_dir / "naive" / f"{step.repository}.log")  # fmt: skip
        ours = sum(registry.layer_sizes(settings.ref(step.repository).path, step.id_tag))
        rows.append(Row(measurement=f"{step.repository} size", toolkit=ours / MB, baseline="naive single stage", baseline_value=built.compressed / MB,
                        unit="MB"))  # fmt: skip
    return rows


def run_bench(settings: Settings, *, quick: bool = False, cuda: bool = True, say: Callable[[str], None] = lambda line: None) -> Report:
    """Run every row on a copy of ``settings.root``'s fleet; write reports/bench.{json,md} to the state dir."""
    say("setting up: the fleet copy, the registry, a buildx whose bake runs the bake file")
    bench = Bench(settings, quick=quick, progress=_Quiet())
    report = Report(mode="quick" if quick else "full", images=len(bench.plan().steps), bake=bench.bake)
    say(f"bake: {bench.bake.buildx}; BuildKit {bench.bake.buildkit}")
    try:
        _rows(bench, report, quick=quick, cuda=cuda, say=say)
    finally:  # the bench's orgs are its own: their local images go (the registry's stay, for its report's digests)
        Docker().remove_images(bench.settings.registry, only_org=bench.settings.org)
    report.notes += [
        *bench.notes,
        "toolkit rows build, verify (smoke checks, health) and push; bake rows build and load; the gate is off on both sides",
        f"bake file and logs: {bench.state / 'bake'}; the bench fleet and its state: {bench.state}",
    ]
    reports = settings.state_dir / "reports"
    atomic_write(reports / "bench.json", json.dumps(report.as_json(), indent=2) + "\n")
    atomic_write(reports / "bench.md", report.markdown())
    return report


def _rows(bench: Bench, report: Report, *, quick: bool, cuda: bool, say: Callable[[str], None]) -> None:
    for what, row in (
        ("cold build of the CPU family chain, both sides", bench.cold_chain),
        (f"first build of {report.images} images on both sides, then the no-op", lambda: bench.noop(runs=1 if quick else 3)),
        ("one service's code change", bench.code_change),
        (f"a {CHANGED_FAMILY} requirement change: relock, then both sides", bench.requirement_change),
        ("locking: unchanged fleet, then uv vs pip-compile", bench.locks),
        ("naive single-stage builds of three services", lambda: naive_sizes(bench.settings, load_fleet(bench.root), Docker(), bench.registry, NAIVE)),
        *([] if quick or not cuda else [(f"cold build of the CUDA chain of {CUDA_MACHINE}, both sides", bench.cuda_chain)]),
    ):
        say(what)
        made = row()
        report.rows += made if isinstance(made, (list, tuple)) else [made]
