"""A fleet-wide rate limit (``scope = "shared"``): one budget for every process on the store.

How a call is admitted without a round trip: a background thread (`LimiterStore`, one per
engine, redis-py's synchronous client) reserves start times ("slots") in Redis ahead of demand,
with the script of `_limiter_script` (the rules of `_patterns.ratelimit`, applied to the fleet), and
hands them to each limiter's lease. `admit` takes the next leased slot (a slot up to `max_wait`
ahead is a reserved wait); nothing on the caller's thread or event loop ever touches the network.

- Leasing: each budget (a policy, or a policy's key) keeps about `AHEAD` seconds of its recent
  demand leased, at most its fair share (the first rate over the live process count) per fetch;
  a slot not used within `SLOT_TTL` after its time is given up (the fleet sends less, not more).
  A budget without calls for `IDLE_AFTER` seconds leases nothing.
- No slot leased (a quiet process's first call, or a burst beyond the lease): the call is judged
  by this process's share of the budget (each rate divided by the live process count) and, if
  admitted, charged to the fleet's budget at the next fetch, so the fleet's total stays bounded.
- Live processes, and a store that fails: see `_limiter_store`.
- 429 pause: applied locally at once and published, so every process's next slots start after it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._config.admission_models import RateLimitOptions
from .._config.matchers import status_of
from .._patterns.ratelimit import PAUSE_STATUSES, RateLimiter, retry_after_hint
from .._runtime.clock import Clock
from .._runtime.layer import Outcome
from .._telemetry.events import Event
from ..exceptions import RateLimitedError
from ._limiter_script import budget_keys
from ._limiter_store import LimiterStore

__all__ = ["LimiterStore", "SharedRateLimiter"]

AHEAD = 0.1  # slots are leased at most this far ahead
SLOT_TTL = 0.25  # a leased slot unused this long after its time is given up
IDLE_AFTER = 2.0  # no lease for a budget without calls for this long


class _Lease:
    """One budget's leased slots (engine-clock times, oldest first) and its recent demand."""

    __slots__ = ("calls", "full_until", "last_call", "owed", "pause", "rate", "slots", "ticked")

    def __init__(self, now: float) -> None:
        self.slots: deque[float] = deque()
        self.calls = 0
        self.rate = 0.0  # calls per second, smoothed
        self.last_call = now
        self.ticked = now
        self.owed = 0  # admitted by the local share, to charge to the fleet
        self.pause = 0.0  # seconds of a pause to publish
        self.full_until = float("-inf")  # the fleet had no slot free before this (engine time)


class SharedRateLimiter:
    """The fleet-wide rate limit of one guard: an `AttemptLayer` (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_clock",
        "_leases",
        "_local",
        "_lock",
        "_processes",
        "_wall_time",
        "live",
        "max_wait",
        "name",
        "options",
        "shared_share",
        "store",
        "wasted",
    )

    def __init__(
        self,
        name: str,
        options: RateLimitOptions,
        store: LimiterStore,
        clock: Clock,
        *,
        emit: Callable[[Event], None] | None = None,
        wall_time: Callable[[], float] = time.time,
        processes: int | None = None,
    ) -> None:
        """`processes`: a fixed divisor for the per-process share (default: the live count)."""
        self.name = name
        self.options = options
        self.max_wait = options.max_wait
        self.store = store
        self._clock = clock
        self._wall_time = wall_time
        self._processes = processes
        self.live = processes or 1
        self._local = RateLimiter(name, options, emit=emit, wall_time=wall_time, divide=self.live)
        self._lock = threading.Lock()
        self._leases: dict[str | None, _Lease] = {}
        self.wasted = 0
        self.shared_share = [0, 0]  # admitted from leased slots, by the local share
        store.register(self)

    # -- the layer -----------------------------------------------------------------------------

    def admit(self, now: float, limit: float | None = None, key: str | None = None) -> float:
        """A leased slot (0.0, or the wait to it within `max_wait`), else this process's share."""
        if self.store.degraded:
            return self._local.admit(now, limit, key)
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = _Lease(now)
            lease.calls += 1
            lease.last_call = now
            slots = lease.slots
            while slots and slots[0] + SLOT_TTL < now:
                slots.popleft()
                self.wasted += 1
            if slots:
                wait = slots[0] - now
                if wait <= 0.0:
                    slots.popleft()
                    self.shared_share[0] += 1
                    return 0.0
                if wait <= self.max_wait and (limit is None or wait < limit):
                    slots.popleft()
                    self.shared_share[0] += 1
                    return wait
        if slots:
            raise RateLimitedError(self.name, wait)
        if now < lease.full_until:  # the fleet's budget is in use: no local share either
            raise RateLimitedError(self.name, lease.full_until + AHEAD - now)
        wait = self._local.admit(now, limit, key)  # raises if the share has no token either
        with self._lock:
            lease.owed += 1
            self.shared_share[1] += 1
        self.store.wake()
        return wait

    def settle(
        self,
        outcome: Outcome,
        error: BaseException | None,
        duration: float,
        now: float,
        key: str | None = None,
    ) -> None:
        if error is None or not self.options.pause_on_429:
            return
        if status_of(error) not in PAUSE_STATUSES:
            return
        try:
            hint = retry_after_hint(error, self._wall_time)
        except Exception:
            return
        if hint is None or hint <= 0.0:
            return
        self._local.pause(now, hint, key)
        until = now + hint
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = _Lease(now)
            while lease.slots and lease.slots[0] < until:
                lease.slots.popleft()
            lease.pause = max(lease.pause, hint)
        self.store.wake()

    def reconfigure(self, options: RateLimitOptions, now: float) -> None:
        """New rates: the local share is rescaled; the fleet's state is re-read with the new
        rules at the next fetch (slots already leased are still used)."""
        self.options = options
        self.max_wait = options.max_wait
        self._local.reconfigure(options, now, self.live)

    # -- the store's side (its thread) ---------------------------------------------------------

    def after_fork(self) -> None:
        """(In a forked child.) New lock; the leased slots are the parent's to use."""
        self._lock = threading.Lock()
        self._leases = {}

    def set_live(self, count: int) -> None:
        if self._processes is not None or count < 1 or count == self.live:
            return
        self.live = count
        self._local.reconfigure(self.options, self._clock.now(), count)

    def sync(self, store: LimiterStore) -> None:
        """Top up every lease, charge what the local share admitted, publish pauses."""
        now = self._clock.now()
        with self._lock:
            jobs = [
                (key, lease, *self._plan(key, lease, now)) for key, lease in self._leases.items()
            ]
            for key, _, _, _, _ in jobs:
                if now - self._leases[key].last_call > IDLE_AFTER * 5:
                    del self._leases[key]
        for key, lease, want, owed, pause in jobs:
            keys = self._keys(key)
            if pause:
                store.call(keys, self._args("pause", round(pause * 1e6), 0))
            if owed:
                store.call(keys, self._args("take", owed, -1))
            if want > 0:
                reply = store.call(keys, self._args("take", want, round(AHEAD * 1e6)))
                self._adopt(lease, reply)

    def _plan(self, key: str | None, lease: _Lease, now: float) -> tuple[int, int, float]:
        """(Lock held.) How many slots to ask for; the charges and pause to send."""
        dt = now - lease.ticked
        if dt > 0:
            alpha = min(1.0, dt / 0.5)
            lease.rate += alpha * (lease.calls / dt - lease.rate)
            lease.calls = 0
            lease.ticked = now
        owed, lease.owed = lease.owed, 0
        pause, lease.pause = lease.pause, 0.0
        while lease.slots and lease.slots[0] + SLOT_TTL < now:
            lease.slots.popleft()
            self.wasted += 1
        if now - lease.last_call > IDLE_AFTER:
            return 0, owed, pause
        first = self.options.rates[0]
        fair = math.ceil(first.count / first.period * AHEAD / self.live) + 1
        want = min(math.ceil(lease.rate * AHEAD) + 1, fair)
        return max(0, want - len(lease.slots)), owed, pause

    def _adopt(self, lease: _Lease, reply: list[Any]) -> None:
        granted, server_now, beyond = int(reply[0]), float(reply[1]), float(reply[2])
        local = self._clock.now()
        slots = [local + (float(s) - server_now) / 1e6 for s in reply[3 : 3 + granted]]
        with self._lock:
            lease.slots.extend(slots)
            if beyond >= 0:  # the horizon is taken up to there: nothing for the local share
                lease.full_until = local + (beyond - server_now) / 1e6 - AHEAD

    def _keys(self, key: str | None) -> list[str]:
        o = self.options
        logged = o.rates if o.burst > 0 else o.rates[1:]
        return budget_keys(self.store.prefix, self.name, key, [str(r) for r in logged])

    def _args(self, op: str, n: int, horizon: int) -> list[Any]:
        o = self.options
        first = o.rates[0]
        interval = first.interval * 1e6
        tau = min(o.burst, first.count) * interval
        ttl = math.ceil(max(r.period for r in o.rates) * 2000 + AHEAD * 1000)
        args: list[Any] = [op, n, horizon, f"{interval:.3f}", f"{tau:.3f}", ttl]
        for rate in o.rates if o.burst > 0 else o.rates[1:]:
            args += [rate.count, round(rate.period * 1e6)]
        return args

    def status(self) -> dict[str, Any]:
        with self._lock:
            leased = sum(len(lease.slots) for lease in self._leases.values())
        return {
            "scope": "shared",
            "degraded": self.store.degraded,
            "live_processes": self.live,
            "leased": leased,
            "wasted": self.wasted,
            "admitted": {"leased": self.shared_share[0], "local_share": self.shared_share[1]},
        }
