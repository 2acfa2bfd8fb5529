"""Per-guard counters: plain integers bumped on the hot path, read whole by `snapshot()`.

Counters are never reset by a state change or a reload that keeps the guard's state. Exporters
(Prometheus, OpenTelemetry) read them at scrape time, so the hot path pays nothing for exporting.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

__all__ = ["DURATION_BUCKETS", "STATE_VALUES", "GuardMetrics"]

STATE_VALUES: dict[str, int] = {
    "closed": 0,
    "open": 1,
    "half_open": 2,
    "forced_open": 3,
    "disabled": 4,
}
"""A guard's state as a number, for gauges (Prometheus, OpenTelemetry): 0 closed ... 4 disabled."""

# Upper bounds (seconds) of the call-duration histogram; the last bucket is +Inf.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class GuardMetrics:
    """What one guard did since it was created (kept across reloads)."""

    __slots__ = (
        "budget_exhausted",
        "bulkhead_full",
        "calls",
        "circuit_open",
        "duration_buckets",
        "duration_sum",
        "failures",
        "fallbacks",
        "ignored",
        "in_flight",
        "lock",
        "refused",
        "retries",
        "successes",
        "timeouts",
        "would_reject",
        "would_retry",
        "would_timeout",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()  # short critical sections only; a slot, not a property
        self.calls = 0
        self.successes = 0
        self.failures = 0
        self.ignored = 0
        self.circuit_open = 0
        self.refused = 0  # calls an open breaker turned away at the door (see `refuse`)
        self.bulkhead_full = 0
        self.budget_exhausted = 0
        self.retries = 0
        self.timeouts = 0
        self.fallbacks = 0
        self.in_flight = 0
        self.would_reject = 0
        self.would_retry = 0
        self.would_timeout = 0
        self.duration_sum = 0.0
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (a thread of the parent may have held this one)."""
        self.lock = threading.Lock()

    def start(self) -> None:
        """One guarded call began (the async hot path inlines this)."""
        with self.lock:
            self.calls += 1
            self.in_flight += 1

    def refuse(self) -> None:
        """A call was turned away by an open breaker before it started: one counter, not three.

        Each refused call is also a call, an ignored outcome and a ``circuit_open`` rejection;
        `snapshot()` adds it to those. This is an outage's hot path: a bare acquire and release
        is about half the cost of ``with lock`` (nothing between them can raise).
        """
        lock = self.lock
        lock.acquire()
        self.refused += 1
        lock.release()

    def count(self, counter: str) -> None:
        """Add one to `counter` (off the success path: retries, timeouts, rejections...)."""
        with self.lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def finish(self, outcome: int, duration: float) -> None:
        """One guarded call ended: 1 success, 0 failure, -1 neither (cancelled / ignored)."""
        with self.lock:
            self.in_flight -= 1
            if outcome > 0:
                self.successes += 1
            elif outcome == 0:
                self.failures += 1
            else:
                self.ignored += 1
            self.duration_sum += duration
            self.duration_buckets[bisect_left(DURATION_BUCKETS, duration)] += 1

    def quantile(self, q: float) -> float | None:
        """An upper bound of the q-quantile of call durations, from the histogram."""
        total = sum(self.duration_buckets)
        if not total:
            return None
        rank = q * total
        seen = 0
        for bound, count in zip(
            (*DURATION_BUCKETS, float("inf")), self.duration_buckets, strict=True
        ):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            done = self.successes + self.failures
            refused = self.refused
            return {
                "calls": self.calls + refused,
                "successes": self.successes,
                "failures": self.failures,
                "ignored": self.ignored + refused,
                "rejections": {
                    "circuit_open": self.circuit_open + refused,
                    "bulkhead_full": self.bulkhead_full,
                    "budget_exhausted": self.budget_exhausted,
                },
                "retries": self.retries,
                "timeouts": self.timeouts,
                "fallbacks": self.fallbacks,
                "in_flight": self.in_flight,
                "failure_rate": self.failures / done if done else 0.0,
                "success_rate": self.successes / done if done else 0.0,
                "observed": {
                    "would_reject": self.would_reject,
                    "would_retry": self.would_retry,
                    "would_timeout": self.would_timeout,
                },
                "duration": {
                    "sum": self.duration_sum,
                    "buckets": list(
                        zip((*DURATION_BUCKETS, float("inf")), self.duration_buckets, strict=True)
                    ),
                    "count": sum(self.duration_buckets),
                },
            }
