"""The hedging race: one attempt, and after the hedge delay another, until one succeeds.

`race(start_attempt, hedge, loop)` is what the lifecycle awaits where it would await one
attempt. `start_attempt()` returns an awaitable of one *full* attempt (its own breaker permit,
bulkhead slot and attempt deadline, all taken and released inside it), so the race knows nothing
of the guard's internals:

- The first attempt runs inline in the caller's task: no task is created and, when no hedge is
  due, the only cost is one entry in a per-loop timer queue (like `_timeout`'s deadline queue).
- When the delay passes (a loop timer, real time) and the budget allows, an extra attempt starts
  in a task of its own; then another after the same delay, up to `max_extra`. An extra attempt
  refused with a `RejectedError` (open breaker, full bulkhead, a rate limit) stops hedging for
  this call and counts as nothing: the call goes on with the attempts it has.
- The first success wins. Every other attempt is cancelled: it sees `CancelledError`, which the
  lifecycle counts as neither success nor failure and which returns its permit and slot. When an
  extra attempt wins, the caller's task is cancelled to stop the inline attempt, and the race
  takes that cancellation back (`Task.uncancel`, as `asyncio.timeout` does): an outer
  cancellation that comes at the same moment still propagates.
- Once an attempt failed, no new extra attempt starts (retrying failures is the retry layer's
  job); the attempts in flight go on. If all fail, the *last* failure is raised (as Polly and
  Finagle return the last outcome: the newest word from the dependency), with a note naming the
  others, so the retry layer decides on it as on any attempt's error.
- Samples: the duration of every successful attempt, and the time a superseded one had run when
  it was cancelled (a lower bound of its latency, as Finagle records it: without it the slow
  tail that hedging cuts off would vanish from the estimate and the delay would creep down).

Deadlines are the lifecycle's: each attempt is bounded by the call's total deadline, so hedges
and retries share it. Losers are not awaited; their tasks are kept referenced until they end.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import RejectedError

if TYPE_CHECKING:
    from ._hedge import Hedge

__all__ = ["race"]

T = TypeVar("T")
_current_task = asyncio.current_task
_RUNNING: set[asyncio.Task[Any]] = set()  # losers still unwinding: referenced until done


class _Entry:
    """One race's next hedge time in a `_TimerQueue`."""

    __slots__ = ("done", "race", "when")

    def __init__(self, race: _Race, when: float) -> None:
        self.race = race
        self.when = when
        self.done = False


class _TimerQueue:
    """Hedge times on one loop, in the order they were armed; one loop timer serves them all.
    A time earlier than the newest one (the delay just fell) gets its own `call_at`."""

    __slots__ = ("_entries", "_handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._entries: deque[_Entry] = deque()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, race: _Race, when: float) -> _Entry:
        entries = self._entries
        while entries and entries[0].done:
            entries.popleft()
        entry = _Entry(race, when)
        if entries and when < entries[-1].when:
            self.loop.call_at(when, _fire_one, entry)
            return entry
        entries.append(entry)
        if self._handle is None:
            self._handle = self.loop.call_at(when, self._fire)
        return entry

    def _fire(self) -> None:
        self._handle = None
        entries = self._entries
        now = self.loop.time()
        while entries:
            entry = entries[0]
            if not entry.done and entry.when > now:
                self._handle = self.loop.call_at(entry.when, self._fire)
                return
            entries.popleft()
            _fire_one(entry)


def _fire_one(entry: _Entry) -> None:
    if not entry.done:
        entry.done = True
        entry.race.hedge_now()


_QUEUES: dict[asyncio.AbstractEventLoop, _TimerQueue] = {}


def _queue(loop: asyncio.AbstractEventLoop) -> _TimerQueue:
    queue = _QUEUES.get(loop)
    if queue is None:
        if len(_QUEUES) > 64:  # loops that ended (tests, asyncio.run): forget them
            for old in [x for x in _QUEUES if x.is_closed()]:
                del _QUEUES[old]
        queue = _QUEUES[loop] = _TimerQueue(loop)
    return queue


class _Race:
    """The state of one hedged attempt: the extra tasks and how the race ended."""

    __slots__ = (
        "_baseline",
        "_entry",
        "ctx",
        "delay",
        "extras",
        "failed",
        "failures",
        "hedge",
        "loop",
        "start",
        "started",
        "stopped",
        "t0",
        "task",
        "waiter",
        "winner",
    )

    def __init__(
        self,
        hedge: Hedge,
        start: Callable[[], Awaitable[Any]],
        task: asyncio.Task[Any],
        loop: asyncio.AbstractEventLoop,
        delay: float,
    ) -> None:
        self.hedge = hedge
        self.start = start
        self.task = task
        self.loop = loop
        self.delay = delay
        self._baseline = task.cancelling()
        self.ctx = contextvars.copy_context()  # extras run in the caller's context
        self.extras: dict[asyncio.Task[Any], float] = {}  # running extra -> its start time
        self.started = 0
        self.failures: list[Exception] = []
        self.failed = False  # an attempt failed: no new extra starts
        self.stopped = False  # the race is decided (or hedging was refused)
        self.winner: asyncio.Task[Any] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.t0 = loop.time()
        self._entry: _Entry | None = _queue(loop).add(self, self.t0 + delay)

    # -- timer side --------------------------------------------------------------------------

    def hedge_now(self) -> None:
        self._entry = None
        if self.stopped or self.failed:
            return
        attempt = self.started + 2
        if not self.hedge.try_extra(attempt, self.delay):
            return
        self.started += 1
        try:
            coro = self.ctx.run(self.start)
        except RejectedError:
            self.hedge.refused()
            self._disarm()
            return
        except Exception as exc:
            self.failures.append(exc)
            self.failed = True
            return
        extra = self.loop.create_task(_awaited(coro), context=self.ctx)
        self.extras[extra] = self.loop.time()
        _RUNNING.add(extra)
        extra.add_done_callback(self._extra_done)
        if self.started < self.hedge.max_extra:
            self._entry = _queue(self.loop).add(self, self.loop.time() + self.delay)

    def _extra_done(self, extra: asyncio.Task[Any]) -> None:
        _RUNNING.discard(extra)
        started = self.extras.pop(extra, None)
        if extra.cancelled():
            return
        exc = extra.exception()
        if exc is None:
            if started is not None and not self.stopped:
                self.hedge.sample(self.loop.time() - started)
                self._win(extra)
            return
        if isinstance(exc, RejectedError):
            self.hedge.refused()
            self._disarm()  # the breaker or bulkhead says no: no more extras for this call
        elif isinstance(exc, Exception):
            self.failures.append(exc)
            self.failed = True
            self._disarm()
        self._wake_if_all_done()

    def _win(self, extra: asyncio.Task[Any]) -> None:
        self.winner = extra
        self.stopped = True
        self._disarm()
        self.hedge.won(self.started + 1)
        self._cancel_extras()
        if self.waiter is not None:  # the inline attempt already failed: it waits for us
            if not self.waiter.done():
                self.waiter.set_result(None)
        else:
            self.task.cancel()  # stop the inline attempt; `race` takes the cancel back

    def _wake_if_all_done(self) -> None:
        if self.waiter is not None and not self.extras and not self.waiter.done():
            self.waiter.set_result(None)

    # -- caller side -------------------------------------------------------------------------

    def _disarm(self) -> None:
        entry = self._entry
        if entry is not None:
            entry.done = True
            self._entry = None

    def _cancel_extras(self, keep: asyncio.Task[Any] | None = None) -> None:
        now = self.loop.time()
        for extra, started in list(self.extras.items()):
            if extra is not keep:
                self.hedge.sample(now - started)  # superseded: a lower bound of its latency
                del self.extras[extra]
                extra.cancel()

    def primary_won(self) -> None:
        self.stopped = True
        self._disarm()
        if self.extras:
            self._cancel_extras()

    def took_back(self) -> bool:
        """After a CancelledError in the inline attempt: True if it was the race's own cancel
        (an extra won) and nothing else cancelled the caller meanwhile."""
        return self.winner is not None and self.task.uncancel() <= self._baseline

    async def after_failure(self, exc: Exception) -> Any:
        """The inline attempt failed: wait for the extras in flight, else raise."""
        self.failures.append(exc)
        self.failed = True
        self._disarm()
        if self.extras:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            except BaseException:
                self.stopped = True
                self._cancel_extras()
                raise
        if self.winner is not None:
            return self.winner.result()
        self.stopped = True
        last = self.failures[-1]
        if len(self.failures) > 1:
            others = ", ".join(type(e).__name__ for e in self.failures[:-1])
            last.add_note(f"policyengine: hedged; the other attempts failed too ({others})")
        raise last


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def race(start_attempt: Callable[[], Awaitable[T]], hedge: Hedge, loop: Any = None) -> T:
    """One attempt, hedged per `hedge` (see the module docstring); its result or its error."""
    if loop is None:
        loop = asyncio.get_running_loop()
    delay = hedge.delay
    hedge.record_call()
    t0 = loop.time()
    if delay is None:  # warming up: no percentile yet
        result = await start_attempt()
        hedge.sample(loop.time() - t0)
        return result
    task = _current_task(loop)
    assert task is not None, "race() runs inside a task"
    state = _Race(hedge, start_attempt, task, loop, delay)
    try:
        result = await start_attempt()
    except asyncio.CancelledError:
        if state.took_back():
            hedge.sample(loop.time() - t0)  # superseded
            winner = state.winner
            assert winner is not None
            return winner.result()  # type: ignore[no-any-return]
        state.stopped = True
        state._disarm()
        state._cancel_extras()
        raise
    except Exception as exc:
        return await state.after_failure(exc)  # type: ignore[no-any-return]
    except BaseException:
        state.primary_won()  # KeyboardInterrupt, SystemExit: stop the extras and go
        raise
    if state.winner is not None:  # an extra won while this attempt finished anyway
        state.task.uncancel()
        return result
    state.primary_won()
    hedge.sample(loop.time() - t0)
    return result
