"""Checks of what fleet files name: requirement lines, and environment variables that would
change which code runs or where an install comes from."""

from __future__ import annotations

import re
from collections.abc import Mapping

from packaging.requirements import InvalidRequirement, Requirement

from buildtool.core.names import canonical
from buildtool.model.schema import Collector


def check_requirements(c: Collector, file: str, key: str, reqs: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for i, line in enumerate(reqs):
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            c.add(file, f"{key}[{i}]", f"malformed requirement {line!r}: {exc}")
            continue
        if line != line.strip():
            c.add(file, f"{key}[{i}]", f"{line!r} has surrounding spaces; remove them")
        if req.url:
            c.add(file, f"{key}[{i}]", f"{line!r}: direct URLs cannot be hash-locked from an index; use a version pin")
        name = canonical(req.name)
        if name in seen:
            c.add(file, f"{key}[{i}]", f"{req.name} is listed twice; keep one entry")
        seen.add(name)


# Variables that change which code a process runs or loads. No fleet file sets one; a family may
# set LD_LIBRARY_PATH (``allow``), where its own libraries live.
LOADER_VARS = re.compile(r"LD_[A-Z_]*|PATH|PYTHON(?:PATH|HOME|STARTUP|USERBASE|INSPECT|EXECUTABLE|SAFEPATH|PLATLIBDIR|NOUSERSITE|BREAKPOINT)"
                         r"|BASH_ENV|ENV|IFS|NODE_OPTIONS|PERL5OPT|PERL5LIB|RUBYOPT|GCONV_PATH")  # fmt: skip
# Variables that change where pip, uv or apt install from, or how they check it: a build's
# hash-locked install takes none from a fleet file.
INSTALLER_VARS = re.compile(r"(?:PIP|UV)_[A-Z0-9_]*|[A-Z]*_PROXY|REQUESTS_CA_BUNDLE|SSL_CERT_(?:FILE|DIR)|CURL_CA_BUNDLE|APT_CONFIG|NETRC"
                            r"|PYTHONHTTPSVERIFY|HOME|XDG_CONFIG_(?:HOME|DIRS)", re.IGNORECASE)  # HOME: where pip.conf and .netrc are read  # fmt: skip


def check_env_names(c: Collector, file: str, key: str, env: tuple[tuple[str, str], ...], reserved: Mapping[str, str], *,
                    allow: frozenset[str] = frozenset(), build: bool = False) -> None:  # fmt: skip
    """Every variable a fleet file sets (a profile, an image's or a build's env) is checked against
    one list: the toolkit's own (``reserved``), those that change which code runs, and, for a
    build (``build``), those that redirect or weaken the hash-locked install."""
    for name, _ in env:
        if name in reserved:
            c.add(file, f"{key}.{name}", f"is set by {reserved[name]} and cannot be replaced here; remove it or rename the variable")
        elif LOADER_VARS.fullmatch(name) and name not in allow:
            c.add(file, f"{key}.{name}", "changes which code a process runs or loads (the loader's, the shell's or Python's search); remove it")
        elif build and INSTALLER_VARS.fullmatch(name):
            c.add(file, f"{key}.{name}", "changes where pip or apt install from, or how they check it; the hash-locked install takes none: remove it")
