"""Rate limit (``[policies.X.rate_limit]``, scope "process"): how fast attempts reach a dependency.

Semantics, exactly (times on the engine's clock; a window is half-open, ``[s, s + period)``):

- Steady flow: the first rate ``N/T`` admits one attempt every ``T / N`` seconds (a GCRA, the
  "virtual scheduling" form of a token bucket). With ``burst = 0`` (the default) that is all:
  attempts are spaced out, never bunched, and any window of ``T`` holds at most ``N``.
- ``burst = B``: tokens above the steady flow. Unused intervals are saved, up to B: after an idle
  spell of ``B * T / N`` seconds, ``B + 1`` attempts may go at once; then the flow is steady again.
  The burst never breaks a rate: the first rate's window still holds at most ``N`` attempts.
- Every rate (``rates = ["50/s", "3000/min"]``) must allow the attempt: rate ``N/T`` admits at
  most ``N`` attempts in every window of ``T`` seconds, wherever the window starts (a sliding log
  of the last N admission times; not a fixed window, which allows 2N across its edge). So with
  ``["10/s", "100/min"]`` a client may send 10 in a second but only 100 in any minute.
- ``max_wait``: an attempt that would get a token within `max_wait` (and, under a total deadline,
  strictly before it) takes it now, reserved, and waits (`admit` returns the wait); later
  attempts queue behind it (FIFO: nobody overtakes a reservation). Otherwise `RateLimitedError`
  with `retry_after`, the seconds until a token is free, and nothing is taken.
- A token taken is spent: an attempt a later step refuses (bulkhead full) or a caller cancelled
  while waiting does not give it back (the limiter errs towards sending less, never more).
- ``pause_on_429``: an attempt that fails with status 429 or 503 and a Retry-After hint (the
  error's ``retry_after`` or its ``response.headers``, as the retry layer reads it) pauses the
  limiter until the hint (at most `MAX_PAUSE`): attempts wait for the end (within `max_wait`) or
  get `RateLimitedError`; the flow restarts steady, and the burst refills as after any busy spell.
- Keys (a partitioned policy): ``admit(now, key=k)`` gives every key a budget of its own. A key
  whose budget is full again is forgotten (exact: it would behave as a fresh one).
- Reload (`reconfigure`): the bucket is rescaled, not refilled: a limiter that had used 70% of
  its burst has used 70% of the new one, queued reservations stay, and each rate's log of recent
  admissions carries over, so a rate also holds across the reload.

Cost: one short lock; without keys, burst or further rates, a few float operations. After
`os.fork()` the child gets new locks (an at-fork hook); its budget starts as the parent's was.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from .._config.admission_models import Rate, RateLimitOptions
from .._config.matchers import status_of
from .._runtime.layer import Outcome
from .._telemetry.events import Event
from ..exceptions import RateLimitedError
from .retry import _header, _seconds

__all__ = ["MAX_PAUSE", "PAUSE_STATUSES", "RateLimiter", "retry_after_hint"]

MAX_PAUSE = 300.0
"""Longest pause a Retry-After hint may impose (a far-off HTTP date must not stop a service)."""
PAUSE_STATUSES = frozenset({429, 503})
_EPS = 1e-9  # a wait shorter than this is float rounding of summed intervals: none
_PRUNE_AT = 1024  # keyed buckets: look for idle ones to forget past this many


def retry_after_hint(exc: BaseException, wall_time: Callable[[], float]) -> float | None:
    """The seconds `exc` asks to wait (``retry_after`` or a Retry-After header), or None."""
    value = getattr(exc, "retry_after", None)
    if value is not None:
        seconds = _seconds(value, wall_time)
        if seconds is not None:
            return seconds
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    value = _header(headers)
    return None if value is None else _seconds(value, wall_time)


def _share(rate: Rate, divide: int) -> Rate:
    """One of `divide` equal shares of `rate`, never above it (1/s in 4: one per 4 s each)."""
    if divide <= 1:
        return rate
    if rate.count >= divide:
        return Rate(rate.count // divide, rate.period)
    return Rate(1, rate.period * divide / rate.count)


class _Bucket:
    """One budget: the GCRA's theoretical arrival time, the last reservation, the pause, and for
    each windowed rate the times of its last N admissions (oldest first)."""

    __slots__ = ("last", "logs", "paused", "tat")

    def __init__(self, logs: list[deque[float]]) -> None:
        self.tat = float("-inf")
        self.last = float("-inf")
        self.paused = float("-inf")
        self.logs = logs


class RateLimiter:
    """The per-process rate limit of one guard: an `AttemptLayer` (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_buckets",
        "_emit",
        "_interval",
        "_lock",
        "_log_rates",
        "_longest",
        "_one",
        "_pause_on_429",
        "_prune_at",
        "_tau",
        "_wall_time",
        "max_wait",
        "name",
        "options",
    )

    def __init__(
        self,
        name: str,
        options: RateLimitOptions,
        *,
        emit: Callable[[Event], None] | None = None,
        wall_time: Callable[[], float] = time.time,
        divide: int = 1,
    ) -> None:
        self.name = name
        self._emit = emit
        self._wall_time = wall_time
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._prune_at = _PRUNE_AT
        self._configure(options, divide)
        self._one = _Bucket(self._new_logs())
        _live.add(self)

    def _configure(self, options: RateLimitOptions, divide: int = 1) -> None:
        """`divide`: this process's share of a fleet budget (each count divided, at least 1)."""
        rates = [_share(r, divide) for r in options.rates]
        self.options = options
        self.max_wait = options.max_wait
        self._pause_on_429 = options.pause_on_429
        first = rates[0]
        self._interval = first.interval
        self._tau = min(options.burst // divide, first.count) * first.interval
        logged = rates if options.burst > 0 else rates[1:]  # as in `_positions`
        self._log_rates: tuple[Rate, ...] = tuple(logged)
        self._longest = max(r.period for r in rates)

    def _new_logs(self) -> list[deque[float]]:
        return [deque(maxlen=r.count) for r in self._log_rates]

    # -- the layer -----------------------------------------------------------------------------

    def admit(self, now: float, limit: float | None = None, key: str | None = None) -> float:
        """Take a token: 0.0 (go), or the seconds to wait with the token reserved, or raise
        `RateLimitedError`. `limit`: the seconds the caller has left (its total deadline); a wait
        that is not strictly shorter is refused at once, since it could only end in a timeout."""
        with self._lock:
            bucket = self._one if key is None else self._bucket(key, now)
            start = bucket.tat - self._tau  # inlined `_earliest`: this is the hot path
            if start < now:
                start = now
            if bucket.paused > start:
                start = bucket.paused
            logs = bucket.logs
            if logs:
                start = self._logged(bucket, start)
            wait = start - now
            if wait > _EPS:
                if wait > self.max_wait or (limit is not None and wait >= limit):
                    raise RateLimitedError(self.name, wait)
            else:
                wait = 0.0
            tat = bucket.tat
            bucket.tat = (start if start > tat else tat) + self._interval
            if logs:
                bucket.last = start
                for log in logs:
                    log.append(start)
        return wait

    def settle(
        self,
        outcome: Outcome,
        error: BaseException | None,
        duration: float,
        now: float,
        key: str | None = None,
    ) -> None:
        """Pause on a 429/503 with a Retry-After hint (`pause_on_429`); nothing else to do."""
        if error is None or not self._pause_on_429 or status_of(error) not in PAUSE_STATUSES:
            return
        try:
            hint = retry_after_hint(error, self._wall_time)
        except Exception:  # settle must not raise, whatever a foreign error object does
            return
        if hint is not None and hint > 0.0:
            self.pause(now, hint, key)

    # -- the rest ------------------------------------------------------------------------------

    def pause(self, now: float, seconds: float, key: str | None = None) -> None:
        """No attempt starts before ``now + seconds`` (capped at `MAX_PAUSE`); then steady flow."""
        until = now + min(seconds, MAX_PAUSE)
        with self._lock:
            bucket = self._one if key is None else self._bucket(key, now)
            if until <= bucket.paused:
                return
            bucket.paused = until
            if bucket.tat < until + self._tau:
                bucket.tat = until + self._tau  # no burst saved up across the pause
        if self._emit is not None:
            data = {"seconds": round(until - now, 3), "key": key}
            self._emit(Event("rate_limit_paused", self.name, data))

    def retry_after(self, now: float, key: str | None = None) -> float:
        """Seconds until a token is free for a caller that does not wait (0.0: one is)."""
        with self._lock:
            bucket = self._one if key is None else self._buckets.get(key)
            if bucket is None:
                return 0.0
            wait = self._earliest(bucket, now) - now
        return wait if wait > _EPS else 0.0

    def reconfigure(self, options: RateLimitOptions, now: float, divide: int = 1) -> None:
        """A reload's new rates and burst, rescaling each bucket (see the module docstring)."""
        with self._lock:
            old_interval, old_tau = self._interval, self._tau
            old_positions = self._positions(self.options)
            self._configure(options, divide)
            positions = self._positions(options)
            for bucket in (self._one, *self._buckets.values()):
                self._rescale(bucket, now, old_interval, old_tau)
                bucket.logs = self._carry_logs(bucket.logs, old_positions, positions)

    def _positions(self, options: RateLimitOptions) -> list[int]:
        """Indices in `options.rates` of the windowed rates (the first only with a burst)."""
        return list(range(len(options.rates)))[0 if options.burst > 0 else 1 :]

    def _carry_logs(
        self,
        logs: list[deque[float]],
        old_positions: list[int],
        positions: list[int],
    ) -> list[deque[float]]:
        by_position = dict(zip(old_positions, logs, strict=True))
        out: list[deque[float]] = []
        for position, rate in zip(positions, self._log_rates, strict=True):
            old = by_position.get(position)
            out.append(deque(old if old is not None else (), maxlen=rate.count))
        return out

    def _rescale(self, bucket: _Bucket, now: float, old_interval: float, old_tau: float) -> None:
        if bucket.tat == float("-inf"):
            return  # never used: full under any rate
        # fill: the share of the B + 1 tokens available now; 1 = full, 0 = empty, < 0 = waits
        # already reserved ahead (in units of the whole capacity)
        span = old_tau + old_interval
        fill = (now + span - bucket.tat) / span
        if fill > 1.0:
            fill = 1.0
        span = self._tau + self._interval
        bucket.tat = now + span - fill * span

    def _earliest(self, bucket: _Bucket, now: float) -> float:
        """When the next attempt may start: every rate, the queue and any pause allow it then."""
        start = bucket.tat - self._tau
        if start < now:
            start = now
        if bucket.paused > start:
            start = bucket.paused
        return self._logged(bucket, start) if bucket.logs else start

    def _logged(self, bucket: _Bucket, start: float) -> float:
        """`start`, moved behind the last reservation (FIFO, which keeps each log sorted) and
        until each windowed rate has room. Without logs there is no burst (a log comes with
        it), so the steady flow alone already orders the starts."""
        if bucket.last > start:
            start = bucket.last
        for log, rate in zip(bucket.logs, self._log_rates, strict=True):
            if len(log) == rate.count:
                free = log[0] + rate.period  # the N-th latest leaves the window
                if free > start:
                    start = free
        return start

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self._new_logs())
        return bucket

    def _prune(self, now: float) -> None:
        """Forget keys whose budget is full again (a fresh bucket would behave the same)."""
        idle = now - self._longest
        gone = [
            k
            for k, b in self._buckets.items()
            if b.last <= idle and b.tat <= now and b.paused <= now
        ]
        for k in gone:
            del self._buckets[k]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))

    def keys(self) -> int:
        """How many keys have a budget of their own right now."""
        return len(self._buckets)

    def __repr__(self) -> str:
        rates = ", ".join(str(r) for r in self.options.rates)
        return f"RateLimiter({self.name!r}, [{rates}], burst={self.options.burst})"


_live: weakref.WeakSet[RateLimiter] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child: a lock another thread of the parent held would stay locked forever."""
    for limiter in list(_live):
        limiter._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
