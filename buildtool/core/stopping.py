"""Stop signals: SIGINT and SIGTERM end a run within seconds, whoever sends them.

:func:`install` (the command line's) makes both raise :class:`Interrupted` in the main thread,
even where the shell started the toolkit with SIGINT ignored (a background job): a signal sent
to this process is meant for it. The executor then cancels what runs; a second signal ends the
process at once. Inside :func:`deferred` (publishing tags) a signal waits for the block to end,
so a release is moved whole or not at all.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from buildtool.core.errors import Interrupted

_state = {"stopping": 0, "deferring": 0, "pending": 0}
_on_second: list[Callable[[], None]] = []  # what a second signal does before the process ends


def _handle(signum: int, frame: object) -> None:
    if _state["stopping"]:
        for hook in _on_second:
            hook()
        os._exit(128 + signum)
    _state["stopping"] = signum
    if _state["deferring"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


def install(on_second: Callable[[], None] | None = None) -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread (called from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if on_second is not None:
        _on_second.append(on_second)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handle)


def stopping() -> bool:
    """True once a stop signal arrived (worker threads check it before starting new work)."""
    return bool(_state["stopping"])


@contextmanager
def deferred() -> Iterator[None]:
    """A block a signal must not cut in two: the signal is raised when it ends."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        if not _state["deferring"] and _state["pending"]:
            signum, _state["pending"] = _state["pending"], 0
            raise Interrupted(signum)


def reset() -> None:
    """Forget a stop (tests run several builds in one process)."""
    _state.update(stopping=0, deferring=0, pending=0)
