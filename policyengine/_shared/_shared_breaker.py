"""A breaker whose state lives in Redis, decided locally from a cached copy (`CachedBreaker`).

In shared mode the closed outcomes only bump a few counters (the batch the backend reports: the
trip rules are judged in Redis on the whole fleet's counts, never locally), and a failure asks
the backend to flush at once. A half-open probe needs a local permit *and* a lease from Redis:
one round trip, at most ``[state] timeout``, done inline because half-open is rare; a denial is
remembered for `DENY_CACHE` seconds, or until the next transition arrives. A probe's outcome, or
its release when cancelled or ignored, is sent without waiting. Outside shared mode (degraded,
not yet connected, closed) every method is the plain `Breaker`'s.
"""

from __future__ import annotations

from .._breaker import _NAMES
from .._events import Event
from ._cached_breaker import CachedBreaker

__all__ = ["SharedBreaker"]

DENY_CACHE = 0.05  # a denied probe lease is not asked for again this soon (unless state moves)


class SharedBreaker(CachedBreaker):
    """One policy's breaker, shared through a `RedisBackend`. See the module docstring."""

    __slots__ = ()

    # -- outcomes ------------------------------------------------------------------------------

    def on_success(self, permit: int, duration: float) -> None:
        if permit != self._closed_permit or not self.remote:
            return super().on_success(permit, duration)  # probes, and the local fallback
        slow = duration >= self._slow_after
        with self._lock:  # the hot path: a few counters, no I/O
            if permit == self._closed_permit:
                ok = self._ok
                if not ok:
                    if not self._bad:
                        self._bgen = self.rgen
                    self._lead = self._tail
                self._ok = ok + 1
                self._tail = self._consecutive = 0  # local counts stay warm for a fallback
                if slow:
                    self._slow_n += 1
                window = self._window
                if window is not None:
                    window.record(False, slow)

    def on_release(self, permit: int) -> None:
        if permit > 0 and permit & 1:
            self._probe_done(permit, "release", False)
        super().on_release(permit)

    def _success(self, permit: int, slow: bool) -> Event | None:
        if permit != self._closed_permit and permit > 0 and permit & 1:
            self._probe_done(permit, "ok", slow)
        return super()._success(permit, slow)

    def _failure(self, permit: int, slow: bool) -> Event | None:
        if permit != self._closed_permit:
            if permit > 0 and permit & 1:
                self._probe_done(permit, "fail", slow)
            return super()._failure(permit, slow)
        if not self.remote:
            return super()._failure(permit, slow)
        with self._lock:
            if permit != self._closed_permit:
                return None
            self._consecutive += 1
            if self._window is not None:
                self._window.record(True, slow)
            if not (self._ok or self._bad):
                self._bgen = self.rgen
            self._bad += 1
            self._slow_n += slow
            self._tail += 1
            self._run = max(self._run, self._tail)
            wake, self._woken = not self._woken, True
        if wake:
            self._backend.wake()  # a failure may trip: report it now, not in 50 ms
        return None

    def _probe_done(self, permit: int, outcome: str, slow: bool) -> None:
        lease = self._leases.pop(permit >> 1, None)
        if lease is not None and self.remote:
            self._backend.submit(self, "done", (lease, outcome, int(slow)))

    # -- admission: a local probe permit needs a lease -----------------------------------------

    def _acquire_slow(self) -> int:
        permit = super()._acquire_slow()
        if permit <= 0 or not permit & 1 or not self.remote:
            return permit
        probe = permit >> 1
        now = self._now()
        if now < self._deny_until:
            return self._unprobe(probe, self._deny_until - now)
        reply = self._backend.lease(self)
        if reply is None:  # the store failed: decide as on_error says
            with self._lock:
                kept = probe in self._probes
            return permit if kept else self.acquire()
        self.adopt(reply)
        if reply.lease:
            with self._lock:
                if probe in self._probes:
                    self._leases[probe] = reply.lease
                    return permit
            self._backend.submit(self, "done", (reply.lease, "release", 0))
        else:
            self._deny_until = now + DENY_CACHE
        closed = self._closed_permit
        if closed >= 0:  # the others closed it meanwhile: an ordinary call
            return closed
        waits = {"open": reply.remaining, "forced_open": self._open_duration}
        wait = waits.get(reply.state, reply.wait)
        return self._unprobe(probe, wait)

    def _unprobe(self, probe: int, wait: float) -> int:
        with self._lock:
            self._probes.pop(probe, None)
        return self._reject(max(wait, 0.0), _NAMES[self._state])
