"""The one way the toolkit hashes: sha256, of bytes or of JSON with sorted keys."""

from __future__ import annotations

import hashlib
import json


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def sha256_json(obj: object) -> str:
    """sha256 of ``obj`` as compact JSON with sorted keys: equal data, equal hash."""
    return sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")))
