"""The breaker's state machine: states, transitions, and the side a shared store drives.

States and transitions (each one emits exactly one ``state_change`` event, after the lock)::

    closed ──trip──> open ──open duration elapsed──> half_open ──K probes succeed──> closed
                      ^                                  │
                      └───── probe failed / hung ────────┘   (re-open: open_backoff grows it)

- closed: every call is admitted. It trips on `consecutive_failures` in a row (`trip_after`:
  5 when no rate rule is set), or, once the window holds `minimum_calls` outcomes, when the
  failure ratio >= `failure_rate` or the slow ratio (duration >= `slow_call_duration`) >=
  `slow_call_rate`. The window is a `CountWindow` or `TimeWindow` (see `_patterns.windows`).
- open: every call is rejected with `CircuitOpenError` until `open_duration` has passed (times
  `open_backoff.multiplier` per consecutive re-open, capped at `open_backoff.max`).
- half_open: `half_open_calls` probe permits (K) per half-open period. A probe that succeeds keeps
  its permit used, one that is released (cancelled) or ignored gives it back, one that fails
  re-opens. When K probes have succeeded the breaker closes with an empty window, unless the slow
  ratio of those probes reaches `slow_call_rate` (then it re-opens). A probe running longer than
  `half_open_max_wait` re-opens it too. Calls beyond the K permits are rejected, with the time
  until the probes can be judged: until the oldest counts as hung (`half_open_max_wait`), or,
  without that setting, until it has run one `open_duration` (then one `open_duration` again).
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

The machine is half of a breaker (`_patterns.breaker.Breaker` adds admission, outcomes and reading);
the other half is its outcome store (`_patterns.outcomes`). The machine tells the store of every
transition (`OutcomeStore.entered`); a store that follows a shared state drives the machine through
the methods of its "store side" (`lock`, `follow`, `move`, ...), never through its fields.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from .._config.matchers import Predicate, compile_matchers
from .._config.models import BreakerOptions, resolve_matchers
from .._runtime.clock import Clock
from .._telemetry.events import Event
from .outcomes import LocalStore, OutcomeStore
from .permits import NAMES, NOT_CLOSED, State, closed_permit

__all__ = ["Machine"]

_CLOSED, _OPEN, _HALF_OPEN, _FORCED_OPEN, _FORCED_CLOSED = State
_NAMES = NAMES


class Machine:
    """The state machine of one policy's breaker (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_backoff_max",
        "_backoff_mult",
        "_closed_permit",
        "_emit",
        "_generation",
        "_half_open_calls",
        "_idle",
        "_ignored",
        "_lock",
        "_max_wait",
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
        "_slow_after",
        "_state",
        "_store",
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
        store: OutcomeStore | None = None,
    ) -> None:
        self.name = name
        self.observe = observe
        self._now = clock.now
        self._emit = emit
        self._lock = threading.Lock()
        self._generation = 0
        self._state = _CLOSED
        self._closed_permit = 0
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._reopens = 0
        self._probes: dict[int, float] = {}  # probe id -> start time, oldest first
        self._probe_seq = 0
        self._probe_successes = 0
        self._probe_slow = 0
        self._options_since = clock.now()  # when the options in force took effect
        self._store: OutcomeStore = LocalStore(options, clock.now) if store is None else store
        self._configure(options)
        if options.force is not None:
            self._enter(_FORCED_OPEN if options.force == "open" else _FORCED_CLOSED, "forced")

    # -- configuration -------------------------------------------------------------------------

    def _configure(self, options: BreakerOptions) -> bool:
        """Precompute everything a call needs from `options`; True if the window was rebuilt."""
        self._options = options
        slow = options.slow_call_duration
        self.timed = slow is not None
        self._slow_after = math.inf if slow is None else slow
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
        rebuilt = self._store.configure(options)
        self._idle = self._store.quiet and self._store.counts.consecutive == 0
        return rebuilt

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (a thread of the parent may have held this one)."""
        self._lock = threading.Lock()

    # -- transitions (under the lock) ----------------------------------------------------------

    def _refresh(self, now: float) -> tuple[Event, ...]:
        """The lazy, clock-driven transitions due by `now`: open -> half_open, hung probe ->
        open. Each is timed from when it fell due, not from `now` (when somebody looked), so a
        hung probe's re-open may itself be over by `now`: then half_open follows. Returns their
        events, in order, for the caller to emit after the lock (`_emit_all`). A store that
        holds the breaker open (`holding`) extends the open period instead."""
        state = self._state
        if state == _OPEN:
            if now >= self._open_until:
                hold = self._store.holding
                if hold:
                    self._open_until = now + hold
                    return ()
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
            event: Event | None = self._enter(_FORCED_OPEN, "forced")
        else:
            self._reset_counts()
            target = _FORCED_CLOSED if force == "closed" else _CLOSED
            changed = _NAMES[self._state] != _NAMES[target]
            event = self._enter(target, "forced" if force else "force_removed")
            event = event if changed else None
        self._store.forced(force)
        return event

    def _reset_counts(self) -> None:
        self._reopens = 0
        self._opened_at = None
        store = self._store
        store.counts.reset()
        self._idle = store.quiet

    def _enter(self, state: State, reason: str, here: bool = True, **extra: object) -> Event:
        """Move to `state`: a new generation, no probes; the closed permit is set last.
        `here`: decided by this process (not followed from a shared store)."""
        before = _NAMES[self._state]
        self._state = state
        self._generation += 1
        self._probes.clear()
        self._probe_successes = self._probe_slow = 0
        self._store.entered(state, here)
        closed = state in (_CLOSED, _FORCED_CLOSED)
        self._closed_permit = closed_permit(self._generation) if closed else NOT_CLOSED
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
        """Half-open with every permit taken: the time until the probes can be judged, that is
        until the oldest counts as hung; without `half_open_max_wait`, until it has run one
        `open_duration`, then one `open_duration` again (never 0: no call can go now)."""
        if not self._probes:
            return 0.0
        oldest = next(iter(self._probes.values()))
        if self._max_wait is not None:
            return oldest + self._max_wait - now
        left = oldest + self._open_duration - now
        return left if left > 0 else self._open_duration

    # -- the store side: how a store that follows a shared state drives the machine -------------

    @property
    def lock(self) -> threading.Lock:
        """The lock of the machine and its store (a store takes it around `follow` / `move`)."""
        return self._lock

    @property
    def current(self) -> State:
        """The state as it stands, without applying the due lazy transitions."""
        return self._state

    @property
    def forced(self) -> str | None:
        """The file's `force`, if any (a forced breaker follows nobody)."""
        return self._options.force

    @property
    def reopens(self) -> int:
        return self._reopens

    @property
    def open_duration(self) -> float:
        return self._open_duration

    def now(self) -> float:
        """The engine's clock."""
        return self._now()

    def publish(self, event: Event) -> None:
        """Emit an event of a store's move (after the lock)."""
        self._emit(event)

    def open_left(self, now: float) -> float:
        return max(self._open_until - now, 0.0)

    def has_probe(self, probe: int) -> bool:
        """(Under the lock.) True while probe number `probe` is in flight in this period."""
        return probe in self._probes

    def follow(
        self, state: State, reason: str, remaining: float, reopens: int, now: float
    ) -> Event | None:
        """(Under the lock.) Take a shared store's state; open for `remaining` seconds."""
        if state == _OPEN:
            self._reopens = reopens
            event = None
            if self._state != _OPEN:
                self._opened_at = now
                event = self._enter(_OPEN, reason, False, open_for=remaining, shared=True)
            self._open_until = now + remaining
            return event
        if state == self._state:
            return None
        if state == _HALF_OPEN:
            self._open_until = min(self._open_until, now)
            return self._enter(_HALF_OPEN, reason, False, shared=True)
        if state == _CLOSED:
            self._reset_counts()
        return self._enter(state, reason, False, shared=True)

    def move(self, state: State, reason: str, now: float, hold: float = 0.0) -> Event:
        """(Under the lock.) A store's own move: its fallback when it is away, or gone (open
        for `hold` seconds at a time, see `_refresh`)."""
        if state == _OPEN:
            self._opened_at = now
            self._open_until = now + hold
        return self._enter(state, reason, False)

    def _current(self) -> State:
        """The state after any due lazy transition."""
        now = self._now()
        with self._lock:
            due = self._refresh(now)
            state = self._state
        self._emit_all(due)
        return state
