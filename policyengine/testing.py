"""Testing helpers: a clock that tests move by hand.

    clock = FakeClock()
    engine = policyengine.loads(text, clock=clock)
    clock.advance(30)          # thirty seconds of breaker time, at once

`await clock.sleep(s)` returns at once and moves the clock forward by `s`, so retries with
backoff run instantly and their delays can be read from `clock.sleeps`.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A monotonic clock that only moves when told to (or when something sleeps on it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        with self._lock:
            self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleep_sync(seconds)
        await asyncio.sleep(0)  # still a scheduling point, like a real sleep

    def sleep_sync(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds
