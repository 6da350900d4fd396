"""Request fields shared by the gateway's schemas and the request models that workers also read."""
from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, ValidationInfo

from cortex_tasks.core.storage.storable import first_unstorable

T = TypeVar("T")


def number_of_seconds(value: Any) -> Any:
    """JSON `true` is not a duration; a JSON integer is one (strict models take only floats for a float)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")  # noqa: TRY004 (pydantic reports ValueError as a 422)
    return float(value) if isinstance(value, int) else value


# How long a request waits for its result; each model bounds it with Field(ge=..., le=...).
WaitSeconds = Annotated[float | None, BeforeValidator(number_of_seconds)]


def storable(value: T, where: str) -> T:
    """`value` unchanged, or ValueError (a 422 naming `where`) when it holds text PostgreSQL cannot keep.

    PostgreSQL's `text` and `jsonb` refuse the NUL character, and a lone UTF-16 surrogate (which JSON can
    carry) cannot be encoded at all: a request holding either in a field that is stored (params, batch
    inputs, metadata) or compared with stored values (filters) was a 500 or 502 with the database's own
    message, after its message had been queued. Checked when the request is read, before anything else.
    """
    found = first_unstorable(value, where)
    if found is not None:
        raise ValueError(f"{found} holds a NUL character or an unpaired surrogate, which cannot be stored")
    return value


def _storable_field(value: Any, info: ValidationInfo) -> Any:
    return storable(value, info.field_name or "value")


# A request field kept in PostgreSQL or compared with what it keeps: `params: Storable[dict[str, Any]]`.
Storable = Annotated[T, AfterValidator(_storable_field)]
