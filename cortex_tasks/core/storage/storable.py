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
