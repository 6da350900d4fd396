"""A filesystem filled to its last byte (the disk-full fault test and `bench reliability`)."""
from __future__ import annotations

import os
from pathlib import Path


def fill(filler: Path) -> None:
    """Write `filler` until it takes every free byte of its filesystem."""
    handle = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):  # unbuffered: every byte that fits is written
            try:
                while True:
                    os.write(handle, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(handle)
