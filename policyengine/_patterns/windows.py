"""Sliding windows of call outcomes for the breaker's rate rules, O(1) per recorded call.

Both windows keep running sums, read as plain attributes: `calls`, `failures`, `slow`.

- `CountWindow`: the last `size` outcomes in a ring buffer; the oldest falls out as a new one
  comes in.
- `TimeWindow`: the outcomes of the last `duration` seconds (by the engine's clock), in `n`
  buckets of `duration / n` seconds (1 s buckets for durations from 10 s to 60 s, 10 buckets below,
  60 above). Whole buckets expire as the clock moves past them, so the window spans between
  `duration - width` and `duration` seconds: the resolution is one bucket.

Neither is thread-safe on its own: the breaker calls them under its lock.

Both store raw machine integers (a `bytearray` ring, `array` buckets), not lists of Python ints:
a keyed policy keeps one window per key, and a list of 100 slots alone is 856 bytes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable

__all__ = ["CountWindow", "TimeWindow", "Window"]


_EMPTY = 255
_EMPTY_BYTE = bytes([_EMPTY])


def _zeros(n: int) -> array[int]:
    return array("I", bytes(4 * n))  # unsigned 32-bit counts: a bucket never holds 4e9 calls


class CountWindow:
    """The last `size` call outcomes."""

    __slots__ = ("_buf", "_next", "_size", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self.reset()

    def reset(self) -> None:
        # Each slot holds failed | slow << 1, or _EMPTY while empty.
        self._buf = bytearray(_EMPTY_BYTE) * self._size
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def refresh(self) -> None:
        """Nothing expires by time in a count window."""

    def record(self, failed: bool, slow: bool) -> None:
        i = self._next
        buf = self._buf
        old = buf[i]
        if old == _EMPTY:
            self.calls += 1
        else:
            self.failures -= old & 1
            self.slow -= old >> 1
        buf[i] = failed | slow << 1
        self.failures += failed
        self.slow += slow
        i += 1
        self._next = 0 if i == self._size else i


class TimeWindow:
    """The call outcomes of the last `duration` seconds, in buckets."""

    __slots__ = (
        "_b_calls",
        "_b_failures",
        "_b_slow",
        "_head",
        "_n",
        "_now",
        "_width",
        "calls",
        "failures",
        "slow",
    )

    def __init__(self, duration: float, now: Callable[[], float]) -> None:
        self._n = n = min(60, max(10, math.ceil(duration)))
        self._width = max(duration, 1e-6) / n
        self._now = now
        self.reset()

    def reset(self) -> None:
        n = self._n
        self._b_calls = _zeros(n)
        self._b_failures = _zeros(n)
        self._b_slow = _zeros(n)
        self._head = self._epoch()
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def _epoch(self) -> int:
        return int(self._now() // self._width)

    def refresh(self) -> None:
        """Expire the buckets the clock has moved past."""
        epoch = self._epoch()
        if epoch > self._head:
            self._advance(epoch)

    def _advance(self, epoch: int) -> None:
        head = self._head
        n = self._n
        if epoch - head >= n:
            self._b_calls = _zeros(n)
            self._b_failures = _zeros(n)
            self._b_slow = _zeros(n)
            self.calls = self.failures = self.slow = 0
        else:
            calls, failures, slow = self._b_calls, self._b_failures, self._b_slow
            for e in range(head + 1, epoch + 1):
                i = e % n
                self.calls -= calls[i]
                self.failures -= failures[i]
                self.slow -= slow[i]
                calls[i] = failures[i] = slow[i] = 0
        self._head = epoch

    def record(self, failed: bool, slow: bool) -> None:
        epoch = int(self._now() // self._width)
        if epoch > self._head:
            self._advance(epoch)
        i = self._head % self._n
        self._b_calls[i] += 1
        self._b_failures[i] += failed
        self._b_slow[i] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow


Window = CountWindow | TimeWindow
