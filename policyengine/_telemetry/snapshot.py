"""The typed reading of a guard: what `metrics()` returns and what every exporter reads.

`GuardSnapshot` is a TypedDict, so `metrics()` stays a plain dict for users while Prometheus,
OpenTelemetry, the demo and `top` read named, typed fields. One reading takes the counters under
their lock and the bulkhead and breaker figures right after: a scrape never changes what a guard
does (the breaker's `state` applies due transitions exactly as a call would).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from .._runtime.guard import Guard

__all__ = ["BulkheadUse", "Counts", "Durations", "GuardSnapshot", "guard_snapshot"]


class Rejections(TypedDict):
    circuit_open: int
    bulkhead_full: int
    budget_exhausted: int
    rate_limited: int
    throttled: int


class Observed(TypedDict):
    would_reject: int
    would_retry: int
    would_timeout: int


class Durations(TypedDict):
    sum: float
    buckets: list[tuple[float, int]]  # (upper bound in seconds, count); the last bound is inf
    count: int


class Counts(TypedDict):
    """The counters of `_telemetry.metrics.GuardMetrics` (kept across reloads)."""

    calls: int
    successes: int
    failures: int
    ignored: int
    rejections: Rejections
    retries: int
    timeouts: int
    fallbacks: int
    hedges: int
    hedge_wins: int
    injected: int
    inside: int  # calls inside the guard: running, queued for a slot, or between attempts
    failure_rate: float
    success_rate: float
    observed: Observed
    duration: Durations


class BulkheadUse(TypedDict):
    active: int
    max_concurrent: int
    queued: int
    max_queue: int


class GuardSnapshot(Counts):
    """`metrics()`: the counters plus the guard's state and bulkhead use, read together."""

    in_flight: int  # calls holding a bulkhead slot (without a bulkhead: calls inside the guard)
    queued: int  # callers waiting for a bulkhead slot
    limit: int | None  # the bulkhead's current limit (None without a bulkhead)
    bulkhead: BulkheadUse | None
    state: str
    breaker_failure_rate: float | None
    degraded: bool  # a shared breaker that lost its store and runs on this process's state


def guard_snapshot(guard: Guard) -> GuardSnapshot:
    counts = guard.metrics.snapshot()
    bulkhead = guard.bulkhead
    breaker = guard.breaker
    use: BulkheadUse | None = None
    if bulkhead is not None:
        use = {
            "active": bulkhead.active,
            "max_concurrent": bulkhead.max_concurrent,
            "queued": bulkhead.queued,
            "max_queue": bulkhead.max_queue,
        }
    return {
        **counts,
        "in_flight": use["active"] if use is not None else counts["inside"],
        "queued": use["queued"] if use is not None else 0,
        "limit": use["max_concurrent"] if use is not None else None,
        "bulkhead": use,
        "state": guard.state,
        "breaker_failure_rate": breaker.failure_rate if breaker is not None else None,
        "degraded": bool(getattr(breaker, "degraded", False)),
    }
