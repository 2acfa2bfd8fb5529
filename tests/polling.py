"""Waiting for something that happens in real time (a file-system event, a Redis round trip,
another process): poll a condition every 2 ms until it holds, fail with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Return as soon as `condition()` is true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)
