"""The circuit breaker: admission, outcomes and reading, over its state machine
(`_patterns.machine`).

A breaker is a state machine plus one outcome store (`_patterns.outcomes`): local counting
(`LocalStore`) or Redis batching with probe leases (`_shared._store.RedisStore`). The machine
calls the store's hooks at fixed points (a closed outcome, a transition, a probe granted and
ended, a force, a reconfigure). See `_patterns.machine` for the states and transitions and
`_patterns.permits` for what `acquire` returns.

Concurrency: one `threading.Lock` guards counts and transitions; it is held only inside
`acquire` and the `on_*` methods, never across the user's call. The closed `acquire` and the
open rejection take no lock at all (a single attribute read decides).
"""

from __future__ import annotations

from .._config.models import BreakerOptions
from .._telemetry.events import Event
from ..exceptions import CircuitOpenError, GuardTimeoutError
from .machine import Machine
from .outcomes import DECIDE_AGAIN
from .permits import (
    NAMES,
    OBSERVED,
    State,
    StateName,
    closed_permit,
    is_probe,
    probe_of,
    probe_permit,
)

__all__ = [
    "OBSERVED",
    "Breaker",
    "State",
    "StateName",
    "closed_permit",
    "is_probe",
    "probe_of",
    "probe_permit",
]

_CLOSED, _OPEN, _HALF_OPEN, _FORCED_OPEN, _FORCED_CLOSED = State  # (the guard reads _OPEN)
_NAMES = NAMES


class Breaker(Machine):
    """One policy's circuit breaker: `Machine` (states) + admission, outcomes, reading."""

    __slots__ = ()

    def reconfigure(self, options: BreakerOptions) -> str:
        """Apply reloaded options, keeping the state. ``"window_reset"`` if the window was rebuilt.

        New thresholds judge the next outcome; a new `open_duration` applies from the next open
        (the current open deadline is kept). A `force` change takes effect at once.
        """
        now = self._now()
        with self._lock:
            due = self._refresh(now)  # what fell due under the old options happens first
            old_force = self._options.force
            rebuilt = self._configure(options)
            self._options_since = now  # a new max wait cannot make a probe hung before now
            event = None
            if options.force != old_force:
                event = self._apply_force(options.force)
            elif self._state == _HALF_OPEN and self._probe_successes >= self._half_open_calls:
                event = self._settle_probes()
        self._emit_all(due)
        if event is not None:
            self._emit(event)
        return "window_reset" if rebuilt else "kept"

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
        probe = 0
        with self._lock:
            due = self._refresh(now)
            state = self._state
            permit = self._closed_permit
            if state == _HALF_OPEN:
                if len(self._probes) + self._probe_successes < self._half_open_calls:
                    self._probe_seq = probe = self._probe_seq + 1
                    self._probes[probe] = now
                    permit = probe_permit(probe)
                else:
                    retry_after = self._probe_wait_left(now)
            elif state == _OPEN:
                retry_after = self._open_until - now
            elif state == _FORCED_OPEN:
                retry_after = self._open_duration
        self._emit_all(due)
        if probe:
            return self._confirm_probe(probe, permit, now)
        if permit >= 0:
            return permit
        return self._reject(retry_after, _NAMES[state])

    def _confirm_probe(self, probe: int, permit: int, now: float) -> int:
        """The store's word on a probe permit granted here (a shared one needs a lease)."""
        wait = self._store.admit_probe(probe, now)
        if wait is None:
            return permit
        if wait == DECIDE_AGAIN:  # the store failed meanwhile: its fallback decides
            with self._lock:
                kept = probe in self._probes
            return permit if kept else self.acquire()
        closed = self._closed_permit
        if closed >= 0:  # closed meanwhile (by the fleet): an ordinary call
            return closed
        with self._lock:
            self._probes.pop(probe, None)
            state = self._state
        return self._reject(max(wait, 0.0), _NAMES[state])

    def _reject(self, retry_after: float, state: str) -> int:
        if self.observe:
            data = {"state": state, "retry_after": max(retry_after, 0.0)}
            self._emit(Event("would_reject", self.name, data))
            return OBSERVED
        raise CircuitOpenError(self.name, retry_after, state)

    # -- outcomes ------------------------------------------------------------------------------

    def on_success(self, permit: int, duration: float) -> None:
        """Record a successful call."""
        if permit == self._closed_permit and self._idle:
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
        probe = probe_of(permit)
        if probe:
            now = self._now()
            with self._lock:
                self._store.probe_done(probe, "release", False)
                due = self._refresh(now)  # a probe that hung too long re-opened it
                self._probes.pop(probe, None)
            self._emit_all(due)

    def _count(self, failed: bool, slow: bool) -> Event | None:
        """A closed call's outcome (under the lock): the store counts it and may say trip."""
        store = self._store
        reason = store.closed(failed, slow, self._state == _CLOSED)
        self._idle = store.quiet and store.counts.consecutive == 0
        return None if reason is None else self._trip(reason, self._now())

    def _success(self, permit: int, slow: bool) -> Event | None:
        """Count a success; the transition it causes, if any, is returned for the caller to
        emit. (The due transitions a probe's outcome applies first are emitted here.)"""
        with self._lock:
            if permit == self._closed_permit:  # (`_count`, inlined: the closed path)
                store = self._store
                reason = store.closed(False, slow, self._state == _CLOSED)
                self._idle = store.quiet and store.counts.consecutive == 0
                return None if reason is None else self._trip(reason, self._now())
            probe = probe_of(permit)
            if not probe:
                return None
            self._store.probe_done(probe, "ok", slow)
            due = self._refresh(self._now())
            if not due and self._probes.pop(probe, None) is not None:
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
                return self._count(True, slow)
            probe = probe_of(permit)
            if not probe:
                return None
            self._store.probe_done(probe, "fail", slow)
            now = self._now()
            due = self._refresh(now)
            if not due and self._probes.pop(probe, None) is not None:
                return self._reopen("probe_failed", now)
        self._emit_all(due)  # a due transition ended the probe's period: it is stale
        return None

    def _settle_probes(self) -> Event:
        """Every probe permit succeeded: close, unless the probes were too slow."""
        rate = self._store.counts.slow_rate
        if rate is not None and self._probe_slow / max(self._probe_successes, 1) >= rate:
            return self._reopen("slow_call_rate", self._now())
        return self._close("probes_succeeded")

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> StateName:
        """One of "closed", "open", "half_open", "forced_open" (forced closed reads "closed")."""
        state = self._state
        if state in (_OPEN, _HALF_OPEN):
            state = self._current()
        return _NAMES[state]

    def retry_after(self) -> float:
        """Seconds until a call may go: 0 when closed or when a probe permit is free."""
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
        if self._store.counts.window is None:
            return None
        with self._lock:
            return self._store.counts.failure_rate()

    def snapshot(self) -> dict[str, object]:
        """The breaker's counts and state, for tests and metrics."""
        state = self.state
        with self._lock:
            return {
                "state": state,
                "generation": self._generation,
                **self._store.counts.snapshot(),
                "opened_at": self._opened_at,
                "open_until": self._open_until if self._state == _OPEN else None,
                "reopens": self._reopens,
                "probes_in_flight": len(self._probes),
                "probe_successes": self._probe_successes,
                **self._store.snapshot(),
            }
