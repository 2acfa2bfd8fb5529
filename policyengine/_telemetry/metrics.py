"""Per-guard counters: plain integers bumped on the hot path, read whole by `snapshot()`.

Counters are never reset by a state change or a reload that keeps the guard's state. Exporters
(Prometheus, OpenTelemetry) read them at scrape time, so the hot path pays nothing for exporting.
"""

from __future__ import annotations

import itertools
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Literal

from .snapshot import Counts

__all__ = ["DURATION_BUCKETS", "REJECTION_REASONS", "STATE_VALUES", "Counter", "GuardMetrics"]

RejectionReason = Literal[
    "circuit_open", "bulkhead_full", "budget_exhausted", "rate_limited", "throttled"
]
REJECTION_REASONS: tuple[RejectionReason, ...] = (
    "circuit_open", "bulkhead_full", "budget_exhausted", "rate_limited", "throttled",
)  # fmt: skip
"""Why a guard refused a call or a retry: the keys of `metrics()["rejections"]`."""

Counter = Literal[
    "circuit_open", "bulkhead_full", "budget_exhausted", "rate_limited", "throttled",
    "retries", "timeouts", "fallbacks", "hedges", "hedge_wins", "injected",
    "would_reject", "would_retry", "would_timeout",
]  # fmt: skip
"""The counters `GuardMetrics.count` takes (off the success path)."""

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
        "_refusals",
        "budget_exhausted",
        "bulkhead_full",
        "calls",
        "circuit_open",
        "duration_buckets",
        "duration_sum",
        "failures",
        "fallbacks",
        "hedge_wins",
        "hedges",
        "ignored",
        "injected",
        "inside",
        "lock",
        "rate_limited",
        "refuse",
        "retries",
        "successes",
        "throttled",
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
        # Calls an open breaker turned away at the door. This is an outage's hot path, so the
        # count is an `itertools.count`: `next()` on it is one C call that the GIL makes atomic
        # (a lock around an int costs three times as much). Each refused call is also a call,
        # an ignored outcome and a ``circuit_open`` rejection; `snapshot()` adds it to those.
        self._refusals = itertools.count()
        self.refuse: Callable[[], int] = self._refusals.__next__
        self.bulkhead_full = 0
        self.budget_exhausted = 0
        self.retries = 0
        self.timeouts = 0
        self.fallbacks = 0
        self.rate_limited = 0
        self.throttled = 0
        self.hedges = 0
        self.hedge_wins = 0
        self.injected = 0
        self.inside = 0  # calls inside the guard now: running, queued or between attempts
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
        lock = self.lock
        lock.acquire()
        self.calls += 1
        self.inside += 1
        lock.release()

    @property
    def refused(self) -> int:
        """Calls an open breaker turned away at the door (`refuse`), so far."""
        return int(repr(self._refusals)[6:-1])  # "count(N)": reading does not advance it

    def count(self, counter: Counter) -> None:
        """Add one to `counter` (off the success path: retries, timeouts, rejections...)."""
        with self.lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def finish(self, outcome: int, duration: float) -> None:
        """One guarded call ended: 1 success, 0 failure, -1 neither (cancelled / ignored)."""
        index = bisect_left(DURATION_BUCKETS, duration)
        lock = self.lock
        lock.acquire()  # nothing below can raise: a bare acquire/release is cheaper than `with`
        self.inside -= 1
        if outcome > 0:
            self.successes += 1
        elif outcome == 0:
            self.failures += 1
        else:
            self.ignored += 1
        self.duration_sum += duration
        self.duration_buckets[index] += 1
        lock.release()

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

    def snapshot(self) -> Counts:
        """Every counter, read together under the lock."""
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
                    "rate_limited": self.rate_limited,
                    "throttled": self.throttled,
                },
                "retries": self.retries,
                "timeouts": self.timeouts,
                "fallbacks": self.fallbacks,
                "hedges": self.hedges,
                "hedge_wins": self.hedge_wins,
                "injected": self.injected,
                "inside": self.inside,
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
