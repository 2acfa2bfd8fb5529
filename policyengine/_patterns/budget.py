"""The retry budget: retries <= ratio x calls + min_per_second x window, over a sliding window.

As in Envoy's and gRPC's retry budgets (and Finagle's `RetryBudget`), retries are limited to a
share of recent traffic plus a small floor, so a failing dependency sees at most
``(1 + ratio)`` times its normal load instead of ``max_attempts`` times.

The window is a ring of buckets (``window / buckets`` seconds each), so every operation is O(1)
(amortised over the buckets that expire). To make the limit hold for *every* trailing window,
not only on average, bucketing errs on the safe side by one bucket: calls are counted over the
current and the previous ``buckets - 1`` buckets (at most ``window`` seconds back), retries over
one bucket more (at least ``window`` seconds back). So at every moment a retry is granted, the
retries in the last ``window`` seconds are at most ``ratio`` x the calls in those same seconds
plus ``min_per_second x window``.
"""

from __future__ import annotations

import math
import threading

from .._config.models import BudgetOptions
from .._runtime.clock import Clock

__all__ = ["RetryBudget"]

# Products such as 0.29 * 100 round just below the integer they equal.
_EPSILON = 1e-9


class RetryBudget:
    """Envoy/gRPC-style budget: over a sliding 10 s window,
    retries <= ratio * calls + min_per_second * 10.

    `record_call` once per guarded call (not per attempt); `try_acquire_retry` before each retry.
    Thread-safe; time comes only from ``clock.now()``.
    """

    __slots__ = (
        "_calls",
        "_calls_total",
        "_clock",
        "_floor",
        "_head",
        "_inv_width",
        "_lock",
        "_ratio",
        "_retries",
        "_retries_total",
        "_slot",
        "_slots",
        "buckets",
        "window",
    )

    def __init__(
        self,
        options: BudgetOptions,
        clock: Clock,
        *,
        window: float = 10.0,
        buckets: int = 10,
    ) -> None:
        if window <= 0:
            raise ValueError("the budget window must be longer than 0s")
        if buckets < 1:
            raise ValueError("the budget needs at least one bucket")
        self.window = float(window)
        self.buckets = int(buckets)
        self._ratio = float(options.ratio)
        self._floor = float(options.min_per_second) * self.window
        self._clock = clock
        self._inv_width = self.buckets / self.window
        # One slot more than `buckets`: the oldest holds retries that still count (see above).
        self._slots = self.buckets + 1
        self._calls = [0] * self._slots
        self._retries = [0] * self._slots
        self._calls_total = 0  # the newest `buckets` slots
        self._retries_total = 0  # all slots
        self._head = math.floor(clock.now() * self._inv_width)
        self._slot = self._head % self._slots
        self._lock = threading.Lock()

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (a thread of the parent may have held this one)."""
        self._lock = threading.Lock()

    def _advance(self, index: int) -> None:
        """Move the ring forward to bucket `index` > the current one (lock held)."""
        head = self._head
        slots = self._slots
        calls, retries = self._calls, self._retries
        if index - head >= slots:
            for i in range(slots):
                calls[i] = 0
                retries[i] = 0
            self._calls_total = 0
            self._retries_total = 0
        else:
            buckets = self.buckets
            for b in range(head + 1, index + 1):
                # Bucket b - buckets becomes the oldest: its calls stop counting.
                self._calls_total -= calls[(b - buckets) % slots]
                # Bucket b reuses the slot of b - slots: its retries stop counting.
                slot = b % slots
                self._retries_total -= retries[slot]
                calls[slot] = 0
                retries[slot] = 0
        self._head = index
        self._slot = index % slots

    def record_call(self) -> None:
        """One guarded call started (count calls, not attempts)."""
        index = math.floor(self._clock.now() * self._inv_width)
        with self._lock:
            if index > self._head:  # else the same bucket (or a read that lost a race)
                self._advance(index)
            slot = self._slot
            self._calls[slot] += 1
            self._calls_total += 1

    def try_acquire_retry(self) -> bool:
        """Spend one retry if the budget allows it; False (and nothing spent) if not."""
        index = math.floor(self._clock.now() * self._inv_width)
        with self._lock:
            if index > self._head:  # else the same bucket (or a read that lost a race)
                self._advance(index)
            slot = self._slot
            allowed = self._ratio * self._calls_total + self._floor + _EPSILON
            if self._retries_total + 1 > allowed:
                return False
            self._retries[slot] += 1
            self._retries_total += 1
            return True

    def snapshot(self) -> dict[str, float]:
        """``calls``, ``retries`` and ``allowed`` (retries) in the current window."""
        index = math.floor(self._clock.now() * self._inv_width)
        with self._lock:
            if index > self._head:
                self._advance(index)
            calls = self._calls_total
            retries = self._retries_total
        return {
            "calls": float(calls),
            "retries": float(retries),
            "allowed": self._ratio * calls + self._floor,
        }

    def __repr__(self) -> str:
        snap = self.snapshot()
        return (
            f"RetryBudget(ratio={self._ratio:g}, floor={self._floor:g}/{self.window:g}s, "
            f"calls={snap['calls']:g}, retries={snap['retries']:g})"
        )
