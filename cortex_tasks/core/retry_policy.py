"""Which errors are worth retrying: transient I/O only, never bad input or bugs."""
from __future__ import annotations

import redis
import sqlalchemy.exc

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
)
