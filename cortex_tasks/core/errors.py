"""Errors shared by the gateway and the workers."""
from __future__ import annotations


class ItemError(Exception):
    """A problem with one input item; it fails that item only, never the batch."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
