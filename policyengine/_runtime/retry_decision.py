"""The decision after a failed attempt: retry after a wait, or stop, and why.

One function for every driver (`call`, `call_sync`): the retry policy's own rules first (attempts
left, retryable error, a total timeout is final, the backoff sleep must end before the deadline),
then the two guards against retry storms (an open circuit that will not close within the sleep;
the retry budget). A stop leaves a note on the error saying why, when the reason is not plain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .._patterns.retry import add_budget_note
from .._telemetry.events import BudgetExhausted, Event, RetryScheduled
from ..exceptions import GuardTimeoutError

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["Decision", "Retry", "Stop", "StopReason", "decide"]

StopReason = Literal[
    "no_retry", "attempts", "not_retryable", "total_timeout", "deadline", "circuit_open", "budget"
]


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry after sleeping `wait` seconds (on the engine's clock)."""

    wait: float


@dataclass(frozen=True, slots=True)
class Stop:
    """End the call with the attempt's error."""

    reason: StopReason


Decision = Retry | Stop

_NO_RETRY = Stop("no_retry")
_ATTEMPTS = Stop("attempts")
_NOT_RETRYABLE = Stop("not_retryable")
_TOTAL_TIMEOUT = Stop("total_timeout")


def decide(
    guard: Guard, exc: BaseException, n: int, previous: float, remaining: float | None
) -> Decision:
    """After attempt `n` failed with `exc`: the wait before retry `n`, or why not to retry.

    `previous` is the last sleep (decorrelated jitter grows from it); `remaining` the time left
    before the total deadline (None: no deadline). A retry is counted and announced here."""
    retry = guard.retry
    if retry is None:
        return _NO_RETRY
    if n >= guard.max_attempts:
        return _ATTEMPTS
    if not retry.should_retry(exc):
        return _NOT_RETRYABLE
    if isinstance(exc, GuardTimeoutError) and exc.kind == "total":
        return _TOTAL_TIMEOUT
    wait = retry.wait_before(n, exc, previous, remaining)
    if wait is None:
        exc.add_note(f"policyengine: not retried, the total deadline of {guard.name!r} is near")
        return Stop("deadline")
    breaker = guard.breaker
    if (
        breaker is not None
        and breaker.state in ("open", "forced_open")
        and breaker.retry_after() > wait
    ):
        exc.add_note(f"policyengine: not retried, the circuit {guard.name!r} is open")
        return Stop("circuit_open")
    budget = guard.budget
    if budget is not None and not budget.try_acquire_retry():
        add_budget_note(exc, guard.name)
        guard.metrics.count("budget_exhausted")
        guard.emit(Event.of(guard.name, BudgetExhausted(n)))
        return Stop("budget")
    guard.metrics.count("retries")
    guard.emit(Event.of(guard.name, RetryScheduled(n, wait, type(exc).__name__)))
    return Retry(wait)
