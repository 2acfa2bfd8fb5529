"""One attempt's lifecycle: what an attempt holds, the fixed order it takes things in, and the
fixed order it gives them back.

Every driver of a guarded call (`Guard.call`, `call_sync`, `async with`, observe mode) runs its
attempts through an `Attempt`, so each step exists once:

    take:    breaker permit -> layers (`_runtime.layer.AttemptLayer.admit`) -> bulkhead slot ->
    deadline
    return:  deadline -> bulkhead slot -> layers (`settle`) -> breaker outcome

A driver makes one `Attempt` per call and reuses it for each retry (`renew`). The success path is
`enter` (no await unless the bulkhead queues or a layer asks to wait), the call, `succeeded`;
everything else is here too, but off that path: counting rejections, turning our own deadline
into `GuardTimeoutError`, refusing a plain function given to `call`.

How a layer plugs in: give the compiled `Guard` a runtime object implementing
`_runtime.layer.AttemptLayer` (in `_registry.compile`, appended to the guard's `layers`); `enter`
calls its `admit` after the breaker, and every way out of an attempt calls its `settle` exactly
once. No driver changes. A layer that must run the attempt differently (hedging) wraps `run_once`
instead.

Why a permit is released rather than counted on cancellation: `asyncio.CancelledError` (and every
BaseException that is not an Exception) is never a dependency failure. It gives back the breaker
permit (a probe's returns to the pool), the bulkhead slot and every layer's reservation.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Final

from ..exceptions import BulkheadFullError, CircuitOpenError, GuardTimeoutError, RejectedError
from .layer import Outcome

if TYPE_CHECKING:
    from .._patterns.breaker import Breaker
    from .guard import Guard
    from .timeout import Deadline

__all__ = ["NOT_CALLED", "Attempt", "NotAwaitableError", "outcome_of"]

NOT_CALLED: Final = object()
"""What `fn(...)` returned before it was called: tells "fn raised TypeError" from "awaiting what
fn returned raised TypeError" (a plain function given to `call`), even when fn returned None."""


class NotAwaitableError(TypeError):
    """`call` was given a function whose result cannot be awaited (the caller's mistake)."""


def outcome_of(error: BaseException, ignored: bool) -> Outcome:
    """The `Outcome` of an attempt that raised `error` (after our own deadline was translated)."""
    if not isinstance(error, Exception):
        return "cancelled"
    if isinstance(error, GuardTimeoutError):
        return "timeout"
    if isinstance(error, RejectedError):
        return "rejected"
    return "ignored" if ignored else "failure"


class Attempt:
    """What the current attempt of one call holds. Slotted; one per call, renewed per retry."""

    __slots__ = ("admitted", "guard", "permit", "previous", "slot", "started", "timer")

    def __init__(self, guard: Guard, permit: int) -> None:
        self.guard = guard
        self.permit = permit  # the breaker's permit (0 without a breaker)
        self.slot = False  # holds a bulkhead slot that this attempt must give back
        self.timer: Deadline | None = None
        self.started = 0.0  # engine-clock time the function was called
        self.admitted = 0  # how many of the guard's layers admitted this attempt
        self.previous = 0.0  # the last backoff sleep (decorrelated jitter grows from it)

    # -- taking ---------------------------------------------------------------------------------

    def renew(self) -> None:
        """Before a retry: a new breaker permit (the first one came from the door check)."""
        self.timer = None
        self.slot = False
        self.admitted = 0
        breaker = self.guard.breaker
        if breaker is not None:
            self.permit = self.take_permit(breaker)

    def take_permit(self, breaker: Breaker) -> int:
        """The breaker's permit for this attempt, or its CircuitOpenError (counted)."""
        try:
            return breaker.acquire()
        except CircuitOpenError:
            self.guard.count_rejection("circuit_open")
            raise

    def pass_layers(self, now: float, limit: float | None = None) -> float:
        """Every layer's `admit`, in order; the longest wait any asked for (0.0: go on).

        A layer that refuses ends the attempt here: the layers before it settle "rejected",
        the permit goes back, and the refusal is counted under its reason."""
        wait = 0.0
        for layer in self.guard.layers:
            try:
                asked = layer.admit(now, limit)
            except RejectedError as exc:
                self.give_back("rejected", exc)
                self.guard.count_rejection(getattr(exc, "reason", "circuit_open"))
                raise
            self.admitted += 1
            if asked > wait:
                wait = asked
        return wait

    def enter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """Layers admitted: take a slot now (None) or the queue's future to wait on. The
        attempt's clock starts once it has its slot (a queue wait is not its duration)."""
        guard = self.guard
        if guard.clocked:
            self.started = guard.clock.now()
        bulkhead = guard.bulkhead
        if bulkhead is None:
            return None
        try:
            future = bulkhead.enter(loop)
        except BulkheadFullError as exc:
            self.give_back("rejected", exc)
            self.guard.count_rejection("bulkhead_full")
            raise
        if future is None:
            self.slot = True
        return future

    async def wait_slot(
        self, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> None:
        """Wait in the bulkhead's queue for at most `max_wait` and until the total deadline.

        BulkheadFullError when `max_wait` runs out, GuardTimeoutError (total) when the deadline
        does; a slot granted in that very moment is passed on, never kept or lost."""
        guard = self.guard
        bulkhead = guard.bulkhead
        assert bulkhead is not None
        if not guard.bounded_wait:
            deadline = None
        when = deadline
        if bulkhead.max_wait is not None:
            end = loop.time() + bulkhead.max_wait
            if when is None or end < when:
                when = end
        task = asyncio.current_task(loop)
        timer = None if when is None or task is None else guard.wait_deadline(loop, task, when)
        try:
            await future
        except BaseException as exc:
            bulkhead.leave_queue(future)
            error = self._queue_error(exc, timer, when == deadline)
            self.give_back(outcome_of(error, False), error)
            if error is exc:
                raise
            raise error from None
        if timer is not None:
            timer.disarm()
        self.granted()

    def granted(self) -> None:
        """The queue handed this attempt its slot; its clock starts now."""
        self.slot = True
        guard = self.guard
        if guard.clocked:
            self.started = guard.clock.now()

    def left_queue(self, future: asyncio.Future[None], exc: BaseException) -> None:
        """An unbounded wait in the queue ended by `exc` (a cancellation): out of the queue (a
        slot granted in that very moment is passed on), everything given back."""
        self.guard.bulkhead.leave_queue(future)  # type: ignore[union-attr]
        self.give_back(outcome_of(exc, False), exc)

    def arm(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
        """The attempt's deadline, min(total deadline, now + attempt timeout), armed on the
        guard's deadline queue; None when neither bounds it."""
        guard = self.guard
        when = deadline
        if guard.attempt_timeout is not None:
            end = loop.time() + guard.attempt_timeout
            if when is None or end < when:
                when = end
        if when is not None:
            self.timer = guard.deadline(loop, asyncio.current_task(loop), when)  # type: ignore[arg-type]
        return when

    def _queue_error(
        self, exc: BaseException, timer: Deadline | None, total: bool
    ) -> BaseException:
        """What a wait in the queue that ended with `exc` comes to."""
        if timer is None:
            return exc
        if not isinstance(exc, asyncio.CancelledError):
            timer.disarm()
            return exc
        if not timer.expired():
            return exc
        guard = self.guard
        if total:
            guard.metrics.count("timeouts")
            return GuardTimeoutError(guard.name, "total", guard.total or 0.0)
        guard.count_rejection("bulkhead_full")
        bulkhead = guard.bulkhead
        assert bulkhead is not None
        return BulkheadFullError(guard.name, bulkhead.max_concurrent, bulkhead.max_queue)

    # -- giving back ----------------------------------------------------------------------------

    def succeeded(self) -> None:
        """The function returned: everything back, in order, and the success recorded."""
        timer = self.timer
        if timer is not None:
            timer.disarm()
        guard = self.guard
        if self.slot:
            self.slot = False
            guard.bulkhead.release()  # type: ignore[union-attr]
        duration = 0.0
        if guard.clocked:  # slow-call rules or layers need the duration
            now = guard.clock.now()
            duration = now - self.started
            if self.admitted:
                self._settle("success", None, duration, now)
        breaker = guard.breaker
        if breaker is not None:
            # slow-call timing as the policy said when the call started (see `Guard.timed`)
            breaker.on_success(self.permit, duration if guard.timed else 0.0)

    def failed(self, exc: BaseException, total: bool, n: int, now: float) -> BaseException:
        """The attempt raised `exc`: translate our own deadline into GuardTimeoutError,
        give everything back in order and record the outcome. Returns the attempt's error
        (`exc`, or the GuardTimeoutError); the caller re-raises it unless it retries."""
        error = exc
        timer = self.timer
        if timer is not None:
            if isinstance(exc, asyncio.CancelledError):
                if timer.expired():
                    error = self.guard.timed_out(total, n)
            else:
                timer.disarm()
        if self.slot:
            self.slot = False
            self.guard.bulkhead.release()  # type: ignore[union-attr]
        duration = now - self.started
        guard = self.guard
        ignored = isinstance(error, Exception) and guard.ignores(error)
        if self.admitted:
            self._settle(outcome_of(error, ignored), error, duration, now)
        breaker = guard.breaker
        if breaker is not None:
            if isinstance(error, Exception):
                breaker.on_failure(self.permit, error, duration if guard.timed else 0.0)
            else:
                breaker.on_release(self.permit)
        return error

    def give_back(self, outcome: Outcome, error: BaseException | None) -> None:
        """The attempt ends before the function ran: slot, layers and permit go back."""
        guard = self.guard
        if self.slot:
            self.slot = False
            guard.bulkhead.release()  # type: ignore[union-attr]
        if self.admitted:
            self._settle(outcome, error, 0.0, guard.clock.now())
        if guard.breaker is not None:
            guard.breaker.on_release(self.permit)

    def _settle(
        self, outcome: Outcome, error: BaseException | None, duration: float, now: float
    ) -> None:
        layers = self.guard.layers
        for layer in layers[: self.admitted]:
            try:
                layer.settle(outcome, error, duration, now)
            except Exception:  # a layer's bug must not become the caller's error
                pass
        self.admitted = 0

    # -- a caller's mistake ---------------------------------------------------------------------

    def refuse_not_awaitable(self, awaited: object, fn: object) -> None:
        """`call` got a plain function (its result cannot be awaited): not a dependency
        failure, so nothing is counted or retried. Raises a TypeError saying what to use."""
        if inspect.isawaitable(awaited):
            return  # a TypeError from inside the coroutine: the dependency's own error
        timer = self.timer
        if timer is not None:
            timer.disarm()
        self.give_back("cancelled", None)
        name = getattr(fn, "__qualname__", repr(fn))
        raise NotAwaitableError(
            f"guard {self.guard.name!r}: call() awaits what {name} returns, but it returned "
            f"{type(awaited).__name__}; use call_sync() for a blocking function, or give the "
            'policy bulkhead.kind = "threads" to run it in its own pool with call()'
        ) from None
