"""Quoting for generated files: the one way a value reaches a Dockerfile, a shell line or a path.

Every function returns :class:`Quoted`. The template environment refuses any other string
(``render._finalize``), so a value cannot reach a Dockerfile without passing through one of
these. Each function raises :class:`Unrepresentable` for a value it cannot write safely; the
fleet validation rejects those values first, with the file and key, so that error is a bug
guard and never what a user sees.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable

from buildtool.model.schema import CONTROL

# A bare token written without quotes: names, versions, architectures, paths we generate.
TOKEN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_.+:/@-]*")
# Build arguments an ENV value of a build stage may refer to (``${NAME}``); every other ``$`` is literal.
BUILD_ARG_REF = re.compile(r"\$\{(CMAKE_CUDA_ARCHITECTURES|TORCH_CUDA_ARCH_LIST)\}")


class Quoted(str):
    """Text already escaped for the place it is written to."""


class Unrepresentable(ValueError):
    """A value that cannot be written safely in the requested context."""


def single_line(value: str, what: str = "value") -> str:
    if CONTROL.search(value):
        raise Unrepresentable(f"{what} {value!r} contains a line break or control character")
    return value


def token(value: str) -> Quoted:
    """A value written bare (``ARG X=8.9``, a file name in a comment): must be a plain token."""
    if not TOKEN.fullmatch(value):
        raise Unrepresentable(f"{value!r} is not a plain token")
    return Quoted(value)


def comment(value: str) -> Quoted:
    """Text inside a ``#`` comment line: one line, nothing that could end the comment."""
    return Quoted(single_line(value, "comment text"))


def shell_word(value: str) -> Quoted:
    """One word of a ``RUN`` shell line."""
    return Quoted(shlex.quote(single_line(value, "shell word")))


def shell_words(values: Iterable[str]) -> Quoted:
    return Quoted(" ".join(shell_word(v) for v in values))


def exec_form(argv: Iterable[str]) -> Quoted:
    """A JSON array for ``CMD``/``ENTRYPOINT``/``HEALTHCHECK``: any text, newlines included, stays one line."""
    return Quoted(json.dumps(list(argv), ensure_ascii=False))


def dockerfile_string(value: str, *, build_args: bool = False) -> Quoted:
    """A double-quoted ``ENV``/``LABEL``/``ARG`` value: ``\\``, ``"`` and ``$`` escaped.

    The Dockerfile parser substitutes ``$NAME`` and ``${NAME}`` and reads backslash escapes in
    these values, and has no escape for a line break. With ``build_args``, the references in
    :data:`BUILD_ARG_REF` stay substitutions (a compile step's environment names the machine's
    architecture); every other ``$`` is literal.
    """
    single_line(value, "value")
    parts = BUILD_ARG_REF.split(value) if build_args else [value]
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a captured reference name
            out.append("${" + part + "}")
        else:
            out.append(part.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$"))
    return Quoted('"' + "".join(out) + '"')


def key_values(pairs: Iterable[tuple[str, str]], *, build_args: bool = False) -> Quoted:
    """``KEY="value"`` pairs of one ``ENV`` or ``LABEL`` instruction, one per continued line."""
    lines = []
    for key, value in pairs:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
            raise Unrepresentable(f"{key!r} is not a valid ENV or LABEL key")
        lines.append(f"{key}={dockerfile_string(value, build_args=build_args)}")
    return Quoted(" \\\n    ".join(lines))
