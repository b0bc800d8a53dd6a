"""User-facing errors. Each class has its own exit code; the command line (:mod:`buildtool.cli.main`) prints them without a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class ToolError(Exception):
    """Base of every error meant for the user rather than for a developer."""

    exit_code = 10

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One problem found in the fleet files: where (file and key) and what to do."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(ToolError):
    """The fleet files are invalid. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.key, p.message))
        lines = [f"{len(self.problems)} problem(s) in the fleet definition:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UsageError(ToolError):
    """Bad command-line arguments (an unknown service, family or machine named on the command line)."""

    exit_code = 3


class LockError(ToolError):
    """A lock file is missing, stale, or could not be resolved."""

    exit_code = 4


class UnservedVersion(LockError):
    """Locked package versions the archive no longer serves (it keeps only the newest of each
    pocket). ``packages``: each (package, version), sorted."""

    def __init__(self, packages: list[tuple[str, str]], archive: str) -> None:
        self.packages = sorted(set(packages))
        self.archive = archive
        super().__init__("; ".join(f"{p} {v} is no longer served by the {archive} archive" for p, v in self.packages))


class CommandError(ToolError):
    """An external command failed."""

    exit_code = 5

    def __init__(self, argv: list[str], returncode: int, stderr: str = "") -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-20:])
        msg = f"command failed with exit code {returncode}: {' '.join(argv)}"
        if tail:
            msg += f"\n{tail}"
        super().__init__(msg)


class MissingToolError(ToolError):
    """A required program is not installed."""

    exit_code = 6


class EngineError(ToolError):
    """No usable container engine or registry, and none could be started."""

    exit_code = 7


class BuildError(ToolError):
    """An image failed to build or failed its checks; nothing was published. ``run``: what the
    run did get to (for its report)."""

    exit_code = 8

    def __init__(self, message: str, *, run: object = None) -> None:
        super().__init__(message)
        self.run = run


class OutputError(ToolError):
    """A path the toolkit was asked to write to is not one it may write to (or empty)."""

    exit_code = 11


class SecurityError(ToolError):
    """The supply-chain gate cannot run as configured (no advisory database under enforce, an
    expired allowlist entry, a scanner failure)."""

    exit_code = 12


class ReleaseError(ToolError):
    """Publishing would break a release: a release tag that already names other images, or
    ``latest`` moved by another publish meanwhile."""

    exit_code = 13


class VerifyError(BuildError):
    """A built image failed its smoke checks or health check."""

    exit_code = 9


class Interrupted(ToolError):
    """The run was told to stop (SIGINT, SIGTERM). Running steps were cancelled; images already
    pushed by identity stay (the next run resumes from them); no release tag moved."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"interrupted by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


class Busy(ToolError):
    """Another run holds the state dir."""

    exit_code = 14


class RefError(ToolError):
    """A CI run of a ref other than main was asked to move or delete release tags."""

    exit_code = 15


class TimeLimit(BuildError):
    """A step ran past its time limit and was ended."""


class DeployError(ToolError):
    """A deploy did not reach every service healthy (what ran before runs again), or its preflight failed."""

    exit_code = 16


class DiskFull(ToolError):
    """A disk the run writes to (the engine's data root, the state dir, the local registry's
    storage) is short of free space, after the toolkit freed what it made and no longer needs."""

    exit_code = 17
