"""Where a breaker's closed-state outcomes go: the outcome store half of the breaker.

A `Breaker` (see `_patterns.breaker`) is a state machine plus one outcome store:

- `LocalStore`: this process counts (`LocalCounts`: the run of consecutive failures and the
  rate window) and judges the trip rules itself. Its probe permits need nothing more.
- `RedisStore` (`_shared._store`): the outcomes are batched for Redis, where the fleet's counts
  are judged; probe permits need a lease from Redis; the local counts are kept too, to trip at
  once when this process alone already crosses a rule, and as the fallback when Redis is away.

The breaker calls the `OutcomeStore` hooks at fixed points, under its lock unless a hook says
otherwise; a store never takes another lock of its own around them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .._config.models import BreakerOptions
from .windows import CountWindow, TimeWindow, Window

if TYPE_CHECKING:
    from .breaker import State

__all__ = ["DECIDE_AGAIN", "LocalCounts", "LocalStore", "OutcomeStore"]

WindowShape = tuple[str, float] | None
DECIDE_AGAIN = -1.0  # `admit_probe`: the store failed, the local fallback decides


class LocalCounts:
    """This process's counts for the trip rules, and the rules themselves (under the lock)."""

    __slots__ = (
        "_failure_rate",
        "_min_calls",
        "_now",
        "_trip_after",
        "consecutive",
        "shape",
        "slow_rate",
        "window",
    )

    def __init__(self, options: BreakerOptions, now: Callable[[], float]) -> None:
        self._now = now
        self.consecutive = 0
        self.shape: WindowShape = None
        self.window: Window | None = None
        self.configure(options)

    def configure(self, options: BreakerOptions) -> bool:
        """Take new rules; True if the window was rebuilt (its shape changed)."""
        trip_after = options.trip_after
        self._trip_after = sys.maxsize if trip_after is None else trip_after
        self._failure_rate = options.failure_rate
        self.slow_rate = options.slow_call_rate
        self._min_calls = options.minimum_calls
        shape: WindowShape = None
        if options.failure_rate is not None or options.slow_call_rate is not None:
            if options.window == "count":
                shape = ("count", options.window_size)
            else:
                shape = ("time", options.window_duration)
        if shape == self.shape:
            return False
        self.shape = shape
        self.window = self._build_window()
        return True

    def _build_window(self) -> Window | None:
        shape = self.shape
        if shape is None:
            return None
        if shape[0] == "count":
            return CountWindow(int(shape[1]))
        return TimeWindow(shape[1], self._now)

    def count(self, failed: bool, slow: bool, tripping: bool) -> str | None:
        """`record` then `judge` (when `tripping`), in one call: the closed path's cost."""
        self.consecutive = self.consecutive + 1 if failed else 0
        window = self.window
        if window is None:
            if failed and tripping and self.consecutive >= self._trip_after:
                return "consecutive_failures"
            return None
        window.record(failed, slow)
        return self.judge(failed) if tripping else None

    def record(self, failed: bool, slow: bool) -> None:
        self.consecutive = self.consecutive + 1 if failed else 0
        window = self.window
        if window is not None:
            window.record(failed, slow)

    def judge(self, failed: bool) -> str | None:
        """The rule the counts now meet (a trip reason), or None."""
        if failed and self.consecutive >= self._trip_after:
            return "consecutive_failures"
        window = self.window
        if window is None:
            return None
        calls = window.calls
        if calls < self._min_calls:
            return None
        rate = self._failure_rate
        if rate is not None and window.failures / calls >= rate:
            return "failure_rate"
        rate = self.slow_rate
        if rate is not None and window.slow / calls >= rate:
            return "slow_call_rate"
        return None

    def reset(self) -> None:
        self.consecutive = 0
        if self.window is not None:
            self.window.reset()

    def failure_rate(self) -> float | None:
        window = self.window
        if window is None:
            return None
        window.refresh()
        calls = window.calls
        return window.failures / calls if calls >= self._min_calls else None

    def snapshot(self) -> dict[str, object]:
        window = self.window
        if window is not None:
            window.refresh()
        return {
            "consecutive_failures": self.consecutive,
            "window_calls": 0 if window is None else window.calls,
            "window_failures": 0 if window is None else window.failures,
            "window_slow": 0 if window is None else window.slow,
        }


class OutcomeStore(Protocol):
    """What a breaker asks of its outcome store (under the breaker's lock unless said)."""

    counts: LocalCounts
    quiet: bool  # a closed success changes nothing here while the run is 0 (lock-free skip)
    holding: float  # > 0: the store keeps the breaker open, this long at a time (no probing)

    def configure(self, options: BreakerOptions) -> bool:
        """Take reloaded options; True if the window was rebuilt."""
        ...

    def closed(self, failed: bool, slow: bool, tripping: bool) -> str | None:
        """Count one closed-state outcome; the trip reason, if the breaker should trip now.
        `tripping`: False while forced closed (counted, never tripped)."""
        ...

    def entered(self, state: State, opened_here: bool) -> None:
        """A transition happened (`opened_here`: decided by this process's own rules)."""
        ...

    def probe_done(self, probe: int, outcome: str, slow: bool) -> None:
        """A probe ended: ``ok``, ``fail`` or ``release`` (cancelled, ignored, stale)."""
        ...

    def admit_probe(self, probe: int, now: float) -> float | None:
        """(Outside the lock.) A probe permit was granted locally: None to let it go, the
        retry_after of a rejection (the permit is then taken back), or `DECIDE_AGAIN` (the
        store failed meanwhile: the breaker's own state, as the fallback left it, decides)."""
        ...

    def forced(self, force: str | None) -> None: ...

    def snapshot(self) -> dict[str, object]: ...


class LocalStore:
    """Local counting: this process's own counts and rules decide everything."""

    __slots__ = ("closed", "counts", "holding", "quiet")

    def __init__(self, options: BreakerOptions, now: Callable[[], float]) -> None:
        self.counts = LocalCounts(options, now)
        self.closed = self.counts.count  # (a bound method: one call on the closed path)
        self.holding = 0.0
        self.quiet = self.counts.window is None

    def configure(self, options: BreakerOptions) -> bool:
        rebuilt = self.counts.configure(options)
        self.quiet = self.counts.window is None
        return rebuilt

    def entered(self, state: State, opened_here: bool) -> None:
        pass

    def probe_done(self, probe: int, outcome: str, slow: bool) -> None:
        pass

    def admit_probe(self, probe: int, now: float) -> float | None:
        return None

    def forced(self, force: str | None) -> None:
        pass

    def snapshot(self) -> dict[str, object]:
        return {}
