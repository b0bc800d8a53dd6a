"""The command line: arguments in, one command run, errors printed as one clear message.

Each error class has its own exit code (:mod:`buildtool.core.errors`); a traceback is shown only
with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import NoReturn

from buildtool.adapters import files, host
from buildtool.cli import commands, deploying, reporting
from buildtool.cli.console import error
from buildtool.core import stopping
from buildtool.core.errors import ConfigError, DiskFull, Interrupted, ToolError, UsageError
from buildtool.locking.resolver import ENGINES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Parser(argparse.ArgumentParser):
    """Bad arguments exit with UsageError's code (argparse's own 2 is ConfigError's)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _selection(p: argparse.ArgumentParser) -> None:
    # --registry/--org are also accepted after the command (nox passes its arguments there);
    # SUPPRESS keeps a value given before the command.
    p.add_argument("--registry", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--org", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("services", nargs="*", help="services to build (with the families they need)")
    p.add_argument("--machine", action="append", default=[], help="only this machine (repeatable)")
    p.add_argument("--family", action="append", default=[], help="only this family and its ancestors (repeatable)")
    p.add_argument("--group", action="append", default=[], help="families of this group: cpu, gpu, legacy (repeatable)")
    p.add_argument("--gpu", dest="group", action="append_const", const="gpu", help="same as --group gpu")
    p.add_argument("--all", action="store_true", help="every service")
    p.add_argument("--within-groups", metavar="GROUPS", help="only families and services of these groups (space or comma separated)")
    p.add_argument("--skip-unplaced", action="store_true", help="leave out named services that run on none of the selected machines")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="buildtool", description="Build the fleet's container images.")
    parser.add_argument("--root", default=REPO, help="repository root holding fleet.toml (default: this checkout)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--registry", help="registry host[:port] (default: FLEET_REGISTRY, then fleet.toml)")
    parser.add_argument("--org", help="organisation below the registry (default: FLEET_ORG, then fleet.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("validate", help="check the fleet definition").set_defaults(func=commands.validate)

    p = sub.add_parser("render", help="write all build contexts")
    p.add_argument("--out", help="a new, empty or toolkit-marked folder (default: build/rendered)")
    p.set_defaults(func=commands.render)

    p = sub.add_parser("lock", help="hash-lock family and service requirements (stable: unchanged inputs keep their pins)")
    p.add_argument("names", nargs="*", help="families or services to resolve again (default: those whose inputs changed)")
    p.add_argument("--check", action="store_true", help="fail unless every lock matches its inputs and a fresh resolution of them")
    p.add_argument("--locked", action="store_true", help="with --check: a version the archive no longer serves fails it too (the refresh workflow's mode)")
    p.add_argument("--engine", choices=ENGINES, default="uv")
    p.add_argument("--upgrade", action="store_true", help="resolve every lock from scratch: move every pin to the newest that fits")
    p.add_argument("--upgrade-package", action="append", default=[], metavar="NAME[==VERSION]",
                   help="move this package's pin, to the newest that fits or to VERSION (repeatable)")  # fmt: skip
    p.set_defaults(func=commands.lock)

    p = sub.add_parser("build", help="build, verify, push and publish images")
    _selection(p)
    p.add_argument("--families-only", action="store_true", help="families only (default group: cpu)")
    p.add_argument("--jobs", type=int, help="images built at once (default: 2)")
    p.add_argument("--vuln-policy", choices=("auto", "enforce", "warn"), help="the gate's policy (default: FLEET_VULN_POLICY, then auto)")
    p.add_argument("--no-publish", action="store_true", help="push by identity only; the release is a later `publish` (CI's last job)")
    p.add_argument("--locked", action="store_true", help="refuse OS locks the archive no longer serves (default: forward them to what it serves now)")
    p.set_defaults(func=commands.build)

    p = sub.add_parser("publish", help="release images pushed by identity (CI's last job), and report on them")
    _selection(p)
    p.add_argument("--report-only", action="store_true", help="a job failed: report, move no tag, exit non-zero")
    p.set_defaults(func=commands.publish)

    p = sub.add_parser("bake", help="write the plan as a docker-bake.json")
    _selection(p)
    p.add_argument("--out", help="a new, empty or toolkit-marked folder (default: build/bake)")
    p.set_defaults(func=commands.bake)

    p = sub.add_parser("repro", help="build the selection twice from scratch and compare the image digests")
    _selection(p)
    p.set_defaults(func=commands.repro)

    p = sub.add_parser("bench", help="measure builds, no-ops and locking against docker buildx bake of the same targets")
    p.add_argument("--quick", action="store_true", help="the CPU chain and three services on one machine, one run per row (CI)")
    p.add_argument("--without-cuda", action="store_true", help="leave out the cold CUDA chain row of a full run (about an hour on 2 cores)")
    p.set_defaults(func=commands.bench)

    reporting.add_parser(sub)

    deploying.add_parsers(sub)

    p = sub.add_parser("rollback", help="point 'latest' back at 'prev' (or at FORCE_IMAGE_TAG)")
    _selection(p)
    p.set_defaults(func=commands.rollback)

    p = sub.add_parser("prune", help="retention: old registry tags and blobs, build cache, local images of other orgs")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("--registry-only", action="store_true", help="only the registry org (what the scheduled workflow runs)")
    p.add_argument("--keep-releases", type=int, help="release tags kept per image (default: 5)")
    p.set_defaults(func=commands.prune)

    p = sub.add_parser("refresh", help="move OS versions the archive replaced and packages with a fixable HIGH/CRITICAL advisory; a summary")
    p.add_argument("--summary", help="write the Markdown summary here (default: STATE_DIR/reports/refresh.md; refresh.json beside it)")
    p.add_argument("--vuln-policy", choices=("auto", "enforce", "warn"), help="enforce: no advisory database is an error (the refresh workflow's)")
    p.set_defaults(func=commands.refresh)

    p = sub.add_parser("pull-request", help="commit the changed locks to a branch and open or update its one pull request (GitHub's API)")
    p.add_argument("--body-file", required=True, help="the pull request's text (the refresh summary)")
    p.add_argument("--branch", default="fleet/refresh")
    p.add_argument("--base", default="main")
    p.add_argument("--remote", default="origin")
    p.add_argument("--title", default="Refresh the locks: what the archive replaced and what fixable advisories move")
    p.set_defaults(func=commands.pull_request)

    p = sub.add_parser("workflow", help="write .github/workflows/build.yml from the build plan")
    p.add_argument("--check", action="store_true", help="fail when the committed workflow differs from the generated one")
    p.set_defaults(func=commands.workflow)

    p = sub.add_parser("plan", help="print the build plan")
    _selection(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=commands.plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # A second signal ends the process at once, and what it started with it.
    stopping.install(on_second=lambda: host.end(host.descendants(), grace=0))
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(name)s: %(message)s")
        return args.func(args)
    except Interrupted as exc:
        error(exc.message)
        if argv is None:  # the command line: end now, whatever threads still wait on the network
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        return exc.exit_code
    except ToolError as exc:
        if debug:
            raise
        error(exc.message, file=exc.problems[0].file if isinstance(exc, ConfigError) else None)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`plan --json | head`): stop writing, quietly, as a SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as exc:
        if debug:
            raise
        if said := files.full_disk(exc):  # a write of the toolkit's own, outside a build step
            error(said)
            return DiskFull.exit_code
        error(f"internal error: {type(exc).__name__}: {exc}\nThis is a bug in buildtool; rerun with --debug for the traceback.")
        return 70
    finally:
        stopping.reset()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
