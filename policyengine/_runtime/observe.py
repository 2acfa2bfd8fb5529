"""`mode = "observe"`: run every call once, as if unguarded, and record what the guard would do.

The breaker counts outcomes and changes state as it would (`state` reports it), but never
rejects; a bulkhead over its limit, a layer that would refuse (a rate limit, the throttle), an
attempt past its timeout, and a failure the retry policy would retry are counted
(`metrics()["observed"]`) and emitted as `would_reject`, `would_timeout` and `would_retry`
events. The caller sees exactly what an unguarded call gives: no wait, no timeout, no retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._telemetry.events import Event, WouldReject, WouldRetry, WouldTimeout
from ..exceptions import GuardTimeoutError, RejectedError
from .attempt import Attempt, outcome_of

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["observe_call", "observe_sync"]

T = TypeVar("T")


def _would_reject(guard: Guard, reason: str) -> None:
    guard.metrics.count("would_reject")
    guard.emit(Event.of(guard.name, WouldReject(reason)))


def _enter(guard: Guard) -> Attempt:
    """Count the call and take what enforcement would take, noting what it would refuse."""
    m = guard.metrics
    with m.lock:
        m.calls += 1
        m.inside += 1
        running = m.inside
    bulkhead = guard.bulkhead
    if bulkhead is not None and running > bulkhead.max_concurrent:
        _would_reject(guard, "bulkhead_full")
    # in observe mode the breaker never raises: a call it would refuse gets a null permit
    attempt = Attempt(guard, guard.breaker.acquire() if guard.breaker is not None else 0)
    now = guard.clock.now()
    for layer in guard.layers:
        try:
            layer.admit(now)  # a wait it asks for is not waited
        except RejectedError as exc:
            _would_reject(guard, getattr(exc, "reason", "rejected"))
            break
        attempt.admitted += 1
    attempt.started = now
    return attempt


def _limit(guard: Guard) -> float | None:
    limits = [x for x in (guard.total, guard.attempt_timeout) if x is not None]
    return min(limits) if limits else None


def _leave(guard: Guard, attempt: Attempt, exc: BaseException | None, elapsed: float) -> int:
    """Record the outcome; returns the metrics outcome (1 success, 0 failure, -1 neither)."""
    now = guard.clock.now()
    if exc is not None and not isinstance(exc, Exception):
        attempt.failed(exc, False, 1, now)
        return -1
    limit = _limit(guard)
    if limit is not None and elapsed > limit:
        guard.metrics.count("would_timeout")
        guard.emit(Event.of(guard.name, WouldTimeout(elapsed, limit)))
        if exc is None:
            exc = GuardTimeoutError(guard.name, "attempt", limit)
    if exc is None:
        attempt.succeeded()
        return 1
    attempt.failed(exc, False, 1, now)
    if guard.retry is not None and guard.max_attempts > 1 and guard.retry.should_retry(exc):
        guard.metrics.count("would_retry")
        guard.emit(Event.of(guard.name, WouldRetry(type(exc).__name__)))
    return -1 if outcome_of(exc, guard.ignores(exc)) == "ignored" else 0


async def observe_call(
    guard: Guard, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    loop = asyncio.get_running_loop()
    attempt = _enter(guard)
    t0 = loop.time()
    outcome = -1
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        outcome = _leave(guard, attempt, exc, loop.time() - t0)
        raise
    else:
        outcome = _leave(guard, attempt, None, loop.time() - t0)
        return result
    finally:
        guard.metrics.finish(outcome, loop.time() - t0)


def observe_sync(
    guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    attempt = _enter(guard)
    t0 = time.monotonic()
    outcome = -1
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        outcome = _leave(guard, attempt, exc, time.monotonic() - t0)
        raise
    else:
        outcome = _leave(guard, attempt, None, time.monotonic() - t0)
        return result
    finally:
        guard.metrics.finish(outcome, time.monotonic() - t0)
