"""Names: image names from service names, package names, and the did-you-mean hint."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def image_slug(name: str) -> str:
    """'ModelOpsCoordinator' -> 'model-ops-coordinator'; 'family-web' stays as is."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name)
    s = re.sub(r"[^a-z0-9]+", "-", s.lower())
    return s.strip("-")


def canonical(name: str) -> str:
    """A Python package name as indexes compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def did_you_mean(name: str, known: Iterable[str], *, listing: str = "known") -> str:
    """'did you mean 'X'?' for the closest known name, else the list of known names."""
    known = sorted(known)
    hint = difflib.get_close_matches(name, known, n=1)
    return f"did you mean '{hint[0]}'?" if hint else f"{listing}: {', '.join(known)}"
