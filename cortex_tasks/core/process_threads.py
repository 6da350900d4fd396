"""Helper threads that belong to one process.

A prefork worker's pool processes are forked from the main process, and a thread pool made before the
fork has no threads in the child; so each process makes its own pools, by name, on first use.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_pools: dict[tuple[int, str], ThreadPoolExecutor] = {}
_guard = threading.Lock()


def helper_threads(name: str, count: int) -> ThreadPoolExecutor:
    """This process's pool of `count` threads named `name` (created on first use)."""
    key = (os.getpid(), name)
    with _guard:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=count, thread_name_prefix=name)
        return pool
