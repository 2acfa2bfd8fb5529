"""`mode = "observe"`: run every call once, as if unguarded, and record what the guard would do.

The breaker counts outcomes and changes state as it would (`state` reports it), but never
rejects; a bulkhead over its limit, an attempt past its timeout, and a failure the retry policy
would retry are counted (`metrics()["observed"]`) and emitted as `would_reject`,
`would_timeout` and `would_retry` events. The caller sees exactly what an unguarded call gives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._events import Event
from .exceptions import GuardTimeoutError

if TYPE_CHECKING:
    from ._guard import Guard

__all__ = ["observe_call", "observe_sync"]

T = TypeVar("T")


def _enter(guard: Guard) -> int:
    m = guard.metrics
    with m.lock:
        m.calls += 1
        m.in_flight += 1
        running = m.in_flight
    bulkhead = guard.bulkhead
    if bulkhead is not None and running > bulkhead.max_concurrent:
        m.count("would_reject")
        guard._emit(Event("would_reject", guard.name, {"reason": "bulkhead_full"}))
    return guard.breaker.acquire() if guard.breaker is not None else 0


def _limit(guard: Guard) -> float | None:
    limits = [x for x in (guard._total, guard._attempt) if x is not None]
    return min(limits) if limits else None


def _leave(guard: Guard, permit: int, exc: BaseException | None, elapsed: float, dur: float) -> int:
    """Record the outcome; returns the metrics outcome (1 success, 0 failure, -1 neither)."""
    breaker = guard.breaker
    if exc is not None and not isinstance(exc, Exception):
        if breaker is not None:
            breaker.on_release(permit)
        return -1
    limit = _limit(guard)
    if limit is not None and elapsed > limit:
        guard.metrics.count("would_timeout")
        guard._emit(Event("would_timeout", guard.name, {"elapsed": elapsed, "limit": limit}))
        if exc is None:
            exc = GuardTimeoutError(guard.name, "attempt", limit)
    if exc is None:
        if breaker is not None:
            breaker.on_success(permit, dur)
        return 1
    if breaker is not None:
        breaker.on_failure(permit, exc, dur)
    if guard.retry is not None and guard.max_attempts > 1 and guard.retry.should_retry(exc):
        guard.metrics.count("would_retry")
        guard._emit(Event("would_retry", guard.name, {"error": type(exc).__name__}))
    return 0


async def observe_call(
    guard: Guard, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    loop = asyncio.get_running_loop()
    permit = _enter(guard)
    t0, c0 = loop.time(), guard._clock.now()
    outcome = -1
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        outcome = _leave(guard, permit, exc, loop.time() - t0, guard._clock.now() - c0)
        raise
    else:
        outcome = _leave(guard, permit, None, loop.time() - t0, guard._clock.now() - c0)
        return result
    finally:
        guard.metrics.finish(outcome, loop.time() - t0)


def observe_sync(
    guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    permit = _enter(guard)
    t0, c0 = time.monotonic(), guard._clock.now()
    outcome = -1
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        outcome = _leave(guard, permit, exc, time.monotonic() - t0, guard._clock.now() - c0)
        raise
    else:
        outcome = _leave(guard, permit, None, time.monotonic() - t0, guard._clock.now() - c0)
        return result
    finally:
        guard.metrics.finish(outcome, time.monotonic() - t0)
