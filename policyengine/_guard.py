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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._events import Event
from ._timeout import AttemptTimer
from .exceptions import BulkheadFullError, CircuitOpenError, GuardTimeoutError, RejectedError

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._bulkhead import Bulkhead
    from ._clock import Clock
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
        "_budget",
        "_clock",
        "_emit",
        "_retryable",
        "_total",
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
        emit: Callable[[Event], None],
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

    # ----------------------------------------------------------------- state
    @property
    def state(self) -> str:
        if self.mode == "disabled":
            return "disabled"
        return self.breaker.state if self.breaker is not None else "closed"

    # ------------------------------------------------------------ async call
    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` through every layer of the policy."""
        if self.mode != "enforce":
            if self.mode == "disabled":
                return await fn(*args, **kwargs)
            from ._observe import observe_call

            return await observe_call(self, fn, args, kwargs)
        if self.fallback is None:
            return await self._run(fn, args, kwargs)
        try:
            return await self._run(fn, args, kwargs)
        except Exception as exc:
            if self.fallback.kind_of(exc, self._retryable) is None:
                raise
            self.metrics.fallbacks += 1
            self._emit(Event("fallback", self.name, {"error": type(exc).__name__}))
            result: T = await self.fallback.produce(exc)
            return result

    async def _run(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        loop = _get_loop()
        m = self.metrics
        with m.lock:
            m.calls += 1
            m.in_flight += 1
        t0 = loop.time()
        deadline = t0 + self._total if self._total is not None else None
        if self._budget is not None:
            self._budget.record_call()
        breaker, bulkhead, per_attempt = self.breaker, self.bulkhead, self._attempt
        threaded = bulkhead is not None and bulkhead.kind == "threads"
        outcome = -1
        n = 0
        previous = 0.0
        try:
            while True:
                n += 1
                permit = self._admit(breaker)
                if bulkhead is not None and not bulkhead.try_acquire():
                    try:
                        await self._queue(bulkhead, loop, deadline)
                    except BaseException:
                        if breaker is not None:
                            breaker.on_release(permit)
                        raise
                when = deadline
                if per_attempt is not None:
                    attempt_end = loop.time() + per_attempt
                    if when is None or attempt_end < when:
                        when = attempt_end
                task = _current_task() if when is not None else None
                timer = AttemptTimer(loop, when, task) if task is not None and when else None
                started = self._clock.now() if breaker is not None and breaker.timed else 0.0
                try:
                    if threaded:
                        result = await self._in_thread(bulkhead, loop, fn, args, kwargs)  # type: ignore[arg-type]
                    else:
                        result = await fn(*args, **kwargs)
                except BaseException as exc:
                    if bulkhead is not None and not threaded:
                        bulkhead.release()
                    error = exc
                    if timer is not None and isinstance(exc, asyncio.CancelledError):
                        if not timer.expired():
                            if breaker is not None:
                                breaker.on_release(permit)
                            raise
                        kind = "total" if when == deadline else "attempt"
                        error = GuardTimeoutError(self.name, kind, self._total if kind == "total" else per_attempt or 0.0)  # type: ignore[arg-type]
                        m.timeouts += 1
                        self._emit(Event("timeout", self.name, {"kind": kind, "attempt": n}))
                    elif not isinstance(exc, Exception):
                        if breaker is not None:
                            breaker.on_release(permit)
                        raise
                    if breaker is not None:
                        breaker.on_failure(permit, error, self._clock.now() - started)
                    previous = await self._before_retry(error, n, previous, loop, deadline)
                    if error is not exc:
                        if previous < 0:
                            raise error from None
                    elif previous < 0:
                        raise
                    continue
                if timer is not None:
                    timer.disarm()
                if bulkhead is not None and not threaded:
                    bulkhead.release()
                if breaker is not None:
                    breaker.on_success(permit, self._clock.now() - started)
                outcome = 1
                return result
        except BaseException as exc:
            if isinstance(exc, Exception):
                outcome = -1 if isinstance(exc, RejectedError) and n <= 1 else 0
            raise
        finally:
            m.finish(outcome, loop.time() - t0)

    def _admit(self, breaker: Breaker | None) -> int:
        if breaker is None:
            return 0
        try:
            return breaker.acquire()
        except CircuitOpenError:
            self.metrics.circuit_open += 1
            self._emit(Event("rejected", self.name, {"reason": "circuit_open"}))
            raise

    async def _queue(
        self, bulkhead: Bulkhead, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> None:
        remaining = None if deadline is None else deadline - loop.time()
        try:
            await bulkhead.acquire(remaining)
        except BulkheadFullError:
            if deadline is not None and loop.time() >= deadline:
                self.metrics.timeouts += 1
                raise GuardTimeoutError(self.name, "total", self._total or 0.0) from None
            self.metrics.bulkhead_full += 1
            self._emit(Event("rejected", self.name, {"reason": "bulkhead_full"}))
            raise

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
        future = bulkhead.pool.submit(ctx.run, fn, *args, **kwargs)
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
        wait = self._retry_wait(exc, n, previous, None if deadline is None else deadline - loop.time())
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
        if breaker is not None and breaker.state in ("open", "forced_open"):
            if breaker.retry_after() > wait:
                exc.add_note(f"policyengine: not retried, the circuit {self.name!r} is open")
                return -1.0
        budget = self._budget
        if budget is not None and not budget.try_acquire_retry():
            from ._retry import add_budget_note

            add_budget_note(exc, self.name)
            self.metrics.budget_exhausted += 1
            self._emit(Event("budget_exhausted", self.name, {"attempt": n}))
            return -1.0
        self.metrics.retries += 1
        self._emit(Event("retry", self.name, {"attempt": n, "delay": wait, "error": type(exc).__name__}))
        return wait

    # ------------------------------------------------------------- sync call
    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking `fn` in this thread through the policy (see `_sync`)."""
        from ._sync import call_sync

        return call_sync(self, fn, args, kwargs)

