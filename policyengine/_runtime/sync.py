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
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._telemetry.events import Event, FallbackUsed
from ..exceptions import BulkheadFullError, GuardTimeoutError, RejectedError
from .attempt import Attempt
from .observe import observe_sync
from .retry_decision import Retry, decide
from .threads import submit

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["NotBlockingError", "call_sync", "plain_sync"]

T = TypeVar("T")
_monotonic = time.monotonic
_Coroutine = types.CoroutineType


def call_sync(
    guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    entry = guard.sync_entry  # a ramp or a drill (see `Guard.sync_entry`)
    if entry is not None:
        result: T = entry(fn, args, kwargs)
        return result
    return plain_sync(guard, fn, args, kwargs)


def plain_sync(
    guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    """`call_sync` by the guard's mode, without a ramp's draw or a drill's wrapper."""
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
    guard.emit(Event.of(guard.name, FallbackUsed(type(exc).__name__)))
    return fallback.produce_sync(exc)


class NotBlockingError(TypeError):
    """`call_sync` (or a decorated `def`) got a function that returned a coroutine."""


def _run(guard: Guard, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """The blocking driver: attempts through one `Attempt`, inline on the success path."""
    m = guard.metrics
    lock = m.lock  # m.start(), inlined
    lock.acquire()
    m.calls += 1
    m.inside += 1
    lock.release()
    t0 = _monotonic()
    deadline = None if guard.total is None else t0 + guard.total
    if guard.budget is not None:
        guard.budget.record_call()
    attempt = Attempt(guard, 0)
    outcome = -1
    n = 0
    try:
        while True:
            n += 1
            _admit(guard, attempt, deadline)
            if guard.clocked:
                attempt.started = guard.clock.now()
            a0 = _monotonic() if guard.bounded else 0.0
            try:
                if guard.threaded:
                    result = _in_pool(guard, attempt, n, deadline, fn, args, kwargs)
                else:
                    result = fn(*args, **kwargs)
            except BaseException as exc:
                wait = _failed(guard, attempt, exc, n, a0, deadline)
                if wait is None:
                    raise
                guard.clock.sleep_sync(wait)
                continue
            if type(result) is _Coroutine:
                _refuse_coroutine(guard, attempt, fn, result)
            if guard.bounded:
                _note_overrun(guard, a0, deadline)
            attempt.succeeded()
            outcome = 1
            return result
    except BaseException as exc:
        outcome = _outcome(guard, exc, n)
        raise
    finally:
        m.finish(outcome, _monotonic() - t0)


def _outcome(guard: Guard, exc: BaseException, n: int) -> int:
    """The metrics outcome of a call that raised (see `_runtime.driver.call_outcome`)."""
    if not isinstance(exc, Exception) or isinstance(exc, NotBlockingError):
        return -1
    if isinstance(exc, RejectedError) and n <= 1:
        return -1
    return -1 if guard.ignores(exc) else 0


def _failed(
    guard: Guard, attempt: Attempt, exc: BaseException, n: int, a0: float, deadline: float | None
) -> float | None:
    """Attempt `n` raised `exc`: settle it, and the sleep before the next one (None: stop)."""
    error = attempt.failed(exc, False, n, guard.clock.now())
    if not isinstance(error, Exception):
        return None
    if guard.bounded and not isinstance(error, GuardTimeoutError):  # ours is counted already
        _note_overrun(guard, a0, deadline)
    remaining = None if deadline is None else deadline - _monotonic()
    decision = decide(guard, error, n, attempt.previous, remaining)
    if type(decision) is not Retry:
        return None
    attempt.previous = decision.wait
    return decision.wait


def _admit(guard: Guard, attempt: Attempt, deadline: float | None) -> None:
    """Breaker permit, layers (with their wait) and a bulkhead slot, or the refusal."""
    if deadline is not None and _monotonic() >= deadline:
        guard.metrics.count("timeouts")
        raise GuardTimeoutError(guard.name, "total", guard.total or 0.0)
    breaker = guard.breaker
    if breaker is not None:
        permit = breaker._closed_permit  # closed: the permit, with no call at all
        attempt.permit = permit if permit >= 0 else attempt.take_permit(breaker)
    if guard.layers:
        _pass_layers(guard, attempt, deadline)
    if guard.bulkhead is not None:
        _take_slot(guard, attempt, deadline)


def _pass_layers(guard: Guard, attempt: Attempt, deadline: float | None) -> None:
    clock = guard.clock
    left = None if deadline is None else deadline - _monotonic()
    wait = attempt.pass_layers(clock.now(), left)
    if wait <= 0.0:
        return
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


def _take_slot(guard: Guard, attempt: Attempt, deadline: float | None) -> None:
    bulkhead = guard.bulkhead
    assert bulkhead is not None
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
