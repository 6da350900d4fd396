"""Text PostgreSQL can store. Its `text` and `jsonb` refuse the NUL character (U+0000), and a lone UTF-16
surrogate (U+D800-U+DFFF, which JSON can carry) cannot be encoded at all; a write holding either fails
whole. Records that must be kept whatever a client sent (the audit log) pass through `storable` first:
each such character becomes U+FFFD, the replacement character, so the record keeps its shape and says
where something unstorable was."""
from __future__ import annotations

import re
from typing import Any

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def storable(value: Any) -> Any:
    """`value` with every unstorable character replaced, in strings, dict keys and nested lists/dicts."""
    if isinstance(value, str):
        return UNSTORABLE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(item) for item in value]
    return value


def first_unstorable(value: Any, path: str = "") -> str | None:
    """Where in `value` (a JSON path like `params.a[2]`) the first unstorable character sits, or None."""
    if isinstance(value, str):
        return path if UNSTORABLE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if UNSTORABLE.search(str(key)):
                return UNSTORABLE.sub(REPLACEMENT, where)
            found = first_unstorable(item, where)
            if found is not None:
                return UNSTORABLE.sub(REPLACEMENT, found)
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = first_unstorable(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
