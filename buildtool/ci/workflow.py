"""The GitHub Actions release workflow, generated from the build plan (`nox -s workflow`).

Jobs follow the plan's DAG: the tests; one job per level of the family tree (a matrix leg per
family image, per machine only where a family is built per machine), parents' levels first;
services per machine; one publish job that moves the release tags only when every job of the run
succeeded, and reports (job summary, SBOMs and the JSON report as an artifact) either way. Every
build job builds, verifies, scans and pushes by identity only.

Fleet names reach this file only as validated tokens, written as JSON strings (valid YAML);
runtime values reach shell lines only through ``env:``.
"""

from __future__ import annotations

import json

from buildtool.model.types import Fleet
from buildtool.plan.plan import Step, make_plan
from buildtool.settings import RELEASE_REF

PATH = ".github/workflows/build.yml"
# Third-party actions, pinned by commit (the version in the comment).
CHECKOUT = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1  # v7.0.1"
SETUP_PYTHON = "actions/setup-python@5fda3b95a4ea91299a34e894583c3862153e4b97  # v7.0.0"
UPLOAD_ARTIFACT = "actions/upload-artifact@bbbca2ddaa5d8feaa63e36b76fdaad77386f024f  # v7.0.0"
RUNNER = "ubuntu-24.04"
ENVIRONMENT = "release"  # the GitHub environment of every job that moves or deletes release tags
PYTHON = "3.11"
MINUTES = {"test": 30, "cpu": 60, "gpu": 240, "services": 120, "publish": 30}
SELECTED = "contains(format(' {0} ', env.FLEET_CI_GROUPS), format(' {0} ', matrix.group))"

HEADER = """\
# Generated from the build plan by `nox -s workflow`; do not edit (tests/test_workflow.py checks it).
# Jobs follow the family tree: a job per level (a leg per family image), then services per machine,
# then one publish job that moves release tags only when every job succeeded. Build jobs push by
# identity only. Repository variables: FLEET_REGISTRY (default ghcr.io), FLEET_ORG (default the
# owner, lower-cased), FLEET_TRIVY_DB_REPOSITORY, FLEET_CI_GROUPS, FLEET_CI_SERVICES (service names, or
# all; each word passed after --, so never an option).
# Only a run for main publishes, in the `release` environment (its deployment-branch rule: main);
# any other ref's build jobs push into their own org (ORG/branch-<hash of the ref>) and cache.
# Build jobs are --locked: an OS lock the archive no longer serves fails them, naming the refresh
# (refresh.yml proposes it daily as a pull request).
name: build

on:
  push:
    branches: [main]
  pull_request:
  workflow_dispatch:

permissions: {}

concurrency:
  group: build-${{ github.ref }}
  cancel-in-progress: ${{ github.event_name == 'pull_request' }}

env:
  FLEET_REGISTRY: ${{ vars.FLEET_REGISTRY || 'ghcr.io' }}
  FLEET_VULN_POLICY: enforce
  FLEET_CACHE_MODE: max  # every stage's layers into the registry cache: each job's runner starts with none
  FLEET_TRIVY_DB_REPOSITORY: ${{ vars.FLEET_TRIVY_DB_REPOSITORY || 'ghcr.io/aquasecurity/trivy-db:2' }}
  FLEET_CI_GROUPS: ${{ vars.FLEET_CI_GROUPS || '%(groups)s' }}
  FLEET_CI_SERVICES: ${{ vars.FLEET_CI_SERVICES || 'all' }}
  PIP_DISABLE_PIP_VERSION_CHECK: "1"

jobs:
"""

SETUP = """\
      - name: Check out%(if)s
        uses: %(checkout)s
        with:
          persist-credentials: false
      - name: Set up Python%(if)s
        uses: %(setup_python)s
        with:
          python-version: "%(python)s"
      - name: Install nox (hash-locked)%(if)s
        run: python -m pip install --require-hashes -r requirements/nox.txt
"""


def _setup(cond: str = "") -> str:
    return SETUP % {"if": f"\n        if: {cond}" if cond else "", "checkout": CHECKOUT, "setup_python": SETUP_PYTHON, "python": PYTHON}

RUNNER_PREP = """\
      - name: Prepare the runner (disk for CUDA images, the containerd image store)
        if: ${{ %(cond)s && !env.ACT }}
        env:
          GPU: ${{ %(gpu)s }}
        run: |
          set -euo pipefail
          if [ "$GPU" = "true" ]; then
            sudo rm -rf /usr/share/dotnet /usr/local/lib/android /opt/ghc /opt/hostedtoolcache/CodeQL
          fi
          cfg=/etc/docker/daemon.json
          current='{}'
          if [ -s "$cfg" ]; then current="$(sudo cat "$cfg")"; fi
          printf '%%s\\n' "$current" | jq '.features["containerd-snapshotter"] = true' > "$RUNNER_TEMP/daemon.json"
          sudo install -m 0644 "$RUNNER_TEMP/daemon.json" "$cfg"
          sudo systemctl restart docker
          for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
          docker info -f '{{ .DriverStatus }}' | grep -q io.containerd.snapshotter
          df -h /
      - name: Log in to the registry
        if: ${{ %(cond)s && !env.ACT }}
        env:
          TOKEN: ${{ secrets.GITHUB_TOKEN }}
          ACTOR: ${{ github.actor }}
        run: printf '%%s' "$TOKEN" | docker login "$FLEET_REGISTRY" -u "$ACTOR" --password-stdin
"""

REGISTRY_ENV = """\
          FLEET_STATE_DIR: ${{ runner.temp }}/fleet-state  # outside the checkout: nothing committed can shape it
          FLEET_REGISTRY_USER: ${{ github.actor }}
          FLEET_REGISTRY_TOKEN: ${{ secrets.GITHUB_TOKEN }}
          OWNER: ${{ vars.FLEET_ORG || github.repository_owner }}
"""
ORG = """org="$(printf '%s' "$OWNER" | tr '[:upper:]' '[:lower:]')\""""


def _q(value: str) -> str:
    return json.dumps(value)


def _leg(step: Step, fleet: Fleet) -> str:
    family = fleet.families[step.name]
    cells = [f"image: {_q(step.repository)}", f"family: {_q(step.name)}", f"machine: {_q(step.machine or '')}",
             f"group: {_q(family.group)}", f"gpu: {'true' if family.gpu else 'false'}"]  # fmt: skip
    return "          - {" + ", ".join(cells) + "}\n"


def _level_job(index: int, steps: list[Step], fleet: Fleet) -> str:
    gpu = any(fleet.families[s.name].gpu for s in steps)
    needs = f"[level-{index - 1}]" if index else "[test]"
    cond = SELECTED
    out = [
        f"  level-{index}:\n",
        f'    name: "level {index}: ${{{{ matrix.image }}}}"\n',
        f"    needs: {needs}\n",
        "    if: github.event_name != 'pull_request'\n",
        f"    runs-on: {RUNNER}\n",
        f"    timeout-minutes: {MINUTES['gpu' if gpu else 'cpu']}\n",
        "    permissions:\n      contents: read\n      packages: write  # pushes the images by identity\n",
        "    strategy:\n      fail-fast: false\n      matrix:\n        include:\n",
        *(_leg(s, fleet) for s in steps),
        "    steps:\n",
        _setup(cond),
        RUNNER_PREP % {"cond": cond, "gpu": "matrix.gpu"},
        "      - name: Build, verify, scan and push ${{ matrix.image }}\n",
        f"        if: {cond}\n",
        f"        timeout-minutes: {MINUTES['gpu' if gpu else 'cpu'] - 5}\n",
        "        env:\n",
        REGISTRY_ENV,
        "          FAMILY: ${{ matrix.family }}\n",
        "          MACHINE: ${{ matrix.machine }}\n",
        "        run: |\n",
        "          set -euo pipefail\n",
        f"          {ORG}\n",
        '          nox -s build -- --org "$org" --families-only --family "$FAMILY" ${MACHINE:+--machine "$MACHINE"} --no-publish --locked\n',
    ]
    return "".join(out)


def _services_job(after: int, fleet: Fleet) -> str:
    machines = sorted({m for s in fleet.services.values() for m in s.machines})
    gpu = {m: any(fleet.families[s.family].gpu for s in fleet.services.values() if m in s.machines) for m in machines}
    legs = "".join("          - {" + f"machine: {_q(m)}, gpu: {'true' if gpu[m] else 'false'}" + "}\n" for m in machines)
    return "".join(
        [
            "  services:\n",
            '    name: "services: ${{ matrix.machine }}"\n',
            f"    needs: [level-{after}]\n",
            "    if: github.event_name != 'pull_request'\n",
            f"    runs-on: {RUNNER}\n",
            f"    timeout-minutes: {MINUTES['services']}\n",
            "    permissions:\n      contents: read\n      packages: write  # pushes the images by identity\n",
            "    strategy:\n      fail-fast: false\n      matrix:\n        include:\n",
            legs,
            "    steps:\n",
            _setup(),
            RUNNER_PREP % {"cond": "true", "gpu": "matrix.gpu"},
            "      - name: Build, verify, scan and push the services of ${{ matrix.machine }}\n",
            f"        timeout-minutes: {MINUTES['services'] - 5}\n",
            "        env:\n",
            REGISTRY_ENV,
            "          MACHINE: ${{ matrix.machine }}\n",
            "        run: |\n",
            "          set -euo pipefail\n",
            f"          {ORG}\n",
            SELECTION,
            '          nox -s build -- --org "$org" --machine "$MACHINE" --within-groups "$FLEET_CI_GROUPS" --skip-unplaced --no-publish --locked'
            ' "${selection[@]}"\n',
        ]
    )


# The services of FLEET_CI_SERVICES as arguments: `all` (or --all) is every service; any other
# words come after "--", so a word such as --registry=... is a service name the plan refuses.
SELECTION = (
    '          read -ra names <<< "$FLEET_CI_SERVICES"\n'
    '          case "${names[*]}" in all|--all) selection=(--all) ;; *) selection=(-- "${names[@]}") ;; esac\n'
)


def _test_job() -> str:
    return "".join(
        [
            "  test:\n",
            "    name: test\n",
            f"    runs-on: {RUNNER}\n",
            f"    timeout-minutes: {MINUTES['test']}\n",
            "    permissions:\n      contents: read\n",
            "    steps:\n",
            _setup(),
            "      - name: Lint (ruff, hadolint, trivy config, workflow checkers)\n        run: nox -s lint\n",
            "      - name: Locks match a fresh resolution\n        run: nox -s lock -- --check\n",
            '      - name: Unit tests\n        run: nox -s tests -- -m "not engine and not network and not gpu_families"\n',
        ]
    )


def _publish_job(needs: list[str]) -> str:
    return "".join(
        [
            "  publish:\n",
            "    name: publish\n",
            f"    needs: [{', '.join(needs)}]\n",
            f"    if: ${{{{ always() && github.event_name != 'pull_request' && github.ref == '{RELEASE_REF}' }}}}\n",
            f"    environment: {ENVIRONMENT}  # its deployment-branch rule admits main alone\n",
            f"    runs-on: {RUNNER}\n",
            f"    timeout-minutes: {MINUTES['publish']}\n",
            "    permissions:\n      contents: read\n      packages: write  # moves the release tags\n",
            "    concurrency:\n      group: publish-${{ github.repository }}\n      cancel-in-progress: false\n",
            "    steps:\n",
            _setup(),
            "      - name: Publish the release (or only report, when a job failed)\n",
            f"        timeout-minutes: {MINUTES['publish'] - 5}\n",
            "        env:\n",
            REGISTRY_ENV,
            "          RESULTS: ${{ join(needs.*.result, ' ') }}\n",
            "        run: |\n",
            "          set -euo pipefail\n",
            f"          {ORG}\n",
            "          mode=()\n",
            '          case " $RESULTS " in *" failure "*|*" cancelled "*|*" skipped "*) mode=(--report-only) ;; esac\n',
            SELECTION,
            '          nox -s publish -- --org "$org" --within-groups "$FLEET_CI_GROUPS" --skip-unplaced "${mode[@]}" "${selection[@]}"\n',
            "      - name: Keep the report and the SBOMs\n",
            "        if: always()\n",
            f"        uses: {UPLOAD_ARTIFACT}\n",
            "        with:\n          name: fleet-report\n          path: ${{ runner.temp }}/fleet-state/reports/\n          if-no-files-found: warn\n",
        ]
    )


def render(fleet: Fleet) -> str:
    """The workflow text for ``fleet``: the same every time for the same fleet."""
    plan = make_plan(fleet, all_families=True)
    waves = [[s for s in wave if s.kind == "family"] for wave in plan.levels()]
    waves = [w for w in waves if w]
    groups = " ".join(sorted({f.group for f in fleet.families.values()}))
    jobs = [_test_job(), *(_level_job(i, steps, fleet) for i, steps in enumerate(waves)), _services_job(len(waves) - 1, fleet)]
    jobs.append(_publish_job(["test", *(f"level-{i}" for i in range(len(waves))), "services"]))
    return HEADER % {"groups": groups} + "\n".join(jobs)
