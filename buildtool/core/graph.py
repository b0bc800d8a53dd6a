"""Ordering a forest parents-first, and the cycle that prevents it."""

from __future__ import annotations

from collections.abc import Mapping


class CycleError(Exception):
    """``cycle`` lists the names of a cycle, the first repeated at the end: [a, b, a]."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(" -> ".join(cycle))
        self.cycle = cycle


def toposort(parents: Mapping[str, str | None]) -> list[str]:
    """Names parents-first, alphabetical where the order is free; a parent outside ``parents``
    counts as present. Raises :class:`CycleError` with the first cycle found (in name order)."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in done:
            return
        if name in stack:
            raise CycleError(stack[stack.index(name) :] + [name])
        parent = parents.get(name)
        if parent is not None and parent in parents:
            visit(parent, stack + [name])
        done.add(name)
        order.append(name)

    for name in sorted(parents):
        visit(name, [])
    return order
