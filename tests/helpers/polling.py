"""Waiting for something that happens in real time (a file-system event, a Redis round trip,
another process): poll a condition every 2 ms until it holds, fail with what was awaited. And an
application's event loop running in a thread of its own, for tests driven from the test thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["LoopThread", "run_on", "wait_until"]

T = TypeVar("T")


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Return as soon as `condition()` is true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


class LoopThread:
    """An asyncio loop running in a thread of its own (``with LoopThread() as loop:``); `run`
    calls a function on it and returns its result (so `load()` runs inside the running loop)."""

    def __enter__(self) -> asyncio.AbstractEventLoop:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        wait_until(self.loop.is_running, "the loop to run")
        return self.loop

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def run_on(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """`fn()` called on `loop` (inside it, as a coroutine would); its result here."""

    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)
