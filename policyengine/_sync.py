"""`Guard.call_sync`: the same layers for a blocking function run in the calling thread.

What a timeout can and cannot do here: Python cannot stop a running thread. So in `call_sync`
the total deadline bounds the retry loop (no attempt, backoff sleep or bulkhead wait starts or
lasts past it: a call that would start late raises `GuardTimeoutError`), but an attempt that is
already running runs to its end and its own outcome stands; an overrun is recorded as a slow
call (for `slow_call_duration`) and counted in `timeouts`. To bound a blocking call for real,
give the policy `bulkhead.kind = "threads"` and call it with `await guard.call(fn)`: the caller
stops waiting at the deadline while the thread finishes in the policy's own pool, still holding
its slot, so the pool never grows past `max_concurrent`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._attempts import admit, count_full, retry_wait
from ._events import Event
from .exceptions import BulkheadFullError, GuardTimeoutError, RejectedError

if TYPE_CHECKING:
    from ._guard import Guard

__all__ = ["call_sync"]

T = TypeVar("T")


def call_sync(
    guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    if guard.mode == "disabled":
        return fn(*args, **kwargs)
    if guard.mode == "observe":
        from ._observe import observe_sync

        return observe_sync(guard, fn, args, kwargs)
    if guard.fallback is None:
        return _run(guard, fn, args, kwargs)
    try:
        return _run(guard, fn, args, kwargs)
    except Exception as exc:
        if guard.fallback.kind_of(exc, guard._retryable) is None:
            raise
        guard.metrics.count("fallbacks")
        guard._emit(Event("fallback", guard.name, {"error": type(exc).__name__}))
        result: T = guard.fallback.produce_sync(exc)
        return result


def _run(guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    m = guard.metrics
    m.start()
    t0 = time.monotonic()
    total = guard._total
    deadline = t0 + total if total is not None else None
    if guard._budget is not None:
        guard._budget.record_call()
    breaker, bulkhead, clock = guard.breaker, guard.bulkhead, guard._clock
    outcome = -1
    n = 0
    previous = 0.0
    try:
        while True:
            n += 1
            if deadline is not None and time.monotonic() >= deadline:
                m.count("timeouts")
                raise GuardTimeoutError(guard.name, "total", total or 0.0)
            permit = admit(guard, breaker)
            if bulkhead is not None:
                try:
                    bulkhead.acquire_sync(None if deadline is None else deadline - time.monotonic())
                except BaseException as exc:
                    if breaker is not None:
                        breaker.on_release(permit)
                    if isinstance(exc, BulkheadFullError):
                        count_full(guard)
                    raise
            started = clock.now()
            a0 = time.monotonic()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                if bulkhead is not None:
                    bulkhead.release()
                if not isinstance(exc, Exception):
                    if breaker is not None:
                        breaker.on_release(permit)
                    raise
                _note_overrun(guard, a0)
                if breaker is not None:
                    breaker.on_failure(permit, exc, clock.now() - started)
                remaining = None if deadline is None else deadline - time.monotonic()
                wait = retry_wait(guard, exc, n, previous, remaining)
                if wait < 0:
                    raise
                clock.sleep_sync(wait)
                previous = wait
                continue
            if bulkhead is not None:
                bulkhead.release()
            _note_overrun(guard, a0)
            if breaker is not None:
                breaker.on_success(permit, clock.now() - started)
            outcome = 1
            return result
    except BaseException as exc:
        if isinstance(exc, Exception):
            outcome = -1 if isinstance(exc, RejectedError) and n <= 1 else 0
        raise
    finally:
        m.finish(outcome, time.monotonic() - t0)


def _note_overrun(guard: Guard, a0: float) -> None:
    limit = guard._attempt
    if limit is not None and time.monotonic() - a0 > limit:
        guard.metrics.count("timeouts")
