"""Request fields shared by the gateway's schemas and the request models that workers also read."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def number_of_seconds(value: Any) -> Any:
    """JSON `true` is not a duration; a JSON integer is one (strict models take only floats for a float)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")  # noqa: TRY004 (pydantic reports ValueError as a 422)
    return float(value) if isinstance(value, int) else value


# How long a request waits for its result; each model bounds it with Field(ge=..., le=...).
WaitSeconds = Annotated[float | None, BeforeValidator(number_of_seconds)]
