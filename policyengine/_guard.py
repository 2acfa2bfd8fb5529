"""Guard: one compiled policy, the runtime that a guarded call runs through.

Layer order, outermost first: fallback, total timeout, retry (with budget), breaker, bulkhead,
attempt timeout, the function. Everything a call needs was built by `_compile`; the call itself
reads a few attributes, bumps counters, and arms one timer per attempt.

`asyncio.CancelledError` (and every other BaseException that is not an Exception) is never
retried, never counted as a success or failure, and returns every permit it holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._breaker import _OPEN
from ._events import Event
from ._timeout import Deadline, DeadlineQueue
from .exceptions import BulkheadFullError, CircuitOpenError, GuardTimeoutError, RejectedError

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


class _NotAwaitableError(TypeError):
    """`call` was given a function whose result cannot be awaited (the caller's mistake)."""


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
        except _NotAwaitableError:
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
                    self._count_open()
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
                    permit = self._admit(breaker)
                if bulkhead is not None:
                    try:
                        slot = bulkhead.enter(loop)
                        if slot is not None:
                            if self._bounded_wait:
                                await self._wait_slot(bulkhead, slot, loop, deadline)
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
                            self._count_full()
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
                        result = await self._in_thread(bulkhead, loop, fn, args, kwargs)  # type: ignore[arg-type]
                    else:
                        awaited = fn(*args, **kwargs)
                        result = await awaited  # type: ignore[misc]
                except BaseException as exc:
                    if bulkhead is not None and not threaded:
                        bulkhead.release()
                    if isinstance(exc, TypeError) and awaited is not None:
                        self._not_awaitable(awaited, fn, breaker, permit, timer)
                    error: BaseException = exc
                    if timer is not None and isinstance(exc, asyncio.CancelledError):
                        if not timer.expired():
                            if breaker is not None:
                                breaker.on_release(permit)
                            raise
                        error = self._timed_out(when == deadline, n)
                    elif timer is not None:
                        timer.disarm()
                    if not isinstance(error, Exception):
                        if breaker is not None:
                            breaker.on_release(permit)
                        raise
                    if breaker is not None:
                        elapsed = self._clock.now() - started if timed else 0.0
                        breaker.on_failure(permit, error, elapsed)
                    previous = await self._before_retry(error, n, previous, loop, deadline)
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
            if isinstance(exc, Exception) and not isinstance(exc, _NotAwaitableError):
                outcome = -1 if isinstance(exc, RejectedError) and n <= 1 else 0
            raise
        finally:
            m.finish(outcome, loop.time() - t0)

    def _not_awaitable(
        self,
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
        raise _NotAwaitableError(
            f"guard {self.name!r}: call() awaits what {name} returns, but it returned "
            f"{type(awaited).__name__}; use call_sync() for a blocking function, or give the "
            'policy bulkhead.kind = "threads" to run it in its own pool with call()'
        ) from None

    def _timed_out(self, total: bool, n: int) -> GuardTimeoutError:
        kind = "total" if total else "attempt"
        seconds = (self._total if total else self._attempt) or 0.0
        self.metrics.count("timeouts")
        self._emit(Event("timeout", self.name, {"kind": kind, "attempt": n}))
        return GuardTimeoutError(self.name, kind, seconds)

    def _admit(self, breaker: Breaker | None) -> int:
        if breaker is None:
            return 0
        try:
            return breaker.acquire()
        except CircuitOpenError:
            self.metrics.count("circuit_open")
            if self._emit.hot:
                self._emit(Event("rejected", self.name, {"reason": "circuit_open"}))
            raise

    async def _wait_slot(
        self,
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
        timer = self._wait_deadline(loop, task, when)
        try:
            await slot
        except asyncio.CancelledError:
            expired = timer.expired()
            bulkhead.leave_queue(slot)
            if not expired:
                raise
            if when == deadline:
                self.metrics.count("timeouts")
                raise GuardTimeoutError(self.name, "total", self._total or 0.0) from None
            raise BulkheadFullError(
                self.name, bulkhead.max_concurrent, bulkhead.max_queue
            ) from None
        except BaseException:
            timer.disarm()
            bulkhead.leave_queue(slot)
            raise
        timer.disarm()

    def _count_open(self) -> None:
        self.metrics.refuse()  # a call, ignored (neither success nor failure), circuit_open
        if self._emit.hot:
            self._emit(Event("rejected", self.name, {"reason": "circuit_open"}))

    def _count_full(self) -> None:
        self.metrics.count("bulkhead_full")
        if self._emit.hot:
            self._emit(Event("rejected", self.name, {"reason": "bulkhead_full"}))

    async def _in_thread(
        self,
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

    async def _before_retry(
        self,
        exc: BaseException,
        n: int,
        previous: float,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
    ) -> float:
        """Sleep before the next attempt and return the delay slept, or -1.0 to stop."""
        wait = self._retry_wait(
            exc, n, previous, None if deadline is None else deadline - loop.time()
        )
        if wait < 0:
            return wait
        await self._clock.sleep(wait)
        return wait

    def _retry_wait(
        self, exc: BaseException, n: int, previous: float, remaining: float | None
    ) -> float:
        """The wait before retry `n`, or -1.0 when the call must end with `exc`."""
        retry = self.retry
        if retry is None or n >= self.max_attempts or not retry.should_retry(exc):
            return -1.0
        if isinstance(exc, GuardTimeoutError) and exc.kind == "total":
            return -1.0
        wait = retry.wait_before(n, exc, previous, remaining)
        if wait is None:
            exc.add_note(f"policyengine: not retried, the total deadline of {self.name!r} is near")
            return -1.0
        breaker = self.breaker
        if (
            breaker is not None
            and breaker.state in ("open", "forced_open")
            and breaker.retry_after() > wait
        ):
            exc.add_note(f"policyengine: not retried, the circuit {self.name!r} is open")
            return -1.0
        budget = self._budget
        if budget is not None and not budget.try_acquire_retry():
            from ._retry import add_budget_note

            add_budget_note(exc, self.name)
            self.metrics.count("budget_exhausted")
            self._emit(Event("budget_exhausted", self.name, {"attempt": n}))
            return -1.0
        self.metrics.count("retries")
        self._emit(
            Event("retry", self.name, {"attempt": n, "delay": wait, "error": type(exc).__name__})
        )
        return wait

    # ------------------------------------------------------------- sync call
    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking `fn` in this thread through the policy (see `_sync`)."""
        return _call_sync(self, fn, args, kwargs)


from ._sync import call_sync as _call_sync  # noqa: E402  (needs Guard defined)
