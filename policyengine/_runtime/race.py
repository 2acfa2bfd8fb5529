"""The hedging race: one attempt, and after the hedge delay another, until one succeeds.

`race(start_attempt, hedge, loop)` is what the lifecycle awaits where it would await one
attempt. `start_attempt()` returns an awaitable of one *full* attempt (its own breaker permit,
bulkhead slot and attempt deadline, all taken and released inside it), so the race knows nothing
of the guard's internals:

- The first attempt runs inline in the caller's task: no task is created and, when no hedge is
  due, the only cost is one small object in the hedge's timer queue (one loop timer serves all
  of a hedge's calls on a loop, like `_runtime.timeout`'s deadline queue); the state of a race with
  extra attempts is built only when the first extra starts.
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

from ..exceptions import RejectedError

if TYPE_CHECKING:
    from .._patterns.hedge import Hedge

__all__ = ["TimerQueue", "arm", "first_failed", "first_succeeded", "race"]

T = TypeVar("T")
_current_task = asyncio.current_task
_copy_context = contextvars.copy_context
_RUNNING: set[asyncio.Future[Any]] = set()  # losers still unwinding: referenced until done


class TimerQueue:
    """A hedge's next-hedge times on one loop, in the order they were armed; one loop timer
    serves them all. The delay of one hedge changes seldom (a percentile refresh), so times
    arrive nearly sorted; one earlier than the newest gets a `call_at` of its own."""

    __slots__ = ("_compact_at", "_entries", "_handle", "_when", "loop")

    COMPACT_AT = 4096

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._entries: deque[_Race] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._compact_at = self.COMPACT_AT

    def add(self, race: _Race) -> None:
        entries = self._entries
        while entries and entries[0].done:  # rounds already decided: most of them, at once
            entries.popleft()
        if len(entries) > self._compact_at:  # a long delay behind a round still running
            self._compact()
            entries = self._entries
        when = race.when
        if entries and when < entries[-1].when:
            self.loop.call_at(when, race.fire)
            return
        entries.append(race)
        handle = self._handle
        if handle is None or when < self._when:  # the delay fell below the armed time
            if handle is not None:
                handle.cancel()
            self._when = when
            self._handle = self.loop.call_at(when, self._fire)

    def _compact(self) -> None:
        """Drop decided rounds from the middle too (amortised O(1): the next compaction waits
        until the queue doubled), so a long delay keeps only rounds still running."""
        self._entries = deque(r for r in self._entries if not r.done)
        self._compact_at = max(self.COMPACT_AT, 2 * len(self._entries))

    def _fire(self) -> None:
        self._handle = None
        entries = self._entries
        now = self.loop.time()
        while entries:
            race = entries[0]
            if not race.done and race.when > now:
                self._when = race.when
                self._handle = self.loop.call_at(race.when, self._fire)
                return
            entries.popleft()
            race.fire()


class _Race:
    """One hedged round. Built on every call, so the fields a round without extras needs are
    set here and the rest (`_extras`) only when an extra attempt starts."""

    __slots__ = (
        "args",
        "baseline",
        "ctx",
        "delay",
        "done",
        "extra",
        "hedge",
        "start",
        "task",
        "when",
    )

    def __init__(
        self,
        hedge: Hedge,
        start: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        task: asyncio.Task[Any],
        delay: float,
        when: float,
    ) -> None:
        self.hedge = hedge
        self.start = start  # an extra attempt is `start(*args)` (no closure built per round)
        self.args = args
        self.task = task
        self.delay = delay
        self.when = when
        self.done = False  # the round is decided, or no extra may start any more
        self.baseline = task.cancelling()
        self.ctx = _copy_context()  # extras run in the caller's context
        self.extra: _Extras | None = None

    def fire(self) -> None:
        """The delay passed (the timer queue calls this once per arming)."""
        if self.done:
            return
        extra = self.extra
        if extra is None:
            extra = self.extra = _Extras(self)
        extra.start_one()


class _Extras:
    """The extra attempts of one round and how the round ended."""

    __slots__ = (
        "cancelled",
        "failed",
        "failures",
        "loop",
        "race",
        "running",
        "started",
        "waiter",
        "winner",
    )

    def __init__(self, race: _Race) -> None:
        self.race = race
        self.loop = race.task.get_loop()
        self.running: dict[asyncio.Future[Any], float] = {}  # extra -> its start time
        self.started = 0
        self.failures: list[Exception] = []
        self.failed = False  # an attempt failed: no new extra starts
        self.winner: asyncio.Future[Any] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.cancelled = False  # we cancelled the caller's task (an extra won): take it back

    def start_one(self) -> None:
        race = self.race
        hedge = race.hedge
        if self.failed or not hedge.try_extra(self.started + 2, race.delay, self.loop.time()):
            return
        self.started += 1
        try:
            coro = race.ctx.run(race.start, *race.args)
        except RejectedError:
            hedge.refused()
            self.failed = True
            return
        except Exception as exc:
            self.failures.append(exc)
            self.failed = True
            return
        if asyncio.iscoroutine(coro):
            extra: asyncio.Future[Any] = self.loop.create_task(coro, context=race.ctx)
        else:
            extra = asyncio.ensure_future(coro, loop=self.loop)
        self.running[extra] = self.loop.time()
        _RUNNING.add(extra)
        extra.add_done_callback(self.extra_done)
        if self.started < hedge.max_extra:
            race.when = self.loop.time() + race.delay
            hedge.timers(self.loop).add(race)

    def extra_done(self, extra: asyncio.Future[Any]) -> None:
        _RUNNING.discard(extra)
        started = self.running.pop(extra, None)
        if extra.cancelled():
            self.wake_if_all_done()
            return
        exc = extra.exception()
        race = self.race
        if exc is None:
            if started is not None and self.winner is None and not race.done:
                race.hedge.sample(self.loop.time() - started)
                self.win(extra)
            else:
                self.wake_if_all_done()
            return
        if isinstance(exc, RejectedError):
            race.hedge.refused()  # the breaker or bulkhead says no: no more extras this round
            self.failed = True
        elif isinstance(exc, Exception):
            self.failures.append(exc)
            self.failed = True
        self.wake_if_all_done()

    def win(self, extra: asyncio.Future[Any]) -> None:
        race = self.race
        self.winner = extra
        race.done = True
        race.hedge.won(self.started + 1)
        self.cancel_running()
        if self.waiter is not None:  # the inline attempt already failed: it waits for us
            if not self.waiter.done():
                self.waiter.set_result(None)
        else:
            self.cancelled = True
            race.task.cancel()  # stop the inline attempt; `race` takes the cancel back

    def wake_if_all_done(self) -> None:
        waiter = self.waiter
        if waiter is not None and not self.running and not waiter.done():
            waiter.set_result(None)

    def cancel_running(self) -> None:
        now = self.loop.time()
        hedge = self.race.hedge
        for extra, started in list(self.running.items()):
            hedge.sample(now - started)  # superseded: a lower bound of its latency
            del self.running[extra]
            extra.cancel()

    async def after_failure(self, exc: Exception) -> Any:
        """The inline attempt failed: wait for the extras in flight, else raise."""
        self.failures.append(exc)
        self.failed = True
        if self.running and self.winner is None:
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            except BaseException:
                self.race.done = True
                self.cancel_running()
                raise
        self.race.done = True
        if self.winner is not None:
            if self.cancelled:  # the inline attempt turned our cancel into an error
                self.race.task.uncancel()
            return self.winner.result()
        last = self.failures[-1]
        if len(self.failures) > 1:
            others = ", ".join(type(e).__name__ for e in self.failures[:-1])
            last.add_note(f"policyengine: hedged; the other attempts failed too ({others})")
        raise last


async def _first_failed(race: _Race, exc: BaseException, t0: float) -> Any:
    """The inline attempt raised `exc`: an extra's win (our own cancel), an outer cancel, or a
    failure the extras in flight may still make good."""
    extra = race.extra
    if isinstance(exc, Exception) and extra is not None:
        return await extra.after_failure(exc)  # no new extra; those in flight may still win
    race.done = True
    if extra is None:
        raise exc
    won = isinstance(exc, asyncio.CancelledError) and extra.cancelled
    if won and race.task.uncancel() <= race.baseline:  # our cancel, and only ours
        race.hedge.sample(race.task.get_loop().time() - t0)  # superseded
        return extra.winner.result()  # type: ignore[union-attr]
    extra.cancel_running()  # an outer cancel, KeyboardInterrupt, SystemExit: stop them, go
    raise exc


def arm(
    hedge: Hedge,
    start_attempt: Callable[..., Awaitable[Any]],
    loop: Any,
    t0: float,
    args: tuple[Any, ...] = (),
) -> _Race | None:
    """A round begins at `t0` (loop time): counted in the budget, and its first hedge time
    armed; an extra attempt will be `start_attempt(*args)`. None while a percentile delay is
    warming up (the round runs unhedged). Every call pays this: it is written for speed."""
    budget = hedge._budget  # `hedge.record_call(t0)`, inlined
    if int(t0) != budget._head:
        budget._roll(int(t0))
    budget.rounds += 1
    delay = hedge.delay
    if delay is None:
        return None
    task = _current_task(loop)
    assert task is not None, "a hedged attempt runs inside a task"
    state = _Race(hedge, start_attempt, args, task, delay, t0 + delay)
    timers = hedge._timers
    if timers is None or timers.loop is not loop:
        timers = hedge.timers(loop)
    timers.add(state)
    return state


def first_succeeded(state: _Race | None, hedge: Hedge, loop: Any, t0: float) -> None:
    """The inline attempt returned: the round is decided; extras still running are cancelled."""
    if state is not None:
        state.done = True
        extra = state.extra
        if extra is not None:
            if extra.cancelled:  # an extra won as this attempt finished anyway
                state.task.uncancel()
            elif extra.running:
                extra.cancel_running()
    if hedge.sampling:
        hedge.sample(loop.time() - t0)


async def first_failed(state: _Race | None, exc: BaseException, t0: float) -> Any:
    """The inline attempt raised `exc`: the round's result (an extra's) or its error."""
    if state is None:
        raise exc
    return await _first_failed(state, exc, t0)


async def race(start_attempt: Callable[[], Awaitable[T]], hedge: Hedge, loop: Any = None) -> T:
    """One attempt, hedged per `hedge` (see the module docstring); its result or its error."""
    if loop is None:
        loop = asyncio.get_running_loop()
    t0 = loop.time()
    state = arm(hedge, start_attempt, loop, t0)
    try:
        result = await start_attempt()
    except BaseException as exc:
        return await first_failed(state, exc, t0)  # type: ignore[no-any-return]
    first_succeeded(state, hedge, loop, t0)
    return result
