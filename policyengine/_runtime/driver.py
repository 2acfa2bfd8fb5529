"""The async driver of a guarded call: attempts through one `_runtime.attempt.Attempt`.

`Guard.call` runs `run` (or `with_fallback` around it; `passthrough` in disabled mode). The
success path is inline in `run`: no coroutine per attempt, no call for what the attempt does
not need. Everything off that path (a retry's permit and the layers, a failed attempt's
settling and retry decision, a layer's wait) is one call away, shared with the hedged driver
(`_runtime.hedged`). `_runtime.sync` is the blocking twin, `_runtime.scope` the `async with` one,
`_runtime.observe` observe mode's.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._patterns.breaker import _OPEN
from .._telemetry.events import Event, FallbackUsed, Rejected
from ..exceptions import CircuitOpenError, GuardTimeoutError, RejectedError
from .attempt import NOT_CALLED, Attempt, NotAwaitableError
from .retry_decision import Retry, decide
from .threads import in_thread

if TYPE_CHECKING:
    from .._patterns.breaker import Breaker
    from .guard import Guard

__all__ = [
    "call_outcome",
    "door",
    "failed",
    "layer_wait",
    "passthrough",
    "readmit",
    "run",
    "with_fallback",
]

_get_loop = asyncio.get_running_loop
_current_task = asyncio.current_task
_OPEN_REJECTED = Rejected("circuit_open")


async def passthrough(
    guard: Guard, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


async def with_fallback(
    guard: Guard, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return await guard._drive(fn, args, kwargs)
    except NotAwaitableError:
        raise  # the caller's mistake: no fallback hides it
    except Exception as exc:
        fallback = guard.fallback
        if fallback is None or fallback.kind_of(exc, guard.retryable) is None:
            raise
        guard.metrics.count("fallbacks")
        guard.emit(Event.of(guard.name, FallbackUsed(type(exc).__name__)))
        return await fallback.produce(exc)


def door(guard: Guard, breaker: Breaker) -> int:
    """The first permit of a call when the breaker is not closed (raises when open)."""
    if breaker._state == _OPEN and not breaker.observe:
        # Open: `Breaker.acquire`'s first test, inlined. This is an outage's hot path.
        now = breaker._now()
        until = breaker._open_until
        if now < until:
            guard.metrics.refuse()  # `refuse()`, inlined
            if guard.emit.hot:
                guard.emit(Event.of(guard.name, _OPEN_REJECTED))
            raise CircuitOpenError(guard.name, until - now, "open")
    try:
        return breaker.acquire()
    except CircuitOpenError:
        guard.refuse()
        raise


async def run(
    guard: Guard, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The async driver: attempts through one `Attempt`, inline (no coroutine per attempt:
    this is the hot path); everything off the success path is a call away."""
    breaker = guard.breaker
    permit = 0
    if breaker is not None:
        permit = breaker._closed_permit  # closed: the permit, with no call at all
        if permit < 0:
            permit = door(guard, breaker)
    m = guard.metrics
    loop = _get_loop()
    lock = m.lock  # m.start(), inlined: this is the hot path
    lock.acquire()
    m.calls += 1
    m.inside += 1
    lock.release()
    t0 = loop.time()
    deadline = None if guard.total is None else t0 + guard.total
    if guard.budget is not None:
        guard.budget.record_call()
    attempt = Attempt(guard, permit)
    clock = guard.clock
    outcome = -1
    n = 0
    try:
        while True:
            n += 1
            if n > 1 or guard.layers:
                wait = readmit(guard, attempt, n, loop, deadline)
                if wait > 0.0:  # a layer asked for a wait (a rate-limit token later)
                    await layer_wait(guard, attempt, wait, loop, deadline)
            slot = attempt.enter(loop)
            if slot is not None:
                if guard.bounded_wait:
                    await attempt.wait_slot(slot, loop, deadline)
                else:  # unbounded: the queue's future, awaited right here (no coroutine)
                    try:
                        await slot
                    except BaseException as exc:
                        attempt.left_queue(slot, exc)
                        raise
                    attempt.granted()
            when = attempt.arm(loop, deadline)
            awaited: object = NOT_CALLED
            try:
                if guard.threaded:
                    attempt.slot = False  # the thread gives the slot back when it ends
                    result = await in_thread(guard.bulkhead, loop, fn, args, kwargs)  # type: ignore[arg-type]
                else:
                    awaited = fn(*args, **kwargs)
                    result = await awaited  # type: ignore[misc]
            except BaseException as exc:
                step = failed(guard, attempt, exc, awaited, fn, n, when == deadline, deadline)
                if step is exc:
                    raise
                await clock.sleep(step)  # type: ignore[arg-type]
                continue
            attempt.succeeded()
            outcome = 1
            return result
    except BaseException as exc:
        outcome = call_outcome(guard, exc, n)
        raise
    finally:
        m.finish(outcome, loop.time() - t0)


def call_outcome(guard: Guard, exc: BaseException, n: int) -> int:
    """The metrics outcome of a call that raised: 0 failure, -1 neither (cancelled, ignored,
    rejected before any attempt ran, or the caller's own mistake)."""
    if not isinstance(exc, Exception) or isinstance(exc, NotAwaitableError):
        return -1
    if isinstance(exc, RejectedError) and n <= 1:
        return -1
    return -1 if guard.ignores(exc) else 0


def readmit(
    guard: Guard,
    attempt: Attempt,
    n: int,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
) -> float:
    """Before the bulkhead: a new breaker permit for a retry, then the layers; the wait
    a layer asked for (0.0: none). Synchronous: a layer costs no coroutine of its own."""
    if n > 1:
        attempt.renew()
    if not guard.layers:
        return 0.0
    left = None if deadline is None else deadline - loop.time()
    return attempt.pass_layers(guard.clock.now(), left)


def failed(
    guard: Guard,
    attempt: Attempt,
    exc: BaseException,
    awaited: object,
    fn: object,
    n: int,
    total: bool,
    deadline: float | None,
) -> BaseException | float:
    """Attempt `n` raised `exc`: settle it and decide. Returns the backoff sleep before
    the next attempt, or `exc` itself to re-raise as it is; raises the error that ends the
    call when it is not `exc` (our GuardTimeoutError, or the caller's mistake)."""
    if isinstance(exc, TypeError) and awaited is not NOT_CALLED:
        attempt.refuse_not_awaitable(awaited, fn)
    clock = guard.clock
    error = attempt.failed(exc, total, n, clock.now())
    if isinstance(error, Exception):
        remaining = None if deadline is None else deadline - _get_loop().time()
        decision = decide(guard, error, n, attempt.previous, remaining)
        if type(decision) is Retry:
            attempt.previous = decision.wait
            return decision.wait
    if error is exc:
        return exc
    raise error from None


async def layer_wait(
    guard: Guard,
    attempt: Attempt,
    wait: float,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
) -> None:
    """A layer asked the attempt to wait (a rate-limit token later): sleep on the engine's
    clock, unless the total deadline would pass first."""
    if deadline is not None and loop.time() + wait >= deadline:
        guard.metrics.count("timeouts")
        error = GuardTimeoutError(guard.name, "total", guard.total or 0.0)
        attempt.give_back("timeout", error)
        raise error
    try:
        await guard.clock.sleep(wait)
    except BaseException as exc:
        attempt.give_back("cancelled", exc)
        raise
