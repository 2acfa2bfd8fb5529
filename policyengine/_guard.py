"""Guard: one compiled policy, the runtime that a guarded call runs through.

Layer order, outermost first: fallback, total timeout, retry (with budget), breaker, bulkhead,
attempt timeout, the function. Everything a call needs was built by `_compile`; the call itself
reads a few attributes, bumps counters, and arms one timer per attempt.

`asyncio.CancelledError` (and every other BaseException that is not an Exception) is never
retried, never counted as a success or failure, and returns every permit it holds.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._attempts import (
    NotAwaitableError,
    admit,
    before_retry,
    count_full,
    count_open,
    in_thread,
    not_awaitable,
    timed_out,
    wait_slot,
)
from ._breaker import _OPEN
from ._events import Event
from ._timeout import Deadline, DeadlineQueue
from .exceptions import BulkheadFullError, CircuitOpenError, RejectedError

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._bulkhead import Bulkhead
    from ._clock import Clock
    from ._events import Listeners
    from ._fallback import Fallback
    from ._metrics import GuardMetrics
    from ._models import Policy
    from ._retry import RetryBudget, RetryStrategy

__all__ = ["Guard"]

T = TypeVar("T")
_get_loop = asyncio.get_running_loop
_current_task = asyncio.current_task


def _always(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


class Guard:
    """The compiled runtime of one policy version. Handles (`guard(name)`) point at the newest."""

    __slots__ = (
        "_attempt",
        "_bounded_wait",
        "_budget",
        "_clock",
        "_emit",
        "_first",
        "_queue",
        "_retryable",
        "_threaded",
        "_timed",
        "_total",
        "_wait_queue",
        "breaker",
        "bulkhead",
        "fallback",
        "max_attempts",
        "metrics",
        "mode",
        "name",
        "policy",
        "retry",
    )

    def __init__(
        self,
        name: str,
        policy: Policy,
        clock: Clock,
        emit: Listeners,
        metrics: GuardMetrics,
        *,
        breaker: Breaker | None = None,
        bulkhead: Bulkhead | None = None,
        retry: RetryStrategy | None = None,
        budget: RetryBudget | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.mode = policy.mode
        self._clock = clock
        self._emit = emit
        self.metrics = metrics
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.retry = retry
        self._budget = budget
        self.fallback = fallback
        self.max_attempts = retry.max_attempts if retry is not None else 1
        self._retryable = retry.should_retry if retry is not None else _always
        timeout = policy.timeout
        self._total = timeout.total if timeout is not None else None
        self._attempt = timeout.attempt if timeout is not None else None
        self._threaded = bulkhead is not None and bulkhead.kind == "threads"
        # slow-call rules need durations (from the policy: the breaker is reconfigured later)
        self._timed = policy.breaker is not None and policy.breaker.slow_call_duration is not None
        # a bulkhead wait bounded by max_wait or the total deadline needs a timer
        self._bounded_wait = bulkhead is not None and (
            (policy.bulkhead is not None and policy.bulkhead.max_wait is not None)
            or self._total is not None
        )
        self._queue: DeadlineQueue | None = None
        self._wait_queue: DeadlineQueue | None = None
        # What `call` runs, chosen once: no mode or fallback test per call.
        if self.mode == "disabled":
            self._first = self._passthrough
        elif self.mode == "observe":
            self._first = self._observe
        elif fallback is not None:
            self._first = self._run_with_fallback
        else:
            self._first = self._run

    # ----------------------------------------------------------------- state
    @property
    def state(self) -> str:
        if self.mode == "disabled":
            return "disabled"
        return self.breaker.state if self.breaker is not None else "closed"

    def snapshot(self) -> dict[str, Any]:
        """Metrics, bulkhead use and state, read together (`GuardHandle.metrics()`)."""
        out = self.metrics.snapshot()
        bulkhead = self.bulkhead
        out["queued"] = bulkhead.queued if bulkhead is not None else 0
        out["bulkhead"] = (
            None
            if bulkhead is None
            else {
                "active": bulkhead.active,
                "max_concurrent": bulkhead.max_concurrent,
                "queued": bulkhead.queued,
                "max_queue": bulkhead.max_queue,
            }
        )
        out["state"] = self.state
        breaker = self.breaker
        out["breaker_failure_rate"] = breaker.failure_rate if breaker is not None else None
        # a shared breaker that lost its store and runs on this process's own state
        out["degraded"] = bool(getattr(breaker, "degraded", False))
        return out

    # ------------------------------------------------------------ async call
    def call(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, T]:
        """`await guard.call(fn, ...)`: run `fn(*args, **kwargs)` through every layer."""
        return self._first(fn, args, kwargs)

    async def _passthrough(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    async def _observe(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        from ._observe import observe_call

        return await observe_call(self, fn, args, kwargs)

    async def _run_with_fallback(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return await self._run(fn, args, kwargs)
        except NotAwaitableError:
            raise  # the caller's mistake: no fallback hides it
        except Exception as exc:
            fallback = self.fallback
            if fallback is None or fallback.kind_of(exc, self._retryable) is None:
                raise
            self.metrics.count("fallbacks")
            self._emit(Event("fallback", self.name, {"error": type(exc).__name__}))
            return await fallback.produce(exc)

    def _deadline(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], when: float
    ) -> Deadline:
        queue = self._queue
        if queue is None or queue.loop is not loop:
            queue = self._queue = DeadlineQueue(loop)
        return queue.add(task, when)

    def _wait_deadline(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], when: float
    ) -> Deadline:
        """Bulkhead waits get a queue of their own: their lengths differ from attempts'."""
        queue = self._wait_queue
        if queue is None or queue.loop is not loop:
            queue = self._wait_queue = DeadlineQueue(loop)
        return queue.add(task, when)

    async def _run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        m = self.metrics
        breaker = self.breaker
        permit = 0
        if breaker is not None:
            permit = breaker._closed_permit  # closed: the permit, with no call at all
            if permit < 0:
                # Open: `Breaker.acquire`'s first test, inlined. This is an outage's hot path,
                # so the error is raised once, here, with no frame or re-raise in between.
                if breaker._state == _OPEN and not breaker.observe:
                    now = breaker._now()
                    until = breaker._open_until
                    if now < until:
                        lock = m.lock  # m.refuse(), inlined
                        lock.acquire()
                        m.refused += 1
                        lock.release()
                        if self._emit.hot:
                            self._emit(Event("rejected", self.name, {"reason": "circuit_open"}))
                        raise CircuitOpenError(self.name, until - now, "open")
                try:
                    permit = breaker.acquire()
                except CircuitOpenError:
                    count_open(self)
                    raise
        loop = _get_loop()
        with m.lock:  # m.start(), inlined: this is the hot path
            m.calls += 1
            m.in_flight += 1
        t0 = loop.time()
        total = self._total
        deadline = t0 + total if total is not None else None
        if self._budget is not None:
            self._budget.record_call()
        bulkhead, per_attempt = self.bulkhead, self._attempt
        threaded = self._threaded
        timed = self._timed
        outcome = -1
        n = 0
        previous = 0.0
        try:
            while True:
                n += 1
                if n > 1 and breaker is not None:
                    permit = admit(self, breaker)
                if bulkhead is not None:
                    try:
                        slot = bulkhead.enter(loop)
                        if slot is not None:
                            if self._bounded_wait:
                                await wait_slot(self, bulkhead, slot, loop, deadline)
                            else:  # unbounded: await the queue's future right here
                                try:
                                    await slot
                                except BaseException:
                                    bulkhead.leave_queue(slot)
                                    raise
                    except BaseException as exc:
                        if breaker is not None:
                            breaker.on_release(permit)
                        if isinstance(exc, BulkheadFullError):
                            count_full(self)
                        raise
                when = deadline
                if per_attempt is not None:
                    attempt_end = loop.time() + per_attempt
                    if when is None or attempt_end < when:
                        when = attempt_end
                timer = None
                if when is not None:
                    timer = self._deadline(loop, _current_task(loop), when)  # type: ignore[arg-type]
                started = self._clock.now() if timed else 0.0
                awaited: object = None
                try:
                    if threaded:
                        result = await in_thread(bulkhead, loop, fn, args, kwargs)  # type: ignore[arg-type]
                    else:
                        awaited = fn(*args, **kwargs)
                        result = await awaited  # type: ignore[misc]
                except BaseException as exc:
                    if bulkhead is not None and not threaded:
                        bulkhead.release()
                    if isinstance(exc, TypeError) and awaited is not None:
                        not_awaitable(self, awaited, fn, breaker, permit, timer)
                    error: BaseException = exc
                    if timer is not None and isinstance(exc, asyncio.CancelledError):
                        if not timer.expired():
                            if breaker is not None:
                                breaker.on_release(permit)
                            raise
                        error = timed_out(self, when == deadline, n)
                    elif timer is not None:
                        timer.disarm()
                    if not isinstance(error, Exception):
                        if breaker is not None:
                            breaker.on_release(permit)
                        raise
                    if breaker is not None:
                        elapsed = self._clock.now() - started if timed else 0.0
                        breaker.on_failure(permit, error, elapsed)
                    previous = await before_retry(self, error, n, previous, loop, deadline)
                    if previous < 0:
                        if error is exc:
                            raise
                        raise error from None
                    continue
                if timer is not None:
                    timer.disarm()
                if bulkhead is not None and not threaded:
                    bulkhead.release()
                if breaker is not None:
                    breaker.on_success(permit, self._clock.now() - started if timed else 0.0)
                outcome = 1
                return result
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, NotAwaitableError):
                outcome = -1 if isinstance(exc, RejectedError) and n <= 1 else 0
            raise
        finally:
            m.finish(outcome, loop.time() - t0)

    # ------------------------------------------------------------- sync call
    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking `fn` in this thread through the policy (see `_sync`)."""
        return _call_sync(self, fn, args, kwargs)


from ._sync import call_sync as _call_sync  # noqa: E402  (needs Guard defined)
