"""Hedged requests, the runtime of `[policies.X.hedge]`: when an extra attempt may start.

The race itself (start, wait, cancel the losers) is `_runtime.race.race`; this object holds what
outlives one call: the latency estimator, the extra-load budget and the counters.

- Delay: a fixed duration, or the configured percentile of recent successful attempts
  (`_patterns.quantiles`), never below `min_delay`. The percentile is recomputed every 64 samples
  (and when the warm-up ends), not per call. Until `min_samples(q)` attempts succeeded the delay is
  None and calls run unhedged (The Tail at Scale; Finagle starts with no backups too).
- Budget (Finagle's `BackupRequestFilter` over a `RetryBudget`): over every trailing 10 s
  window, extra attempts <= max_extra_load x rounds + 1 (a round: a call's attempt, or a retry),
  on loop time (`ExtraBudget`). A hedge the budget denies is not started.
- Counters: `hedges` (extra attempts started, including one the breaker or the bulkhead then
  refused: the budget was spent on it) and `hedge_wins` (rounds won by an extra attempt); kept
  here and, given `count` (the guard's `GuardMetrics.count`), in the guard's metrics.

A reload keeps the object (`retune`): the estimator and the budget's window carry over.
Events (only built when a listener other than the log is installed): ``hedge``, an extra attempt
started (``attempt``: 2 for the first extra; ``delay``: the hedge delay, seconds); a win is
counted in ``hedge_wins``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._runtime.race import TimerQueue
from .._telemetry.events import Event
from .quantiles import LatencyQuantiles, min_samples

if TYPE_CHECKING:
    from .._config.hedge_models import HedgeOptions
    from .._runtime.clock import Clock
    from .._telemetry.events import Listeners
    from .._telemetry.metrics import Counter

__all__ = ["REFRESH_EVERY", "ExtraBudget", "Hedge"]

REFRESH_EVERY = 64
"""Samples between two recomputations of a percentile delay."""


class Hedge:
    """One guard's hedging state; thread-safe, synchronous, cheap to ask."""

    __slots__ = (
        "_budget",
        "_clock",
        "_count",
        "_emit",
        "_lock",
        "_quantile",
        "_timers",
        "_until_refresh",
        "delay",
        "estimator",
        "hedge_wins",
        "hedges",
        "max_extra",
        "min_delay",
        "name",
        "options",
        "sampling",
    )

    def __init__(
        self,
        name: str,
        options: HedgeOptions,
        clock: Clock,
        emit: Listeners | None = None,
        estimator: LatencyQuantiles | None = None,
        count: Callable[[Counter], None] | None = None,
    ) -> None:
        self.name = name
        self._count = count
        self._clock = clock
        self._emit = emit
        self._lock = threading.Lock()
        self.estimator = estimator if estimator is not None else LatencyQuantiles()
        self.hedges = 0
        self.hedge_wins = 0
        self._timers: TimerQueue | None = None
        self._budget: ExtraBudget
        self.options = options
        self._apply(options)

    def _apply(self, options: HedgeOptions) -> None:
        self.options = options
        self.max_extra = options.max_extra
        self.min_delay = options.min_delay
        self._quantile = options.quantile
        self.sampling = self._quantile is not None  # a fixed delay needs no latency samples
        self._budget = ExtraBudget(options.max_extra_load)
        self._until_refresh = 0
        self.delay: float | None = None
        if self._quantile is None:
            assert not isinstance(options.delay, str)
            self.delay = max(options.delay, options.min_delay)
        else:
            self._refresh()

    def retune(self, options: HedgeOptions) -> None:
        """A reload changed the section: new settings, same estimator (and, when the load
        share is unchanged, the same budget window)."""
        if options == self.options:
            return
        budget = self._budget
        same_load = options.max_extra_load == self.options.max_extra_load
        self._apply(options)
        if same_load:
            self._budget = budget

    # -- the estimator ---------------------------------------------------------------------

    def sample(self, seconds: float) -> None:
        """A successful (or superseded) attempt took `seconds`: feed the estimator."""
        self.estimator.add(seconds)
        if self._quantile is not None:
            self._until_refresh -= 1
            if self._until_refresh <= 0:
                self._refresh()

    def _refresh(self) -> None:
        q = self._quantile
        assert q is not None
        estimate = self.estimator.quantile(q)
        if estimate is None:
            self._until_refresh = min_samples(q) - self.estimator.seen
            self.delay = None
        else:
            self._until_refresh = REFRESH_EVERY
            self.delay = max(estimate, self.min_delay)

    def timers(self, loop: asyncio.AbstractEventLoop) -> TimerQueue:
        """This hedge's timer queue on `loop` (one loop at a time, as a guard's deadlines)."""
        timers = self._timers
        if timers is None or timers.loop is not loop:
            timers = self._timers = TimerQueue(loop)
        return timers

    # -- the budget and counters -----------------------------------------------------------

    def record_call(self, now: float) -> None:
        """A raced attempt began at `now` (loop time): the budget's denominator."""
        self._budget.record_call(now)

    def try_extra(self, attempt: int, delay: float, now: float) -> bool:
        """Spend one extra attempt if the budget allows; counted and told to listeners."""
        if not self._budget.try_extra(now):
            return False
        with self._lock:
            self.hedges += 1
        if self._count is not None:
            self._count("hedges")
        emit = self._emit
        if emit is not None and emit.hot:
            emit(Event("hedge", self.name, {"attempt": attempt, "delay": delay}))
        return True

    def refused(self) -> None:
        """An extra attempt was refused by the breaker or the bulkhead: it never ran (still
        counted in `hedges`: the budget was spent)."""

    def won(self, attempt: int) -> None:
        with self._lock:
            self.hedge_wins += 1
        if self._count is not None:
            self._count("hedge_wins")

    def snapshot(self) -> dict[str, int]:
        """The metrics: ``hedges`` and ``hedge_wins``."""
        with self._lock:
            return {"hedges": self.hedges, "hedge_wins": self.hedge_wins}

    def budget_window(self) -> dict[str, float]:
        """``calls``, ``retries`` (extra attempts) and ``allowed`` in the current 10 s window."""
        return self._budget.snapshot()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._budget._after_fork()
        self.estimator._after_fork()


class ExtraBudget:
    """Extra attempts <= ratio x rounds + 1 over every trailing 10 s window, on loop time.

    Why not `_patterns.budget.RetryBudget` as it is: it takes a lock and reads the clock on every
    call, which is most of what a hedge section costs a call that does not hedge. Here a round costs
    an unlocked increment and one integer comparison with the time the race read anyway; the lock
    is taken once per second (a new bucket) and for each extra attempt asked for.

    One-second buckets. Each bucket keeps the round count seen when it began (the first round
    or request in it) and its extra attempts. Asked at time t in bucket i, rounds in (t - 10, t]
    are at least ``rounds - first[j]`` for the earliest bucket j >= i - 9 that began (later
    snapshots count fewer: the safe side), and extra attempts at most those of buckets
    i - 10 .. i (11 buckets: at least 10 s back). So a grant never lets the extras of any
    trailing 10 s exceed ``ratio x rounds + 1``. An increment lost to a race between threads
    undercounts rounds: the safe side again.
    """

    __slots__ = ("_extras", "_first", "_head", "_ids", "_lock", "ratio", "rounds")

    SLOTS = 11

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.rounds = 0
        self._lock = threading.Lock()
        self._head = -1
        self._ids = [-1] * self.SLOTS
        self._first = [0] * self.SLOTS
        self._extras = [0] * self.SLOTS

    def record_call(self, now: float) -> None:
        if int(now) != self._head:
            self._roll(int(now))
        self.rounds += 1

    def _roll(self, index: int) -> None:
        with self._lock:
            if index <= self._head:
                return
            slots = self.SLOTS
            for b in range(max(self._head + 1, index - slots + 1), index + 1):
                slot = b % slots
                self._ids[slot] = b
                self._first[slot] = -1  # no round seen in this second
                self._extras[slot] = 0
            self._first[index % slots] = self.rounds
            self._head = index

    def try_extra(self, now: float) -> bool:
        index = int(now)
        if index != self._head:
            self._roll(index)
        slots = self.SLOTS
        with self._lock:
            ids, first, extras = self._ids, self._first, self._extras
            rounds = 0
            for b in range(index - 9, index + 1):
                slot = b % slots
                if ids[slot] == b and first[slot] >= 0:
                    rounds = self.rounds - first[slot]
                    break
            spent = sum(
                extras[b % slots] for b in range(index - 10, index + 1) if ids[b % slots] == b
            )
            if spent + 1 > self.ratio * rounds + 1 + 1e-9:
                return False
            extras[index % slots] += 1
            return True

    def snapshot(self) -> dict[str, float]:
        """``rounds`` since the window's earliest bucket, ``extras`` in the window."""
        with self._lock:
            index = self._head
            ids, first, extras = self._ids, self._first, self._extras
            slots = self.SLOTS
            rounds = next(
                (
                    self.rounds - first[b % slots]
                    for b in range(index - 9, index + 1)
                    if ids[b % slots] == b and first[b % slots] >= 0
                ),
                0,
            )
            spent = sum(
                extras[b % slots] for b in range(index - 10, index + 1) if ids[b % slots] == b
            )
        return {"calls": float(rounds), "retries": float(spent), "allowed": self.ratio * rounds + 1}

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
