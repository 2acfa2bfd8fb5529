"""Hedged requests, the runtime of `[policies.X.hedge]`: when an extra attempt may start.

The race itself (start, wait, cancel the losers) is `_race.race`; this object holds what outlives
one call: the latency estimator, the extra-load budget and the counters.

- Delay: a fixed duration, or the configured percentile of recent successful attempts
  (`_quantiles`), never below `min_delay`. The percentile is recomputed every 64 samples (and
  when the warm-up ends), not per call. Until `min_samples(q)` attempts succeeded the delay is
  None and calls run unhedged (The Tail at Scale; Finagle starts with no backups too).
- Budget (Finagle's `BackupRequestFilter` over a `RetryBudget`): over a sliding 10 s window,
  extra attempts <= max_extra_load x raced attempts + 1 (`_budget.RetryBudget` with ratio
  `max_extra_load` and a floor of 0.1/s x 10 s). A hedge the budget denies is not started.
- Counters: `hedges` (extra attempts started, including one the breaker or the bulkhead then
  refused: the budget was spent on it) and `hedge_wins` (rounds won by an extra attempt); kept
  here and, given `count` (the guard's `GuardMetrics.count`), in the guard's metrics.

A reload keeps the object (`retune`): the estimator and the budget's window carry over.
Events (only built when a listener other than the log is installed): ``hedge`` (an extra attempt
started: ``attempt``, ``delay``) and ``hedge_won`` (``attempt``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._budget import RetryBudget
from ._events import Event
from ._models import BudgetOptions
from ._quantiles import LatencyQuantiles, min_samples

if TYPE_CHECKING:
    from ._clock import Clock
    from ._events import Listeners
    from ._hedge_models import HedgeOptions
    from ._metrics import Counter

__all__ = ["REFRESH_EVERY", "Hedge"]

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
        "_until_refresh",
        "delay",
        "estimator",
        "hedge_wins",
        "hedges",
        "max_extra",
        "min_delay",
        "name",
        "options",
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
        self._budget: RetryBudget
        self.options = options
        self._apply(options)

    def _apply(self, options: HedgeOptions) -> None:
        self.options = options
        self.max_extra = options.max_extra
        self.min_delay = options.min_delay
        self._quantile = options.quantile
        budget = BudgetOptions(ratio=options.max_extra_load, min_per_second=0.1)
        self._budget = RetryBudget(budget, self._clock)
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

    # -- the budget and counters -----------------------------------------------------------

    def record_call(self) -> None:
        """A raced attempt began (the budget's denominator)."""
        self._budget.record_call()

    def try_extra(self, attempt: int, delay: float) -> bool:
        """Spend one extra attempt if the budget allows; counted and told to listeners."""
        if not self._budget.try_acquire_retry():
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
        emit = self._emit
        if emit is not None and emit.hot:
            emit(Event("hedge_won", self.name, {"attempt": attempt}))

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
