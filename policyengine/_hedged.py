"""The async driver of a guard with a `hedge` section: `Guard._run`'s loop, with each attempt
run as a hedging race (`_race.race`).

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

from ._lifecycle import NOT_CALLED, Attempt, NotAwaitableError
from ._race import race
from ._retry_decision import Retry, decide
from ._threads import in_thread

if TYPE_CHECKING:
    from ._guard import Guard

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
            await guard._layer_wait(attempt, wait, loop, deadline)
    slot = attempt.enter(loop)
    if slot is not None:
        await attempt.wait_slot(slot, loop, deadline if guard.bounded_wait else None)
    when = deadline
    if guard.attempt_timeout is not None:
        end = loop.time() + guard.attempt_timeout
        if when is None or end < when:
            when = end
    if when is not None:
        attempt.timer = guard.deadline(loop, _current_task(loop), when)  # type: ignore[arg-type]
    clock = guard.clock
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
    attempt.succeeded(clock.now())
    return result


class _Round:
    """`start_attempt` for one round: the first attempt uses the call's permit, each extra one
    takes its own (`Attempt.renew`: a CircuitOpenError there stops hedging)."""

    __slots__ = ("args", "deadline", "first", "fn", "guard", "kwargs", "loop", "n")

    def __init__(
        self,
        guard: Guard,
        first: Attempt,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        n: int,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
    ) -> None:
        self.guard = guard
        self.first: Attempt | None = first
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.n = n
        self.loop = loop
        self.deadline = deadline

    def __call__(self) -> Any:
        attempt = self.first
        if attempt is None:  # an extra attempt (counted in `hedges` by the race)
            attempt = Attempt(self.guard, 0)
            attempt.renew()
        else:
            self.first = None
        return _attempt(
            self.guard, attempt, self.fn, self.args, self.kwargs, self.n, self.loop, self.deadline
        )


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
            permit = guard._door(breaker)
    m = guard.metrics
    loop = asyncio.get_running_loop()
    m.start()
    t0 = loop.time()
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
            try:
                result = await race(
                    _Round(guard, attempt, fn, args, kwargs, n, loop, deadline), hedge, loop
                )
            except Exception as error:
                if isinstance(error, NotAwaitableError):
                    raise  # the caller's mistake: never retried
                remaining = None if deadline is None else deadline - loop.time()
                decision = decide(guard, error, n, previous, remaining)
                if type(decision) is not Retry:
                    raise
                previous = decision.wait
                await guard.clock.sleep(decision.wait)
                continue
            outcome = 1
            return result
    except BaseException as exc:
        outcome = guard._outcome(exc, n)
        raise
    finally:
        m.finish(outcome, loop.time() - t0)
