"""Guard: one compiled policy, the runtime that a guarded call runs through.

Layer order, outermost first: fallback, total timeout, retry (with budget), breaker, the
pluggable layers (`_runtime.layer`), bulkhead, attempt timeout, the function. Everything a call
needs was built by `_registry.compile`; the call itself reads a few attributes, bumps counters, and
arms no timer of its own (attempts share a deadline queue per loop, see `_runtime.timeout`).

Each attempt goes through one `_runtime.attempt.Attempt`; `_runtime.driver` is the async driver
(`call`), `_runtime.sync` the blocking one, `_runtime.scope` the `async with` one and
`_runtime.observe` observe mode's. This module is the guard those drivers read.

`asyncio.CancelledError` (and every other BaseException that is not an Exception) is never
retried, never counted as a success or failure, and returns every permit it holds.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .._config.matchers import compile_matchers
from .._config.models import resolve_matchers
from .._patterns.breaker import _OPEN
from .._telemetry.events import Event, Rejected, TimedOut
from .._telemetry.snapshot import GuardSnapshot, guard_snapshot
from ..exceptions import CircuitOpenError, GuardTimeoutError
from .driver import passthrough as _passthrough
from .driver import run as _run
from .driver import with_fallback as _with_fallback
from .hedged import hedged_call as _hedged_call
from .observe import observe_call as _observe_call
from .sync import call_sync as _call_sync
from .timeout import Deadline, DeadlineQueue

if TYPE_CHECKING:
    from .._config.models import Policy
    from .._patterns.breaker import Breaker
    from .._patterns.bulkhead import Bulkhead
    from .._patterns.fallback import Fallback
    from .._patterns.hedge import Hedge
    from .._patterns.retry import RetryBudget, RetryStrategy
    from .._telemetry.events import Listeners
    from .._telemetry.metrics import GuardMetrics, RejectionReason
    from .clock import Clock
    from .layer import AttemptLayer

__all__ = ["Guard"]

T = TypeVar("T")
SyncEntry = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
CallEntry = Callable[
    [Callable[..., Any], tuple[Any, ...], dict[str, Any]], Coroutine[Any, Any, Any]
]
_get_loop = asyncio.get_running_loop
_current_task = asyncio.current_task


_OPEN_REJECTED = Rejected("circuit_open")


async def _open_error(name: str, retry_after: float) -> Any:
    # The error is built inside the coroutine: raising one built by the caller costs ~1.8x more
    raise CircuitOpenError(name, retry_after, "open")


def _always(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


def _never(exc: BaseException) -> bool:
    return False


class Guard:
    """The compiled runtime of one policy version. Handles (`guard(name)`) point at the newest."""

    __slots__ = (
        "_drive",
        "_first",
        "_queue",
        "_wait_queue",
        "attempt_timeout",
        "bounded",
        "bounded_wait",
        "breaker",
        "budget",
        "bulkhead",
        "clock",
        "clocked",
        "door",
        "emit",
        "fallback",
        "hedge",
        "ignores",
        "layers",
        "max_attempts",
        "metrics",
        "mode",
        "name",
        "policy",
        "retry",
        "retryable",
        "sync_entry",
        "threaded",
        "timed",
        "total",
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
        layers: tuple[AttemptLayer, ...] = (),
        hedge: Hedge | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.mode = policy.mode
        self.clock = clock
        self.emit = emit
        self.metrics = metrics
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.retry = retry
        self.budget = budget
        self.fallback = fallback
        self.layers = layers
        self.hedge = hedge
        self.max_attempts = retry.max_attempts if retry is not None else 1
        self.retryable = retry.should_retry if retry is not None else _always
        ignore = policy.breaker.ignore if policy.breaker is not None else None
        # the breaker's `ignore` rule, for metrics: an ignored error is neither outcome
        self.ignores = compile_matchers(resolve_matchers(ignore)) if ignore else _never
        timeout = policy.timeout
        self.total = timeout.total if timeout is not None else None
        self.attempt_timeout = timeout.attempt if timeout is not None else None
        self.threaded = bulkhead is not None and bulkhead.kind == "threads"
        # slow-call rules need durations; a call started without one is never slow, even if
        # a reload adds the rule while it runs (the breaker itself is reconfigured in place)
        self.timed = policy.breaker is not None and policy.breaker.slow_call_duration is not None
        # an attempt's duration is needed by slow-call rules and by layers, else not measured
        self.clocked = self.timed or bool(layers)
        # call_sync cannot stop an attempt: with a timeout it measures it, to count overruns
        self.bounded = self.total is not None or self.attempt_timeout is not None
        # a bulkhead wait bounded by max_wait or the total deadline needs a timer
        self.bounded_wait = bulkhead is not None and (
            (policy.bulkhead is not None and policy.bulkhead.max_wait is not None)
            or self.total is not None
        )
        self._queue: DeadlineQueue | None = None
        self._wait_queue: DeadlineQueue | None = None
        # The breaker `call` itself tests (see `refusal`): only where an open circuit simply
        # raises (enforce mode, no fallback to serve it)
        plain = self.mode == "enforce" and fallback is None
        self.door: Breaker | None = breaker if plain else None
        # What `call_sync` runs before its own path: a ramp or drill sets it (`_rollout.enforce`,
        # `_rollout.drill`), as they set `_first` for `call`; None: straight to
        # `_runtime.sync.plain_sync`
        self.sync_entry: SyncEntry | None = None
        # What `call` runs, chosen once: no mode, fallback or hedge test per call.
        self._drive: CallEntry = functools.partial(_run if hedge is None else _hedged_call, self)
        self._first: CallEntry
        if self.mode == "disabled":
            self._first = functools.partial(_passthrough, self)
        elif self.mode == "observe":
            self._first = functools.partial(_observe_call, self)
        elif fallback is not None:
            self._first = functools.partial(_with_fallback, self)
        else:
            self._first = self._drive

    # ----------------------------------------------------------------- state
    @property
    def state(self) -> str:
        if self.mode == "disabled":
            return "disabled"
        return self.breaker.state if self.breaker is not None else "closed"

    def snapshot(self) -> GuardSnapshot:
        """Metrics, bulkhead use and state, read together (`GuardHandle.metrics()`)."""
        return guard_snapshot(self)

    # --------------------------------------------------- counting (off the success path)
    def count_rejection(self, reason: RejectionReason) -> None:
        """A rejection after the call was counted (a retry refused, a full bulkhead...)."""
        self.metrics.count(reason)
        if self.emit.hot:
            self.emit(Event.of(self.name, Rejected(reason)))

    def refuse(self) -> None:
        """A call refused at the door: a call, ignored (neither outcome), circuit_open."""
        self.metrics.refuse()
        if self.emit.hot:
            self.emit(Event.of(self.name, _OPEN_REJECTED))

    def timed_out(self, total: bool, n: int) -> GuardTimeoutError:
        """Attempt `n` ran past the total deadline (`total`) or its own: counted, announced."""
        kind = "total" if total else "attempt"
        seconds = (self.total if total else self.attempt_timeout) or 0.0
        self.metrics.count("timeouts")
        self.emit(Event.of(self.name, TimedOut(kind, n)))
        return GuardTimeoutError(self.name, kind, seconds)

    def deadline(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], when: float
    ) -> Deadline:
        queue = self._queue
        if queue is None or queue.loop is not loop:
            queue = self._queue = DeadlineQueue(loop)
        return queue.add(task, when)

    def wait_deadline(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], when: float
    ) -> Deadline:
        """Bulkhead waits get a queue of their own: their lengths differ from attempts'."""
        queue = self._wait_queue
        if queue is None or queue.loop is not loop:
            queue = self._wait_queue = DeadlineQueue(loop)
        return queue.add(task, when)

    # ------------------------------------------------------------ async call
    def call(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, T]:
        """`await guard.call(fn, ...)`: run `fn(*args, **kwargs)` through every layer."""
        door = self.door
        if door is not None and door._state == _OPEN and not door.observe:
            now = door._now()  # `refusal()`, inlined: an outage's hot path
            until = door._open_until
            if now < until:
                self.metrics.refuse()
                if self.emit.hot:
                    self.emit(Event.of(self.name, _OPEN_REJECTED))
                return _open_error(self.name, until - now)
        return self._first(fn, args, kwargs)

    def refusal(self, breaker: Breaker) -> Coroutine[Any, Any, Any] | None:
        """An open circuit's rejection, decided before any coroutine of ours runs: a minimal
        coroutine that raises the (counted) CircuitOpenError, or None to run the call.

        Why here: this is an outage's hot path, paid by every caller while the dependency is
        down. Deciding it in `call()` skips the guard's own coroutine frames (the caller still
        gets a coroutine, so `create_task(guard.call(...))` and `gather` keep working); what is
        left costs little more than any coroutine that only raises. Half-open and forced states
        go the long way (`Breaker.acquire` under its lock)."""
        if breaker._state != _OPEN or breaker.observe:
            return None
        now = breaker._now()
        until = breaker._open_until
        if now >= until:
            return None
        self.metrics.refuse()
        if self.emit.hot:
            self.emit(Event.of(self.name, _OPEN_REJECTED))
        return _open_error(self.name, until - now)

    # ------------------------------------------------------------- sync call
    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking `fn` in this thread through the policy (see `_runtime.sync`)."""
        return _call_sync(self, fn, args, kwargs)
