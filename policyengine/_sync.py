"""`Guard.call_sync`: the same layers for a blocking function run in the calling thread.

What a timeout can and cannot do here: Python cannot stop a running thread. So in `call_sync`
the total deadline bounds the retry loop (no attempt, backoff sleep or bulkhead wait starts or
lasts past it: a call that would start late raises `GuardTimeoutError`), but an attempt that is
already running in the caller's thread runs to its end and its own outcome stands; an overrun of
the attempt or total timeout is recorded as a slow call (for `slow_call_duration`) and counted in
`timeouts`. With `bulkhead.kind = "threads"` the attempt runs in the policy's own pool and the
caller stops waiting at the deadline, as `await call()` does: the attempt raises
`GuardTimeoutError` while the thread finishes in the pool, still holding its slot, so the pool
never grows past `max_concurrent`.

A bulkhead wait that the total deadline (not `max_wait`) cut short raises `GuardTimeoutError`
("total"), as in `call()`, so a `timeout` fallback serves both.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._events import Event
from ._lifecycle import Attempt
from ._observe import observe_sync
from ._retry_decision import Retry, decide
from ._threads import submit
from .exceptions import BulkheadFullError, GuardTimeoutError, RejectedError

if TYPE_CHECKING:
    from ._guard import Guard

__all__ = ["NotBlockingError", "call_sync"]

T = TypeVar("T")
_monotonic = time.monotonic


def call_sync(
    guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    if guard.mode == "disabled":
        return fn(*args, **kwargs)
    if guard.mode == "observe":
        return observe_sync(guard, fn, args, kwargs)
    if guard.fallback is None:
        return _run(guard, fn, args, kwargs)
    try:
        return _run(guard, fn, args, kwargs)
    except NotBlockingError:
        raise  # the caller's mistake: no fallback hides it
    except Exception as exc:
        served: T = _fall_back(guard, exc)
        return served


def _fall_back(guard: Guard, exc: Exception) -> Any:  # the fallback's value or handler result
    fallback = guard.fallback
    if fallback is None or fallback.kind_of(exc, guard.retryable) is None:
        raise exc
    guard.metrics.count("fallbacks")
    guard.emit(Event("fallback", guard.name, {"error": type(exc).__name__}))
    return fallback.produce_sync(exc)


class NotBlockingError(TypeError):
    """`call_sync` (or a decorated `def`) got a function that returned a coroutine."""


def _run(guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    m = guard.metrics
    m.start()
    t0 = _monotonic()
    total = guard.total
    deadline = t0 + total if total is not None else None
    if guard.budget is not None:
        guard.budget.record_call()
    attempt = Attempt(guard, 0)
    outcome = -1
    n = 0
    try:
        while True:
            n += 1
            result = _attempt(guard, attempt, n, deadline, fn, args, kwargs)
            if not isinstance(result, Retry):
                outcome = 1
                return result
    except BaseException as exc:
        if isinstance(exc, Exception) and not isinstance(exc, NotBlockingError):
            outcome = -1 if isinstance(exc, RejectedError) and n <= 1 else 0
            if outcome == 0 and guard.ignores(exc):
                outcome = -1
        raise
    finally:
        m.finish(outcome, _monotonic() - t0)


def _admit(guard: Guard, attempt: Attempt, deadline: float | None) -> None:
    """Breaker permit, layers (with their wait) and a bulkhead slot, or the refusal."""
    if deadline is not None and _monotonic() >= deadline:
        guard.metrics.count("timeouts")
        raise GuardTimeoutError(guard.name, "total", guard.total or 0.0)
    attempt.renew()
    clock = guard.clock
    if guard.layers:
        wait = attempt.pass_layers(clock.now())
        if wait > 0.0:
            if deadline is not None and _monotonic() + wait >= deadline:
                guard.metrics.count("timeouts")
                late = GuardTimeoutError(guard.name, "total", guard.total or 0.0)
                attempt.give_back("timeout", late)
                raise late
            try:
                clock.sleep_sync(wait)
            except BaseException as exc:
                attempt.give_back("cancelled", exc)
                raise
    bulkhead = guard.bulkhead
    if bulkhead is None:
        return
    try:
        bulkhead.acquire_sync(None if deadline is None else deadline - _monotonic())
    except BaseException as exc:
        error = _queue_error(guard, exc, deadline)
        attempt.give_back("rejected" if isinstance(error, RejectedError) else "cancelled", error)
        if error is exc:
            raise
        raise error from None
    attempt.slot = True


def _queue_error(guard: Guard, exc: BaseException, deadline: float | None) -> BaseException:
    """A bulkhead wait that ended without a slot: the deadline's timeout, or a full bulkhead."""
    if not isinstance(exc, BulkheadFullError):
        return exc
    if deadline is not None and _monotonic() >= deadline:
        guard.metrics.count("timeouts")
        return GuardTimeoutError(guard.name, "total", guard.total or 0.0)
    guard.count_rejection("bulkhead_full")
    return exc


def _attempt(
    guard: Guard,
    attempt: Attempt,
    n: int,
    deadline: float | None,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T | Retry:
    _admit(guard, attempt, deadline)
    clock = guard.clock
    attempt.started = clock.now()
    a0 = _monotonic()
    try:
        if guard.threaded:
            result = _in_pool(guard, attempt, n, deadline, fn, args, kwargs)
        else:
            result = fn(*args, **kwargs)
    except BaseException as exc:
        error = attempt.failed(exc, False, n, clock.now())
        if not isinstance(error, Exception):
            raise
        _note_overrun(guard, a0, deadline)
        remaining = None if deadline is None else deadline - _monotonic()
        decision = decide(guard, error, n, attempt.previous, remaining)
        if type(decision) is not Retry:
            raise
        clock.sleep_sync(decision.wait)
        attempt.previous = decision.wait
        return decision
    if inspect.iscoroutine(result):
        _refuse_coroutine(guard, attempt, fn, result)
    _note_overrun(guard, a0, deadline)
    attempt.succeeded(clock.now())
    return result


def _in_pool(
    guard: Guard,
    attempt: Attempt,
    n: int,
    deadline: float | None,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    """Run the attempt in the policy's pool and stop waiting at its deadline."""
    attempt.slot = False  # the thread gives the slot back when it really ends
    limit = guard.attempt_timeout
    when = None if limit is None else _monotonic() + limit
    total = deadline is not None and (when is None or deadline <= when)
    if total:
        when = deadline
    future = submit(guard.bulkhead, fn, args, kwargs)  # type: ignore[arg-type]
    try:
        return future.result(None if when is None else max(0.0, when - _monotonic()))  # type: ignore[no-any-return]
    except concurrent.futures.TimeoutError:
        raise guard.timed_out(total, n) from None


def _refuse_coroutine(guard: Guard, attempt: Attempt, fn: object, result: Any) -> None:
    result.close()
    attempt.give_back("cancelled", None)
    name = getattr(fn, "__qualname__", repr(fn))
    raise NotBlockingError(
        f"guard {guard.name!r}: call_sync() got a coroutine from {name}; "
        "use `await guard(...).call(fn)` for async functions"
    )


def _note_overrun(guard: Guard, a0: float, deadline: float | None) -> None:
    """An attempt that ran past its own or the total timeout (it cannot be stopped here)."""
    now = _monotonic()
    limit = guard.attempt_timeout
    if (limit is not None and now - a0 > limit) or (deadline is not None and now > deadline):
        guard.metrics.count("timeouts")
