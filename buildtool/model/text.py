"""What no fleet file may hold, whatever the key: nesting beyond reason, and characters that change
how text reads rather than what it says. Checked once per file, right after it is parsed."""

from __future__ import annotations

import re

MAX_DEPTH = 16  # tables and arrays within each other; the deepest a fleet file needs is 4
# Characters that change how text reads, not what it says (Trojan Source, CVE-2021-42574): bidi
# embeddings, overrides and isolates, zero-width and other format characters, line and paragraph
# separators. No fleet value or key needs one.
INVISIBLE = re.compile(
    "[\u00ad\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2028-\u202f"
    "\u205f-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb]"
)


def hostile(data: object) -> tuple[str, str] | None:
    """(key, message) for the first value of a parsed fleet file that nests deeper than MAX_DEPTH
    or whose key or text holds an invisible or bidi character; None when there is none. Iterative:
    no depth breaks it."""
    todo: list[tuple[str, object, int]] = [("", data, 0)]
    while todo:
        path, value, depth = todo.pop()
        if depth > MAX_DEPTH:
            shown = path if len(path) <= 80 else path[:80] + "..."
            return shown, f"nested more than {MAX_DEPTH} tables or arrays deep; flatten it"
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(key, str) and INVISIBLE.search(key):
                return path, f"a key holds an invisible or bidirectional-control character (U+{ord(INVISIBLE.search(key)[0]):04X}); retype it"
            child = f"{path}.{key}" if isinstance(key, str) and path else key if isinstance(key, str) else f"{path}[{key}]"
            if isinstance(item, str) and INVISIBLE.search(item):
                return child, f"holds an invisible or bidirectional-control character (U+{ord(INVISIBLE.search(item)[0]):04X}); retype the value"
            todo.append((child, item, depth + 1))
    return None
