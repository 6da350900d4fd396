"""The rules every input item meets, wherever it enters: /predict, /predict/batch, /batch/submit (checked
per item in the worker), /vectors and /documents.

One definition of each rule, so the entry points cannot drift apart again: a text is non-blank, at most
`max_text_length` characters (settings) and free of control characters; a vector is a non-empty list of
at most MAX_VECTOR_VALUES finite numbers. A broken rule raises ItemError with the code `invalid_input`:
a 422 at the gateway, a failed item (alone) in a batch.

Plain Python: the gateway imports this module.
"""
from __future__ import annotations

import math
import re
from typing import Any

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.settings import get_settings

INVALID_INPUT = "invalid_input"
# C0 controls other than tab, newline and carriage return, plus DEL: never meaningful in text input.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Vectors a model task takes (e.g. reduce); a vector collection's own dimension limit is the store's.
MAX_VECTOR_VALUES = 4096


def max_text_chars() -> int:
    return get_settings().max_text_length


def check_text(text: str, where: str, details: dict[str, Any] | None = None) -> str:
    """`text` (named `where` in the message) as given, or ItemError naming the broken rule."""
    if not text.strip():
        raise ItemError(INVALID_INPUT, f"{where} is empty", details)
    limit = max_text_chars()
    if len(text) > limit:
        raise ItemError(INVALID_INPUT, f"{where} has {len(text)} characters; at most {limit} are allowed",
                        {**(details or {}), "max_chars": limit})
    return check_no_control_characters(text, where, details)


def check_no_control_characters(text: str, where: str, details: dict[str, Any] | None = None) -> str:
    """The control-character rule alone, for texts with their own length limit (a document's content)."""
    if CONTROL_CHARACTERS.search(text):
        raise ItemError(INVALID_INPUT, f"{where} contains control characters", details)
    return text


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite(value: Any, where: str, details: dict[str, Any] | None = None) -> Any:
    """`value` as given, or ItemError where a number in it (at any depth) is not finite: such an item cannot
    even be stored (PostgreSQL's JSON has no Infinity), so an entry point that stores items refuses it."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise ItemError(INVALID_INPUT, f"{where} must hold finite numbers only", details)
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    return value


def check_vector(values: list[Any], where: str, details: dict[str, Any] | None = None) -> list[Any]:
    """`values` as given, or ItemError: a vector is 1..MAX_VECTOR_VALUES finite numbers (JSON cannot spell
    NaN, which the body parser refuses, but 1e999 decodes to infinity)."""
    if not values or len(values) > MAX_VECTOR_VALUES:
        raise ItemError(INVALID_INPUT, f"{where} has {len(values)} values; a vector has 1 to {MAX_VECTOR_VALUES}",
                        {**(details or {}), "max_values": MAX_VECTOR_VALUES})
    if not all(is_number(value) for value in values):
        raise ItemError(INVALID_INPUT, f"{where} must be a list of numbers", details)
    if not all(math.isfinite(value) for value in values):
        raise ItemError(INVALID_INPUT, f"{where} must hold finite numbers only", details)
    return values
