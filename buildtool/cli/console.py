"""One console for all output: rich on a terminal, plain lines in CI or a pipe, GitHub Actions extras."""

from __future__ import annotations

import os
import secrets
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


def escape_data(text: str) -> str:
    """A workflow command's message, as GitHub's runner reads it back (actions/toolkit escapeData)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file=...): its data escapes, and ':' and ',', which end
    a value (actions/toolkit escapeProperty)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _emit(kind: str, style: str, message: str, file: str | None) -> None:
    """``kind: message`` on stderr; in GitHub Actions also an annotation of it. There the readable
    copy goes out between stop-commands markers: a line of the message that reads as a workflow
    command (it may quote a fleet value) is shown, never run."""
    if not IN_GITHUB:
        err_console.print(f"[{style}]{kind}:[/] {escape(message)}")
        return
    marker = secrets.token_hex(16)
    print(f"::stop-commands::{marker}", file=sys.stderr, flush=True)
    err_console.print(f"[{style}]{kind}:[/] {escape(message)}")
    err_console.file.flush()
    print(f"::{marker}::", file=sys.stderr, flush=True)
    loc = f" file={escape_property(file)}" if file else ""
    print(f"::{kind}{loc}::{escape_data(message)}", file=sys.stderr, flush=True)


def error(message: str, *, file: str | None = None) -> None:
    _emit("error", "bold red", message, file)


def warning(message: str, *, file: str | None = None) -> None:
    """Something to fix that fails nothing (a fleet setting that does nothing), on stderr."""
    _emit("warning", "bold yellow", message, file)


def step_summary(markdown: str) -> None:
    """Append to the GitHub Actions job summary when running there."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path and markdown:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
