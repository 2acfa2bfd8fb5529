"""The retry schedule of a policy and its worst-case latency, for checks and `explain`.

The worst case is ``max_attempts x timeout.attempt + the largest sleep before each retry`` (the
capped backoff delay, or the upper jitter bound for decorrelated jitter). It must fit in
``timeout.total``, else later attempts are cut short by the deadline: a warning at load time
(an error under ``--strict``). Retry-After waits are left out: they are capped by the deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._patterns.backoff import Backoff, jitter_bounds
from .models import Policy, RetryOptions
from .units import format_duration

__all__ = ["Sleep", "WorstCase", "retry_sleeps", "schedule_warning", "show", "worst_case"]

_MAX_LISTED = 1_000  # beyond this many retries, the last (by then capped) sleep repeats


@dataclass(frozen=True, slots=True)
class Sleep:
    """The sleep before retry `retry`: undithered `delay`, jitter bounds [`low`, `high`]."""

    retry: int
    delay: float
    low: float
    high: float


def retry_sleeps(retry: RetryOptions, limit: int = _MAX_LISTED) -> list[Sleep]:
    """The sleeps before retries 1 .. max_attempts - 1 (at most `limit` of them)."""
    retries = min(retry.max_attempts - 1, limit)
    backoff = Backoff(
        retry.backoff, retry.initial_delay, retry.max_delay, retry.multiplier, retries
    )
    out = []
    for n in range(1, retries + 1):
        d = backoff(n)
        low, high = jitter_bounds(retry.jitter, d, n, retry.initial_delay, retry.max_delay)
        out.append(Sleep(n, d, low, high))
    return out


@dataclass(frozen=True, slots=True)
class WorstCase:
    """The longest a call can take: attempts, sleeps, and (apart) bulkhead queueing."""

    attempts: int
    attempt: float | None  # None: attempts are unbounded
    sleeps: tuple[float, ...]  # the largest sleep before each retry
    queue_wait: float | None  # bulkhead max_wait, per attempt; None without a bulkhead queue
    total: float | None  # timeout.total

    @property
    def sleep_sum(self) -> float:
        listed = math.fsum(self.sleeps)
        missing = self.attempts - 1 - len(self.sleeps)
        return listed + (missing * self.sleeps[-1] if missing > 0 and self.sleeps else 0.0)

    @property
    def latency(self) -> float | None:
        """attempts x attempt timeout + the sleeps; None when an attempt has no timeout."""
        if self.attempt is None:
            return None
        return self.attempts * self.attempt + self.sleep_sum

    @property
    def fits(self) -> bool:
        latency = self.latency
        return self.total is None or latency is None or latency <= self.total + 1e-9


def show(seconds: float) -> str:
    """A duration for people: ``"2.5s"``; ``"unbounded"`` for infinity."""
    return "unbounded" if math.isinf(seconds) else format_duration(round(seconds, 6))


def worst_case(policy: Policy) -> WorstCase:
    retry = policy.retry
    attempts = retry.max_attempts if retry is not None else 1
    sleeps = tuple(s.high for s in retry_sleeps(retry)) if retry is not None else ()
    timeout = policy.timeout
    bulkhead = policy.bulkhead
    queue = None
    if bulkhead is not None and bulkhead.max_queue > 0:
        queue = bulkhead.max_wait
    return WorstCase(
        attempts,
        timeout.attempt if timeout is not None else None,
        sleeps,
        queue,
        timeout.total if timeout is not None else None,
    )


def schedule_warning(policy: Policy) -> str | None:
    """Why the retry schedule cannot fit in timeout.total, or None when it fits."""
    if policy.retry is None or policy.retry.max_attempts < 2:
        return None
    case = worst_case(policy)
    latency = case.latency
    if case.fits or latency is None or case.total is None or case.attempt is None:
        return None
    return (
        f"the worst-case retry schedule takes {show(latency)} ({case.attempts} attempts x "
        f"{show(case.attempt)} + {show(case.sleep_sum)} of "
        f"sleeps) but timeout.total is {format_duration(case.total)}: later attempts would be "
        "cut short; raise total, or lower max_attempts, timeout.attempt or max_delay"
    )
