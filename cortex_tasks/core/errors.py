"""Errors shared by the gateway and the workers.

Every error a client can cause derives from CortexError: a stable code, a message, details and the HTTP
status an API answers with. The gateway maps the whole family to a JSON answer in one place
(cortex_web/errors.py), so a view lets these errors through instead of translating them itself.
"""
from __future__ import annotations

from typing import Any


class CortexError(Exception):
    """A request Cortex cannot honour, in the client's terms: `{"code", "message", "details"}` and `status`."""

    status: int = 422

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None, *,
                 status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}
        self.headers: dict[str, str] = headers or {}
        if status is not None:
            self.status = status

    def public_details(self) -> dict[str, Any]:
        """The details an API answer carries (a subclass may keep some of them internal)."""
        return self.details


class ItemError(CortexError):
    """A problem with one input item; it fails that item only, never the batch."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(code, message, details)
