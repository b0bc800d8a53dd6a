"""One console for all output: rich on a terminal, plain lines in CI or a pipe, GitHub Actions extras."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape

IN_CI = bool(os.environ.get("CI"))
IN_GITHUB = bool(os.environ.get("GITHUB_ACTIONS"))

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def interactive() -> bool:
    """Live displays only on a real terminal outside CI."""
    return console.is_terminal and not IN_CI


def _emit(kind: str, style: str, message: str, file: str | None) -> None:
    """``kind: message`` on stderr; in GitHub Actions also an annotation of its first line."""
    err_console.print(f"[{style}]{kind}:[/] {escape(message)}")
    if IN_GITHUB:
        loc = f" file={file}" if file else ""
        first = message.splitlines()[0] if message else ""
        print(f"::{kind}{loc}::{first}", file=sys.stderr)


def error(message: str, *, file: str | None = None) -> None:
    _emit("error", "bold red", message, file)


def warning(message: str, *, file: str | None = None) -> None:
    """Something to fix that fails nothing (a fleet setting that does nothing), on stderr."""
    _emit("warning", "bold yellow", message, file)


def step_summary(markdown: str) -> None:
    """Append to the GitHub Actions job summary when running there."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
