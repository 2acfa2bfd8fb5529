"""The circuit breaker: a small state machine driven by call outcomes and the engine's clock.

States and transitions (each one emits exactly one ``state_change`` event, after the lock)::

    closed ──trip──> open ──open duration elapsed──> half_open ──K probes succeed──> closed
                      ^                                  │
                      └───── probe failed / hung ────────┘   (re-open: open_backoff grows it)

- closed: every call is admitted. It trips on `consecutive_failures` in a row (`trip_after`:
  5 when no rate rule is set), or, once the window holds `minimum_calls` outcomes, when the
  failure ratio >= `failure_rate` or the slow ratio (duration >= `slow_call_duration`) >=
  `slow_call_rate`. The window is a `CountWindow` or `TimeWindow` (see `_windows`).
- open: every call is rejected with `CircuitOpenError` until `open_duration` has passed (times
  `open_backoff.multiplier` per consecutive re-open, capped at `open_backoff.max`).
- half_open: `half_open_calls` probe permits (K) per half-open period. A probe that succeeds keeps
  its permit used, one that is released (cancelled) or ignored gives it back, one that fails
  re-opens. When K probes have succeeded the breaker closes with an empty window, unless the slow
  ratio of those probes reaches `slow_call_rate` (then it re-opens). A probe running longer than
  `half_open_max_wait` re-opens it too. Calls beyond the K permits are rejected.
- forced_open / forced closed (`force`): rejects everything / admits everything and counts, never
  trips (reads ``"closed"``). Removing `force` starts afresh in closed.

Transitions out of open and half_open happen lazily, when `acquire`, `state` or `retry_after`
reads the clock: the breaker runs no timers. Each is timed from when it fell due, not from when
somebody looked: a hung probe re-opens the breaker at its start + `half_open_max_wait` (at the
`reconfigure` itself if that shortened the wait below the probe's age: a new wait never applies
retroactively), its open period runs from then, and if that period too has passed by the time
anyone looks, the same read moves on to half_open (two transitions, two events, in order). A
probe's outcome or release and a `reconfigure` apply the due transitions first, so nothing
depends on whether anyone read the state meanwhile, or when (a probe that hung past
`half_open_max_wait` is stale when it returns, scraped or not).

Permits: a closed call gets ``generation << 1`` (even), a probe ``probe_id << 1 | 1`` (odd, the
id is unique and lives only until the next transition), an observe-mode call that enforcement
would have rejected gets -1. Every transition bumps the generation and clears the probes, so the
outcome of a call admitted before it is stale and changes nothing.

Concurrency: one `threading.Lock` guards counts and transitions; it is held only inside
`acquire` and the `on_*` methods, never across the user's call. The closed `acquire` and the
open rejection take no lock at all (a single attribute read decides).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable

from ._clock import Clock
from ._events import Event
from ._matchers import Predicate, compile_matchers
from ._models import BreakerOptions, resolve_matchers
from ._windows import CountWindow, TimeWindow, Window
from .exceptions import CircuitOpenError, GuardTimeoutError

__all__ = ["Breaker"]

_CLOSED, _OPEN, _HALF_OPEN, _FORCED_OPEN, _FORCED_CLOSED = range(5)
_NAMES = ("closed", "open", "half_open", "forced_open", "closed")
_NOT_CLOSED = -2  # the closed permit while not closed: no permit ever equals it
_OBSERVED = -1  # the permit of an observe-mode call that enforcement would have rejected

WindowShape = tuple[str, float] | None


class Breaker:
    """One policy's circuit breaker. See the module docstring for the state machine."""

    __slots__ = (
        "_backoff_max",
        "_backoff_mult",
        "_closed_permit",
        "_consecutive",
        "_emit",
        "_failure_rate",
        "_generation",
        "_half_open_calls",
        "_ignored",
        "_lock",
        "_max_wait",
        "_min_calls",
        "_now",
        "_open_duration",
        "_open_until",
        "_opened_at",
        "_options",
        "_options_since",
        "_probe_seq",
        "_probe_slow",
        "_probe_successes",
        "_probes",
        "_recorded",
        "_reopens",
        "_shape",
        "_slow_after",
        "_slow_rate",
        "_state",
        "_trip_after",
        "_window",
        "name",
        "observe",
        "timed",
    )

    def __init__(
        self,
        name: str,
        options: BreakerOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        *,
        observe: bool = False,
    ) -> None:
        self.name = name
        self.observe = observe
        self._now = clock.now
        self._emit = emit
        self._lock = threading.Lock()
        self._generation = 0
        self._state = _CLOSED
        self._closed_permit = 0
        self._consecutive = 0
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._reopens = 0
        self._probes: dict[int, float] = {}  # probe id -> start time, oldest first
        self._probe_seq = 0
        self._probe_successes = 0
        self._probe_slow = 0
        self._options_since = clock.now()  # when the options in force took effect
        self._configure(options)
        self._window = self._build_window()
        if options.force is not None:
            self._enter(_FORCED_OPEN if options.force == "open" else _FORCED_CLOSED, "forced")

    # -- configuration -------------------------------------------------------------------------

    def _configure(self, options: BreakerOptions) -> None:
        """Precompute everything a call needs from `options`."""
        self._options = options
        trip_after = options.trip_after
        self._trip_after = sys.maxsize if trip_after is None else trip_after
        self._failure_rate = options.failure_rate
        self._slow_rate = options.slow_call_rate
        slow = options.slow_call_duration
        self.timed = slow is not None
        self._slow_after = math.inf if slow is None else slow
        self._min_calls = options.minimum_calls
        self._open_duration = options.open_duration
        backoff = options.open_backoff
        self._backoff_mult = 1.0 if backoff is None else backoff.multiplier
        self._backoff_max = options.open_duration if backoff is None else backoff.max
        self._half_open_calls = options.half_open_calls
        self._max_wait = options.half_open_max_wait
        self._ignored: Predicate = compile_matchers(resolve_matchers(options.ignore))
        self._recorded: Predicate | None = (
            None if options.record is None else compile_matchers(resolve_matchers(options.record))
        )
        shape: WindowShape = None
        if options.failure_rate is not None or options.slow_call_rate is not None:
            if options.window == "count":
                shape = ("count", options.window_size)
            else:
                shape = ("time", options.window_duration)
        self._shape = shape

    def _build_window(self) -> Window | None:
        shape = self._shape
        if shape is None:
            return None
        if shape[0] == "count":
            return CountWindow(int(shape[1]))
        return TimeWindow(shape[1], self._now)

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (a thread of the parent may have held this one)."""
        self._lock = threading.Lock()

    def reconfigure(self, options: BreakerOptions) -> str:
        """Apply reloaded options, keeping the state. ``"window_reset"`` if the window was rebuilt.

        New thresholds judge the next outcome; a new `open_duration` applies from the next open
        (the current open deadline is kept). A `force` change takes effect at once.
        """
        now = self._now()
        with self._lock:
            due = self._refresh(now)  # what fell due under the old options happens first
            old_force, old_shape = self._options.force, self._shape
            self._configure(options)
            self._options_since = now  # a new max wait cannot make a probe hung before now
            result = "kept"
            if self._shape != old_shape:
                self._window = self._build_window()
                result = "window_reset"
            event = None
            if options.force != old_force:
                event = self._apply_force(options.force)
            elif self._state == _HALF_OPEN and self._probe_successes >= self._half_open_calls:
                event = self._settle_probes()
        self._emit_all(due)
        if event is not None:
            self._emit(event)
        return result

    # -- admission -----------------------------------------------------------------------------

    def acquire(self) -> int:
        """Admit one call and return its permit, or raise `CircuitOpenError`."""
        permit = self._closed_permit
        if permit >= 0:
            return permit
        if self._state == _OPEN:
            now = self._now()
            until = self._open_until
            if now < until and not self.observe:
                raise CircuitOpenError(self.name, until - now, "open")
        return self._acquire_slow()

    def _acquire_slow(self) -> int:
        if self._state == _FORCED_OPEN:
            return self._reject(self._open_duration, "forced_open")
        now = self._now()
        retry_after = 0.0
        with self._lock:
            due = self._refresh(now)
            state = self._state
            permit = self._closed_permit
            if state == _HALF_OPEN:
                if len(self._probes) + self._probe_successes < self._half_open_calls:
                    self._probe_seq += 1
                    self._probes[self._probe_seq] = now
                    permit = self._probe_seq << 1 | 1
                else:
                    retry_after = self._probe_wait_left(now)
            elif state == _OPEN:
                retry_after = self._open_until - now
            elif state == _FORCED_OPEN:
                retry_after = self._open_duration
        self._emit_all(due)
        if permit >= 0:
            return permit
        return self._reject(retry_after, _NAMES[state])

    def _reject(self, retry_after: float, state: str) -> int:
        if self.observe:
            data = {"state": state, "retry_after": max(retry_after, 0.0)}
            self._emit(Event("would_reject", self.name, data))
            return _OBSERVED
        raise CircuitOpenError(self.name, retry_after, state)

    # -- outcomes ------------------------------------------------------------------------------

    def on_success(self, permit: int, duration: float) -> None:
        """Record a successful call."""
        if permit == self._closed_permit and self._consecutive == 0 and self._window is None:
            return  # nothing to count: no lock needed
        event = self._success(permit, duration >= self._slow_after)
        if event is not None:
            self._emit(event)

    def on_failure(self, permit: int, exc: BaseException, duration: float) -> None:
        """Classify `exc` and record it: ignored (as a release), success or failure."""
        if not isinstance(exc, Exception) or self._ignored(exc):
            self.on_release(permit)
            return
        recorded = self._recorded
        if recorded is not None and not recorded(exc) and not isinstance(exc, GuardTimeoutError):
            self.on_success(permit, duration)
            return
        event = self._failure(permit, duration >= self._slow_after)
        if event is not None:
            self._emit(event)

    def on_release(self, permit: int) -> None:
        """A cancelled or abandoned call: counts nothing; a probe gives its permit back."""
        if permit > 0 and permit & 1:
            now = self._now()
            with self._lock:
                due = self._refresh(now)  # a probe that hung too long re-opened it
                self._probes.pop(permit >> 1, None)
            self._emit_all(due)

    def _success(self, permit: int, slow: bool) -> Event | None:
        """Count a success; the transition it causes, if any, is returned for the caller to
        emit. (The due transitions a probe's outcome applies first are emitted here.)"""
        with self._lock:
            if permit == self._closed_permit:
                self._consecutive = 0
                window = self._window
                if window is None:
                    return None
                window.record(False, slow)
                return self._judge(window)
            if not (permit > 0 and permit & 1):
                return None
            due = self._refresh(self._now())
            if not due and self._probes.pop(permit >> 1, None) is not None:
                self._probe_successes += 1
                self._probe_slow += slow
                if self._probe_successes >= self._half_open_calls:
                    return self._settle_probes()
        self._emit_all(due)  # a due transition ended the probe's period: it is stale
        return None

    def _failure(self, permit: int, slow: bool) -> Event | None:
        """Count a failure, as `_success` does."""
        with self._lock:
            if permit == self._closed_permit:
                self._consecutive += 1
                window = self._window
                if window is not None:
                    window.record(True, slow)
                if self._state != _CLOSED:
                    return None  # forced closed: counts, never trips
                if self._consecutive >= self._trip_after:
                    return self._trip("consecutive_failures", self._now())
                return None if window is None else self._judge(window)
            if not (permit > 0 and permit & 1):
                return None
            now = self._now()
            due = self._refresh(now)
            if not due and self._probes.pop(permit >> 1, None) is not None:
                return self._reopen("probe_failed", now)
        self._emit_all(due)  # a due transition ended the probe's period: it is stale
        return None

    def _judge(self, window: Window) -> Event | None:
        """Trip if a rate rule is met (under the lock, after recording an outcome)."""
        calls = window.calls
        if calls < self._min_calls or self._state != _CLOSED:
            return None
        rate = self._failure_rate
        if rate is not None and window.failures / calls >= rate:
            return self._trip("failure_rate", self._now())
        rate = self._slow_rate
        if rate is not None and window.slow / calls >= rate:
            return self._trip("slow_call_rate", self._now())
        return None

    def _settle_probes(self) -> Event:
        """Every probe permit succeeded: close, unless the probes were too slow."""
        rate = self._slow_rate
        if rate is not None and self._probe_slow / max(self._probe_successes, 1) >= rate:
            return self._reopen("slow_call_rate", self._now())
        return self._close("probes_succeeded")

    # -- transitions (under the lock; a shared backend overrides these) ------------------------

    def _refresh(self, now: float) -> tuple[Event, ...]:
        """The lazy, clock-driven transitions due by `now`: open -> half_open, hung probe ->
        open. Each is timed from when it fell due, not from `now` (when somebody looked), so a
        hung probe's re-open may itself be over by `now`: then half_open follows. Returns their
        events, in order, for the caller to emit after the lock (`_emit_all`)."""
        state = self._state
        if state == _OPEN:
            if now >= self._open_until:
                return (self._half_open(now),)
        elif state == _HALF_OPEN and self._max_wait is not None and self._probes:
            oldest = next(iter(self._probes.values()))
            hung_at = max(oldest + self._max_wait, self._options_since)
            if now >= hung_at:
                reopened = self._reopen("probe_timeout", hung_at)
                return (reopened, *self._refresh(now))  # its open period may be over too
        return ()

    def _emit_all(self, events: tuple[Event, ...]) -> None:
        """Emit the events of `_refresh` (after the lock), in order."""
        for event in events:
            self._emit(event)

    def _trip(self, reason: str, now: float) -> Event:
        """closed -> open."""
        self._reopens = 0
        return self._open(reason, now)

    def _reopen(self, reason: str, now: float) -> Event:
        """half_open -> open, for longer with `open_backoff`."""
        self._reopens += 1
        return self._open(reason, now)

    def _open(self, reason: str, now: float) -> Event:
        duration = self._open_for(self._reopens)
        self._opened_at = now
        self._open_until = now + duration
        return self._enter(_OPEN, reason, open_for=duration)

    def _half_open(self, now: float) -> Event:
        """open -> half_open."""
        return self._enter(_HALF_OPEN, "open_duration_elapsed")

    def _close(self, reason: str) -> Event:
        """half_open -> closed, with fresh counts."""
        self._reset_counts()
        return self._enter(_CLOSED, reason)

    def _apply_force(self, force: str | None) -> Event | None:
        if force == "open":
            self._opened_at = None
            return self._enter(_FORCED_OPEN, "forced")
        self._reset_counts()
        target = _FORCED_CLOSED if force == "closed" else _CLOSED
        changed = _NAMES[self._state] != _NAMES[target]
        event = self._enter(target, "forced" if force else "force_removed")
        return event if changed else None

    def _reset_counts(self) -> None:
        self._reopens = 0
        self._consecutive = 0
        self._opened_at = None
        if self._window is not None:
            self._window.reset()

    def _enter(self, state: int, reason: str, **extra: object) -> Event:
        """Move to `state`: a new generation, no probes; the closed permit is set last."""
        before = _NAMES[self._state]
        self._state = state
        self._generation += 1
        self._probes.clear()
        self._probe_successes = self._probe_slow = 0
        closed = state in (_CLOSED, _FORCED_CLOSED)
        self._closed_permit = self._generation << 1 if closed else _NOT_CLOSED
        data = {"from": before, "to": _NAMES[state], "reason": reason, **extra}
        return Event("state_change", self.name, data)

    def _open_for(self, reopens: int) -> float:
        base = self._open_duration
        if reopens == 0 or self._backoff_mult == 1.0:
            return base
        try:
            grown = base * self._backoff_mult**reopens
        except OverflowError:
            grown = math.inf
        return max(base, min(self._backoff_max, grown))

    def _probe_wait_left(self, now: float) -> float:
        """Half-open with every permit taken: time until the oldest probe is declared hung."""
        if self._max_wait is None or not self._probes:
            return 0.0
        return next(iter(self._probes.values())) + self._max_wait - now

    # -- reading -------------------------------------------------------------------------------

    def _current(self) -> int:
        """The state after any due lazy transition."""
        now = self._now()
        with self._lock:
            due = self._refresh(now)
            state = self._state
        self._emit_all(due)
        return state

    @property
    def state(self) -> str:
        """One of "closed", "open", "half_open", "forced_open" (forced closed reads "closed")."""
        state = self._state
        if state in (_OPEN, _HALF_OPEN):
            state = self._current()
        return _NAMES[state]

    def retry_after(self) -> float:
        """Seconds until a probe may go: 0 when closed or when a probe permit is free."""
        state = self._state
        if state in (_CLOSED, _FORCED_CLOSED):
            return 0.0
        if state == _FORCED_OPEN:
            return self._open_duration
        now = self._now()
        wait = 0.0
        with self._lock:
            due = self._refresh(now)
            state = self._state
            if state == _OPEN:
                wait = self._open_until - now
            elif state == _HALF_OPEN:
                if len(self._probes) + self._probe_successes >= self._half_open_calls:
                    wait = self._probe_wait_left(now)
            elif state == _FORCED_OPEN:
                wait = self._open_duration
        self._emit_all(due)
        return max(wait, 0.0)

    @property
    def failure_rate(self) -> float | None:
        """The failure ratio of the window; None below `minimum_calls` or with no rate rule."""
        window = self._window
        if window is None:
            return None
        with self._lock:
            window.refresh()
            calls, failures = window.calls, window.failures
        return failures / calls if calls >= self._min_calls else None

    def snapshot(self) -> dict[str, object]:
        """The breaker's counts and state, for tests and metrics."""
        state = self.state
        with self._lock:
            window = self._window
            if window is not None:
                window.refresh()
            return {
                "state": state,
                "generation": self._generation,
                "consecutive_failures": self._consecutive,
                "window_calls": 0 if window is None else window.calls,
                "window_failures": 0 if window is None else window.failures,
                "window_slow": 0 if window is None else window.slow,
                "opened_at": self._opened_at,
                "open_until": self._open_until if self._state == _OPEN else None,
                "reopens": self._reopens,
                "probes_in_flight": len(self._probes),
                "probe_successes": self._probe_successes,
            }
