"""The cached copy of a breaker's Redis state, and the fallback when Redis is unreachable.

`CachedBreaker` is the plain `Breaker` whose state machine doubles as the cache of the shared
state (`SharedBreaker` adds the outcomes and the probe leases):

- shared mode (``remote``): transitions arrive from script replies and pub/sub (`adopt`); a reply
  older than the last one seen (same key epoch, lower generation) is ignored. The closed outcomes
  of a period are batched for the backend (`take_batch`); a transition drops the batch (stale).
- degraded (`degrade`: the store failed): ``on_error = "local"`` runs this process's own rules (a
  trip made then is published on reconnection), ``"open"`` rejects every call, ``"closed"`` admits
  every call. Until the first reply the breaker behaves as ``"local"``.
- reconnection (`reconverge_op`, then `adopt(sync=True)`): a force of the file is published
  (and renewed on every resync), then a local trip, otherwise Redis wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._breaker import _CLOSED, _FORCED_CLOSED, _FORCED_OPEN, _HALF_OPEN, _OPEN, Breaker
from .._clock import Clock
from .._events import Event
from .._models import BreakerOptions
from ._scripts import Arg, breaker_key, config_args, wire_name

if TYPE_CHECKING:
    from ._backend import RedisBackend
    from ._wire import Reply

__all__ = ["CachedBreaker"]

HOLD = 0.25  # on_error = "open": the retry_after of rejections while the store is away
FORCE_TTL_MS = 20_000  # a forced state in Redis lapses unless renewed (resyncs run every 5 s)
_STATES = {
    "closed": _CLOSED,
    "open": _OPEN,
    "half_open": _HALF_OPEN,
    "forced_open": _FORCED_OPEN,
    "forced_closed": _FORCED_CLOSED,
}


class CachedBreaker(Breaker):
    """A breaker that follows the state kept in Redis. See the module docstring."""

    __slots__ = (
        "__weakref__",
        "_backend",
        "_bad",
        "_bgen",
        "_degraded",
        "_deny_until",
        "_epoch",
        "_fail_mode",
        "_lead",
        "_leases",
        "_local_open",
        "_ok",
        "_reply",
        "_run",
        "_slow_n",
        "_tail",
        "_unforce",
        "_woken",
        "args",
        "key",
        "remote",
        "rgen",
        "wire",
    )

    def __init__(
        self,
        name: str,
        options: BreakerOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        backend: RedisBackend,
        prefix: str,
        *,
        observe: bool = False,
    ) -> None:
        self._backend = backend
        self.key = breaker_key(prefix, name)
        self.wire = wire_name(name)
        self.remote = False  # True while the cached state is Redis' (set by the first reply)
        self.rgen = -1  # the Redis generation last adopted ...
        self._epoch = -1  # ... and the epoch of the key it belongs to
        self._degraded = False
        self._fail_mode = "local"
        self._local_open = False  # opened by this process while not shared: to publish
        self._unforce = False  # a force removed from the file, not yet removed from Redis
        self._leases: dict[int, int] = {}  # local probe id -> Redis lease id
        self._deny_until = 0.0  # a denied probe lease is not asked for again before this
        self._reply: Reply | None = None
        self._zero_batch()
        super().__init__(name, options, clock, emit, observe=observe)

    def _configure(self, options: BreakerOptions) -> None:
        super()._configure(options)
        self.args = config_args(options)

    # -- the batch of closed outcomes (under the lock) -----------------------------------------

    def _zero_batch(self) -> None:
        self._ok = self._bad = self._slow_n = self._lead = self._run = self._tail = 0
        self._bgen = self.rgen
        self._woken = False

    def take_batch(self) -> tuple[int, tuple[int, ...]] | None:
        """The outcomes counted since the last call, with the generation they belong to."""
        with self._lock:
            if not (self._ok or self._bad):
                return None
            lead = self._lead if self._ok else self._bad
            batch = (self._ok, self._bad, self._slow_n, lead, self._run, self._tail)
            gen = self._bgen
            self._zero_batch()
        return gen, batch

    # -- transitions and Redis' state ----------------------------------------------------------

    def _enter(self, state: int, reason: str, **extra: object) -> Event:
        self._leases.clear()
        self._zero_batch()  # outcomes of the period that ends are stale
        return super()._enter(state, reason, **extra)

    def _open(self, reason: str, now: float) -> Event:
        if not self.remote:
            self._local_open = True  # decided here: published when the store is back
        return super()._open(reason, now)

    def _close(self, reason: str) -> Event:
        self._local_open = False
        return super()._close(reason)

    def _refresh(self, now: float) -> tuple[Event, ...]:
        if self._fail_mode == "open" and self._degraded and self._state == _OPEN:
            if now >= self._open_until:
                self._open_until = now + HOLD  # stays open until the store is back
            return ()
        return super()._refresh(now)  # (which calls this again after a hung probe's re-open)

    def _apply_force(self, force: str | None) -> Event | None:
        event = super()._apply_force(force)
        if self.remote:
            self._backend.submit(self, "sync", ())  # runs reconverge_op: the force or "none"
        self._unforce = force is None
        return event

    def adopt(self, reply: Reply, *, sync: bool = False, message: bool = False) -> None:
        """Take Redis' state, unless it is older than what this breaker has seen. `sync`: the
        reply to a (re)connection, which puts the breaker (back) in shared mode."""
        now = self._now()
        event = None
        with self._lock:
            if sync:
                if self._local_open and reply.state in ("closed", "half_open"):
                    return  # read before a local trip: the next reconnection publishes it
                self.remote, self._degraded, self._fail_mode = True, False, "local"
                self._local_open = False
            elif not self.remote:
                return  # degraded or detached: the reconnection's reply will bring it back
            if reply.epoch == self._epoch and reply.gen < self.rgen:
                return  # an older reply overtaken by a newer one
            if reply.state not in ("forced_open", "forced_closed"):
                self._unforce = False  # a removed force is gone from Redis (or never was)
            if reply.gen != self.rgen or reply.epoch != self._epoch:
                self._deny_until = 0.0
            self.rgen, self._epoch = reply.gen, reply.epoch
            if not message:  # a script's reply (a message carries no counts)
                self._reply = reply
            if self._options.force is None:
                event = self._follow(reply, reply.reason or "shared", now)
        if event is not None:
            self._emit(event)

    def _follow(self, reply: Reply, reason: str, now: float) -> Event | None:
        target = _STATES.get(reply.state, _CLOSED)
        if target == _OPEN:
            self._reopens = reply.reopens
            event = None
            if self._state != _OPEN:
                self._opened_at = now
                event = self._enter(_OPEN, reason, open_for=reply.remaining, shared=True)
            self._open_until = now + reply.remaining
            return event
        if target == self._state:
            return None
        if target == _HALF_OPEN:
            self._open_until = min(self._open_until, now)
            return self._enter(_HALF_OPEN, reason, shared=True)
        if target == _CLOSED:
            self._reset_counts()
        return self._enter(target, reason, shared=True)

    # -- the store's health --------------------------------------------------------------------

    def degrade(self, on_error: str, *, only_if_degraded: bool = False) -> None:
        """The store failed: fall back to `on_error` until `adopt(..., sync=True)`.

        `only_if_degraded` (a reload changed ``on_error``): a breaker that is degraded now moves
        to the new fallback at once, any other is left alone. Leaving ``"closed"`` for
        ``"local"`` runs the local rules from closed; leaving ``"open"`` for ``"local"`` lets
        the hold lapse into a local probe (the open state may be a real trip)."""
        now = self._now()
        event = None
        with self._lock:
            if only_if_degraded and (not self._degraded or self._fail_mode == on_error):
                return
            before = self._fail_mode if self._degraded else None
            self.remote, self._degraded, self._fail_mode = False, True, on_error
            self._local_open = self._local_open and on_error == "local"
            self._leases.clear()
            self._zero_batch()
            if self._options.force is None:
                if on_error == "open" and self._state != _OPEN:
                    self._opened_at = now
                    event = self._enter(_OPEN, "store_unavailable")
                    self._open_until = now + HOLD
                elif on_error == "closed" and self._state != _FORCED_CLOSED:
                    event = self._enter(_FORCED_CLOSED, "store_unavailable")
                elif on_error == "local" and before == "closed" and self._state == _FORCED_CLOSED:
                    event = self._enter(_CLOSED, "store_unavailable")
        if event is not None:
            self._emit(event)

    def detach(self) -> None:
        """The backend closed: from now on a plain local breaker, in the state it is in."""
        event = None
        with self._lock:
            self.remote = False
            self._fail_mode = "local"
            self._leases.clear()
            if self._degraded and self._state == _FORCED_CLOSED and self._options.force is None:
                event = self._enter(_CLOSED, "store_closed")
            self._degraded = False
        if event is not None:
            self._emit(event)

    def reconverge_op(self) -> tuple[str, tuple[Arg, ...]]:
        """What to run on (re)connecting and on resyncs: publish (renew) a force or a local
        trip, else read Redis."""
        now = self._now()
        with self._lock:
            force = self._options.force
            if force is not None or self._unforce:  # (_unforce: removed, not yet published)
                return "force", (force or "none", FORCE_TTL_MS)
            if self._local_open and self._fail_mode == "local" and self._state == _OPEN:
                left = max(self._open_until - now, 0.0)
                return "open", (max(1, round(left * 1000)), self._reopens, "local_trip")
            if self._local_open and self._state == _HALF_OPEN:
                return "open", (1, self._reopens, "local_trip")
        return "report", (0,) * 6

    @property
    def degraded(self) -> bool:
        """True from a store failure until this breaker has reconverged with Redis."""
        return self._degraded

    def snapshot(self) -> dict[str, object]:
        out = super().snapshot()
        reply = self._reply
        out.update(
            shared=True,
            degraded=self._degraded,
            store_generation=self.rgen,
            store_consecutive_failures=None if reply is None else reply.consecutive,
            store_window_calls=None if reply is None else reply.calls,
            store_window_failures=None if reply is None else reply.failures,
        )
        return out
