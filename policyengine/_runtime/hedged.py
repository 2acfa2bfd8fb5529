"""The async driver of a guard with a `hedge` section: `Guard._run`'s loop, with each attempt
run as a hedging race (`_runtime.race.race`).

Why a driver of its own rather than a step in `Guard._run`: a hedged attempt is several attempts
at once, each with its own `Attempt` (breaker permit, layers, bulkhead slot, deadline), and the
plain driver's hot path must stay as it is for every other policy. The guard picks this driver
once, at compile time, when the policy has a hedge section and is enforced (observe mode calls
the function once and never hedges; `call_sync` and `async with` do not hedge either).

Per round (a call's attempt and each retry): `race` starts one full attempt, and extra ones per
the hedge delay and budget. Every attempt takes its permit, layers and slot in the lifecycle's
order and gives them back however it ends (a cancelled loser: "cancelled", neither outcome). An
extra attempt refused by the breaker or the bulkhead is counted as that rejection and stops
hedging for the round. The round's error (the last failure) goes to the retry decision as any
attempt's would; every attempt is bounded by the call's total deadline, so hedges and retries
share it. `hedges` counts extra attempts started (refused ones included), `hedge_wins` rounds
won by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .attempt import NOT_CALLED, Attempt, NotAwaitableError
from .driver import call_outcome as outcome_of_call
from .driver import door, layer_wait
from .race import arm, first_failed, first_succeeded
from .retry_decision import Retry, decide
from .threads import in_thread

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["hedged_call"]

_current_task = asyncio.current_task


async def _attempt(
    guard: Guard,
    attempt: Attempt,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    n: int,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
) -> Any:
    """One full attempt: admitted, run, settled. Raises the attempt's (translated) error."""
    if guard.layers:
        wait = attempt.pass_layers(guard.clock.now())
        if wait > 0.0:
            await layer_wait(guard, attempt, wait, loop, deadline)
    slot = attempt.enter(loop)
    if slot is not None:
        await attempt.wait_slot(slot, loop, deadline)
    when = deadline
    if guard.attempt_timeout is not None:
        end = loop.time() + guard.attempt_timeout
        if when is None or end < when:
            when = end
    if when is not None:
        attempt.timer = guard.deadline(loop, _current_task(loop), when)  # type: ignore[arg-type]
    clock = guard.clock
    if guard.clocked:
        attempt.started = clock.now()
    awaited: object = NOT_CALLED
    try:
        if guard.threaded:
            attempt.slot = False  # the thread gives the slot back when it ends
            result = await in_thread(guard.bulkhead, loop, fn, args, kwargs)  # type: ignore[arg-type]
        else:
            awaited = fn(*args, **kwargs)
            result = await awaited  # type: ignore[misc]
    except BaseException as exc:
        if isinstance(exc, TypeError) and awaited is not NOT_CALLED:
            attempt.refuse_not_awaitable(awaited, fn)
        error = attempt.failed(exc, when == deadline, n, clock.now())
        if error is exc:
            raise
        raise error from None
    attempt.succeeded()
    return result


async def _extra(
    guard: Guard,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    n: int,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
) -> Any:
    """An extra attempt: its own breaker permit (`Attempt.renew`: a CircuitOpenError stops
    hedging), taken once its task runs, so one cancelled before it started holds nothing."""
    attempt = Attempt(guard, 0)
    attempt.renew()
    return await _attempt(guard, attempt, fn, args, kwargs, n, loop, deadline)


def _retry_wait(
    guard: Guard, error: Exception, n: int, previous: float, deadline: float | None, now: float
) -> float | None:
    """The sleep before the next round, or None to raise `error` (see `_runtime.retry_decision`)."""
    if isinstance(error, NotAwaitableError):
        return None  # the caller's mistake: never retried
    remaining = None if deadline is None else deadline - now
    decision = decide(guard, error, n, previous, remaining)
    return decision.wait if type(decision) is Retry else None


async def hedged_call(
    guard: Guard, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`Guard.call` for a hedged policy (see the module docstring)."""
    hedge = guard.hedge
    assert hedge is not None
    breaker = guard.breaker
    permit = 0
    if breaker is not None:
        permit = breaker._closed_permit
        if permit < 0:
            permit = door(guard, breaker)
    m = guard.metrics
    loop = asyncio.get_running_loop()
    lock = m.lock  # m.start(), inlined as in Guard._run
    lock.acquire()
    m.calls += 1
    m.inside += 1
    lock.release()
    t0 = started = loop.time()
    deadline = None if guard.total is None else t0 + guard.total
    if guard.budget is not None:
        guard.budget.record_call()
    attempt = Attempt(guard, permit)
    outcome = -1
    n = 0
    previous = 0.0
    try:
        while True:
            n += 1
            if n > 1:
                attempt = Attempt(guard, 0)
                attempt.renew()
                started = loop.time()
            state = arm(hedge, _extra, loop, started, (guard, fn, args, kwargs, n, loop, deadline))
            try:
                try:
                    result = await _attempt(guard, attempt, fn, args, kwargs, n, loop, deadline)
                except BaseException as exc:
                    result = await first_failed(state, exc, started)
                else:
                    if state is None or state.extra is not None or hedge.sampling:
                        first_succeeded(state, hedge, loop, started)
                    else:
                        state.done = True  # the usual case: no extra started
            except Exception as error:
                wait = _retry_wait(guard, error, n, previous, deadline, loop.time())
                if wait is None:
                    raise
                previous = wait
                await guard.clock.sleep(wait)
                continue
            outcome = 1
            return result
    except BaseException as exc:
        outcome = outcome_of_call(guard, exc, n)
        raise
    finally:
        m.finish(outcome, loop.time() - t0)
