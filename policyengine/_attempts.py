"""Around one attempt, off the success path: what a guard does when a call is not simply admitted,
run and answered.

- admission through the breaker, and the counting of rejections (`admit`, `count_open`,
  `count_full`);
- a bulkhead wait bounded by `max_wait` and the total deadline (`wait_slot`);
- a blocking function run in the policy's own thread pool (`in_thread`);
- a deadline turned into `GuardTimeoutError` (`timed_out`), a plain function given to `call`
  turned into a clear TypeError (`not_awaitable`);
- the decision, and the sleep, before a retry (`retry_wait`, `before_retry`).

The async path (`_guard`), `call_sync` (`_sync`) and `async with` (`_scope`) share these.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._events import Event
from .exceptions import BulkheadFullError, CircuitOpenError, GuardTimeoutError

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._bulkhead import Bulkhead
    from ._guard import Guard
    from ._timeout import Deadline

__all__ = [
    "NotAwaitableError",
    "admit",
    "before_retry",
    "count_full",
    "count_open",
    "in_thread",
    "not_awaitable",
    "retry_wait",
    "timed_out",
    "wait_slot",
]

_current_task = asyncio.current_task


class NotAwaitableError(TypeError):
    """`call` was given a function whose result cannot be awaited (the caller's mistake)."""


# -- admission and rejections ------------------------------------------------------------------


def admit(guard: Guard, breaker: Breaker | None) -> int:
    """A breaker permit for the next attempt, or CircuitOpenError (counted)."""
    if breaker is None:
        return 0
    try:
        return breaker.acquire()
    except CircuitOpenError:
        guard.metrics.count("circuit_open")
        if guard._emit.hot:
            guard._emit(Event("rejected", guard.name, {"reason": "circuit_open"}))
        raise


def count_open(guard: Guard) -> None:
    """A call refused at the door: a call, ignored (neither success nor failure), circuit_open."""
    guard.metrics.refuse()
    if guard._emit.hot:
        guard._emit(Event("rejected", guard.name, {"reason": "circuit_open"}))


def count_full(guard: Guard) -> None:
    guard.metrics.count("bulkhead_full")
    if guard._emit.hot:
        guard._emit(Event("rejected", guard.name, {"reason": "bulkhead_full"}))


# -- waiting and running -----------------------------------------------------------------------


async def wait_slot(
    guard: Guard,
    bulkhead: Bulkhead,
    slot: asyncio.Future[None],
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
) -> None:
    """Wait in the bulkhead's queue for at most `max_wait` and until the total deadline.

    Raises BulkheadFullError when `max_wait` runs out, GuardTimeoutError (total) when the
    deadline does; a slot granted in that very moment is passed on, never kept or lost."""
    limit = bulkhead.max_wait
    when = deadline
    if limit is not None:
        end = loop.time() + limit
        if when is None or end < when:
            when = end
    task = _current_task(loop)
    if when is None or task is None:
        try:
            await slot
        except BaseException:
            bulkhead.leave_queue(slot)
            raise
        return
    timer = guard._wait_deadline(loop, task, when)
    try:
        await slot
    except asyncio.CancelledError:
        expired = timer.expired()
        bulkhead.leave_queue(slot)
        if not expired:
            raise
        if when == deadline:
            guard.metrics.count("timeouts")
            raise GuardTimeoutError(guard.name, "total", guard._total or 0.0) from None
        raise BulkheadFullError(guard.name, bulkhead.max_concurrent, bulkhead.max_queue) from None
    except BaseException:
        timer.disarm()
        bulkhead.leave_queue(slot)
        raise
    timer.disarm()


async def in_thread(
    bulkhead: Bulkhead,
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run a blocking `fn` in the policy's own pool. The slot is held until the thread
    really finishes, even if the caller stopped waiting (timeout, cancel)."""
    ctx = contextvars.copy_context()
    try:
        future = bulkhead.pool.submit(ctx.run, fn, *args, **kwargs)
    except BaseException:  # e.g. the interpreter is shutting down: no thread, no slot
        bulkhead.release()
        raise
    future.add_done_callback(lambda _f: bulkhead.release())
    result = await asyncio.wrap_future(future, loop=loop)
    if asyncio.iscoroutine(result):
        return await result
    return result


# -- errors ------------------------------------------------------------------------------------


def timed_out(guard: Guard, total: bool, n: int) -> GuardTimeoutError:
    """Attempt `n` ran past the total deadline (`total`) or its own: counted and announced."""
    kind = "total" if total else "attempt"
    seconds = (guard._total if total else guard._attempt) or 0.0
    guard.metrics.count("timeouts")
    guard._emit(Event("timeout", guard.name, {"kind": kind, "attempt": n}))
    return GuardTimeoutError(guard.name, kind, seconds)


def not_awaitable(
    guard: Guard,
    awaited: object,
    fn: Callable[..., Any],
    breaker: Breaker | None,
    permit: int,
    timer: Deadline | None,
) -> None:
    """`call` got a plain function: a caller's mistake, not a dependency failure, so it is
    neither counted nor retried. Raises a TypeError saying what to use instead."""
    if inspect.isawaitable(awaited):
        return  # a TypeError from inside the coroutine: the dependency's own error
    if timer is not None:
        timer.disarm()
    if breaker is not None:
        breaker.on_release(permit)
    name = getattr(fn, "__qualname__", repr(fn))
    raise NotAwaitableError(
        f"guard {guard.name!r}: call() awaits what {name} returns, but it returned "
        f"{type(awaited).__name__}; use call_sync() for a blocking function, or give the "
        'policy bulkhead.kind = "threads" to run it in its own pool with call()'
    ) from None


# -- retries -----------------------------------------------------------------------------------


async def before_retry(
    guard: Guard,
    exc: BaseException,
    n: int,
    previous: float,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
) -> float:
    """Sleep before the next attempt and return the delay slept, or -1.0 to stop."""
    wait = retry_wait(guard, exc, n, previous, None if deadline is None else deadline - loop.time())
    if wait < 0:
        return wait
    await guard._clock.sleep(wait)
    return wait


def retry_wait(
    guard: Guard, exc: BaseException, n: int, previous: float, remaining: float | None
) -> float:
    """The wait before retry `n`, or -1.0 when the call must end with `exc`."""
    retry = guard.retry
    if retry is None or n >= guard.max_attempts or not retry.should_retry(exc):
        return -1.0
    if isinstance(exc, GuardTimeoutError) and exc.kind == "total":
        return -1.0
    wait = retry.wait_before(n, exc, previous, remaining)
    if wait is None:
        exc.add_note(f"policyengine: not retried, the total deadline of {guard.name!r} is near")
        return -1.0
    breaker = guard.breaker
    if (
        breaker is not None
        and breaker.state in ("open", "forced_open")
        and breaker.retry_after() > wait
    ):
        exc.add_note(f"policyengine: not retried, the circuit {guard.name!r} is open")
        return -1.0
    budget = guard._budget
    if budget is not None and not budget.try_acquire_retry():
        from ._retry import add_budget_note

        add_budget_note(exc, guard.name)
        guard.metrics.count("budget_exhausted")
        guard._emit(Event("budget_exhausted", guard.name, {"attempt": n}))
        return -1.0
    guard.metrics.count("retries")
    guard._emit(
        Event("retry", guard.name, {"attempt": n, "delay": wait, "error": type(exc).__name__})
    )
    return wait
