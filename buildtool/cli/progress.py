"""Progress of a run: a rich live table on a terminal, one plain line per change elsewhere (CI, pipes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from rich.live import Live
from rich.table import Table

from buildtool.cli.console import console, interactive

STYLES = {
    "queued": "dim",
    "checking": "cyan",
    "building": "yellow",
    "verifying": "magenta",
    "scanning": "magenta",
    "waiting": "dim",  # built and checked; its push waits for its parent's verdict
    "pushing": "blue",
    "built": "green",
    "cached": "green",
    "skipped": "green",
    "failed": "bold red",
    "blocked": "red",
}


class Progress:
    def __init__(self, rows: Iterable[tuple[str, str]], *, live: bool | None = None) -> None:
        """``rows`` are (key, label) pairs in plan order."""
        self.labels = dict(rows)
        self.status = {key: "queued" for key in self.labels}
        self.detail = {key: "" for key in self.labels}
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.lock = threading.Lock()
        self.live_enabled = interactive() if live is None else live
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.live_enabled:
            self._live = Live(self._table(), console=console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)

    def update(self, key: str, status: str, detail: str = "") -> None:
        with self.lock:
            now = time.monotonic()
            if status in ("checking", "building") and key not in self.started:
                self.started[key] = now
            if key in self.started and status in ("built", "cached", "failed", "blocked"):
                self.seconds[key] = now - self.started[key]
            self.status[key], self.detail[key] = status, detail
            if self._live is not None:
                self._live.update(self._table())
            else:
                took = f" ({self.seconds[key]:.1f}s)" if key in self.seconds else ""
                console.print(f"[{status:>9}] {self.labels[key]}{took}{' - ' + detail if detail else ''}")

    def note(self, text: str) -> None:
        """A line of what the run did besides building (a lock it forwarded), printed as it happens."""
        console.print(text, highlight=False, markup=False)

    def _table(self) -> Table:
        table = Table(title="build", expand=False)
        for col in ("image", "status", "time", "detail"):
            table.add_column(col)
        now = time.monotonic()
        for key, label in self.labels.items():
            status = self.status[key]
            secs = self.seconds.get(key, now - self.started[key] if key in self.started else None)
            table.add_row(label, f"[{STYLES.get(status, '')}]{status}[/]", f"{secs:.1f}s" if secs is not None else "", self.detail[key][:80])
        return table
