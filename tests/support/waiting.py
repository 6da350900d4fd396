"""Waiting for a condition in tests, with a deadline and a clear message when it is not met."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def finished(api: Any, response: Any, poll_seconds: float = 300) -> Any:
    """A job's result from an API answer: at once (200), or by polling its status URL after a 202."""
    if response.status_code == 202:
        status_url = response.get_json()["status_url"]
        deadline = time.monotonic() + poll_seconds
        while time.monotonic() < deadline:
            job = api.get(status_url).get_json()
            if job["status"] in ("succeeded", "failed"):
                assert job["status"] == "succeeded", job
                return job["result"]
            time.sleep(0.5)
        pytest.fail(f"job not finished after {poll_seconds}s")
    assert response.status_code == 200, response.get_json()
    return response.get_json()
