"""The Redis outcome store of a shared breaker: batching, probe leases, and following Redis.

A shared breaker is the plain state machine (`_patterns.breaker.Breaker`) with this store:

- shared mode (``remote``): closed outcomes bump a few counters (the batch the backend reports,
  judged in Redis on the whole fleet's counts) and the local counts. When the local counts alone
  already meet a rule, the breaker trips here at once (issue 14: no calls admitted while the
  report is on its way) and keeps its batch, whose reply confirms the trip (Redis opened) or
  denies it (the fleet's counts do not meet the rule: back to closed). Transitions arrive from
  script replies and pub/sub (`adopt`); a reply older than the last one seen is ignored.
- probes: a local probe permit also needs a lease from Redis. Off the event loop (a worker
  thread) the lease is asked for inline, bounded by ``[state] timeout``; on the event loop no
  round trip is ever waited for: the call is refused with ``retry_after`` = the round trip
  bound while the lease is fetched in the background, and the next call takes it (a lease
  nobody takes soon is given back). A denial is remembered briefly (see `_leases`).
- degraded (`degrade`: the store failed): ``on_error = "local"`` runs this process's own rules
  (a trip made then is published on reconnection), ``"open"`` rejects every call, ``"closed"``
  admits every call. Until the first reply the breaker behaves as ``"local"``.
- reconnection (`reconverge_op`, then `adopt(sync=True)`): a force of the file is published
  (and renewed on every resync), then a local trip, otherwise Redis wins.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .._config.models import BreakerOptions
from .._patterns.breaker import Breaker, State
from .._patterns.outcomes import LocalCounts
from ._leases import ProbeLeases
from ._scripts import LUA, LUA_SHA, Arg, breaker_key, config_args, wire_name
from ._wire import Reply

if TYPE_CHECKING:
    from ._backend import RedisBackend

__all__ = ["RedisStore"]

HOLD = 0.25  # on_error = "open": the retry_after of rejections while the store is away
FORCE_TTL_MS = 20_000  # a forced state in Redis lapses unless renewed (resyncs run every 5 s)


class RedisStore:
    """Outcomes batched for Redis, probe leases, and the cached copy of Redis' state."""

    __slots__ = (
        "_bad",
        "_bgen",
        "_confirm_at",
        "_degraded",
        "_epoch",
        "_fail_mode",
        "_lead",
        "_local_open",
        "_ok",
        "_reply",
        "_run",
        "_serial",
        "_slow_n",
        "_tail",
        "_tripping",
        "_unforce",
        "_woken",
        "args",
        "backend",
        "breaker",
        "counts",
        "holding",
        "key",
        "leases",
        "name",
        "op_lock",
        "quiet",
        "remote",
        "rgen",
        "wire",
    )

    def __init__(self, name: str, counts: LocalCounts, backend: RedisBackend, prefix: str) -> None:
        self.name = name
        self.key = breaker_key(prefix, name)
        self.wire = wire_name(name)
        self.backend = backend
        self.counts = counts
        self.quiet = False  # every closed outcome is batched
        self.holding = 0.0
        self.breaker: Breaker | None = None  # set by `bind`
        self.remote = False  # True while the cached state is Redis' (set by the first reply)
        self.rgen = -1  # the Redis generation last adopted ...
        self._epoch = -1  # ... and the epoch of the key it belongs to
        self._degraded = False
        self._fail_mode = "local"
        self._local_open = False  # opened by this process while not shared: to publish
        self._unforce = False  # a force removed from the file, not yet removed from Redis
        self.leases = ProbeLeases(self)
        self.op_lock: asyncio.Lock | None = None  # (the backend loop's: one script at a time)
        self._reply: Reply | None = None
        self._serial = 0  # batches taken so far
        self._confirm_at = 0  # a local trip awaits the reply to this batch (0: none)
        self._tripping = False
        self.args: tuple[Arg, ...] = ()
        self._ok = self._bad = self._slow_n = self._lead = self._run = self._tail = 0
        self._bgen = self.rgen
        self._woken = False

    def bind(self, breaker: Breaker) -> None:
        self.breaker = breaker

    def _machine(self) -> Breaker:
        assert self.breaker is not None, "RedisStore.bind() was not called"
        return self.breaker

    # -- the outcome store hooks (under the breaker's lock) ------------------------------------

    def configure(self, options: BreakerOptions) -> bool:
        self.args = config_args(options)
        return self.counts.configure(options)

    def closed(self, failed: bool, slow: bool, tripping: bool) -> str | None:
        counts = self.counts
        if not failed and counts.window is None:  # the hot path: a success, no window
            counts.consecutive = 0
            if self.remote:
                if not self._ok:
                    if not self._bad:
                        self._bgen = self.rgen
                    self._lead = self._tail
                self._ok += 1
                self._tail = 0
                self._slow_n += slow
            return None
        counts.record(failed, slow)  # kept warm: a local trip, and the fallback
        reason = counts.judge(failed) if tripping else None
        if not self.remote:
            return reason
        if not (self._ok or self._bad):
            self._bgen = self.rgen
        if failed:
            self._bad += 1
            self._tail += 1
            self._run = max(self._run, self._tail)
        else:
            if not self._ok:
                self._lead = self._tail
            self._ok += 1
            self._tail = 0
        self._slow_n += slow
        if failed and not self._woken:
            self._woken = True
            self.backend.wake()  # a failure may trip: report it now, not in 50 ms
        self._tripping = reason is not None
        return reason

    def entered(self, state: State, opened_here: bool) -> None:
        self.leases.clear()  # (Redis frees the leases of an ended period by itself)
        if self._tripping and state == State.OPEN:  # a local trip in shared mode
            self._tripping = False
            self._confirm_at = self._serial + 1  # its batch goes out: the reply judges it
            return
        self._confirm_at = 0
        self._zero_batch()  # outcomes of the period that ends are stale
        if opened_here and state == State.OPEN and not self.remote:
            self._local_open = True  # decided here: published when the store is back
        elif opened_here and state == State.CLOSED:
            self._local_open = False

    def probe_done(self, probe: int, outcome: str, slow: bool) -> None:
        self.leases.done(probe, outcome, slow)

    def forced(self, force: str | None) -> None:
        if self.remote:
            self.backend.submit(self, "sync", ())  # runs reconverge_op: the force or "none"
        self._unforce = force is None

    def snapshot(self) -> dict[str, object]:
        reply = self._reply
        return {
            "shared": True,
            "degraded": self._degraded,
            "store_generation": self.rgen,
            "store_state": None if reply is None else reply.state,
            "trip_unconfirmed": self._confirm_at != 0,
            "store_consecutive_failures": None if reply is None else reply.consecutive,
            "store_window_calls": None if reply is None else reply.calls,
            "store_window_failures": None if reply is None else reply.failures,
        }

    # -- probe leases (outside the lock) --------------------------------------------------------

    def admit_probe(self, probe: int, now: float) -> float | None:
        return self.leases.admit(probe, now)

    # -- script calls (on the backend's loop) --------------------------------------------------

    async def run(self, op: str, args: tuple[Arg, ...], seen: int | None = None) -> Reply:
        """One script call, never retried (a NOSCRIPT reply means it did not run: EVAL it).

        This breaker's calls run one at a time, in order; ``sync`` (publish a force or a local
        trip, else read) is decided when it runs, so it always carries the latest settings. A
        failure is recorded (the backend degrades) and raised.
        """
        backend = self.backend
        if self.op_lock is None:
            self.op_lock = asyncio.Lock()
        async with self.op_lock:
            if op == "sync":
                op, args = self.reconverge_op()
            head: tuple[Arg, ...] = (op, backend.channel, self.wire)
            argv = (*head, self.rgen if seen is None else seen, *self.args, *args)
            try:
                raw = await backend.link.run_script(LUA_SHA, LUA, self.key, *argv)
            except Exception as exc:
                backend.fail(exc)
                raise
        backend.connected = True
        return Reply.parse(raw)

    # -- the batch of closed outcomes ----------------------------------------------------------

    def _zero_batch(self) -> None:
        self._ok = self._bad = self._slow_n = self._lead = self._run = self._tail = 0
        self._bgen = self.rgen
        self._woken = False

    def take_batch(self) -> tuple[int, tuple[int, ...], int] | None:
        """The outcomes counted since the last call: their generation, counts and serial."""
        with self._machine().lock:
            if not (self._ok or self._bad):
                return None
            lead = self._lead if self._ok else self._bad
            batch = (self._ok, self._bad, self._slow_n, lead, self._run, self._tail)
            gen = self._bgen
            self._zero_batch()
            self._serial += 1
            return gen, batch, self._serial

    # -- Redis' state --------------------------------------------------------------------------

    def adopt(
        self, reply: Reply, *, sync: bool = False, message: bool = False, serial: int = 0
    ) -> None:
        """Take Redis' state, unless it is older than what this breaker has seen. `sync`: the
        reply to a (re)connection, which puts the breaker (back) in shared mode. `serial`: the
        reply to that batch (it may confirm or deny a local trip)."""
        machine = self._machine()
        now = machine.now()
        event = None
        with machine.lock:
            if sync:
                if self._local_open and reply.state in ("closed", "half_open"):
                    return  # read before a local trip: the next reconnection publishes it
                self.remote, self._degraded, self._fail_mode = True, False, "local"
                self.holding = 0.0
                self._local_open = False
            elif not self.remote:
                return  # degraded or detached: the reconnection's reply will bring it back
            if reply.epoch == self._epoch and reply.gen < self.rgen:
                return  # an older reply overtaken by a newer one
            reason = reply.reason or "shared"
            if self._confirm_at:
                if reply.state in ("closed", "half_open") and serial < self._confirm_at:
                    return  # from before the local trip: the trip's own reply judges it
                if reply.state == "closed":
                    reason = "trip_not_confirmed"
                self._confirm_at = 0
            if reply.state not in ("forced_open", "forced_closed"):
                self._unforce = False  # a removed force is gone from Redis (or never was)
            if reply.gen != self.rgen or reply.epoch != self._epoch:
                self.leases.new_period()
            self.rgen, self._epoch = reply.gen, reply.epoch
            if not message:  # a script's reply (a message carries no counts)
                self._reply = reply
            if machine.forced is None:
                target = State.__members__.get(reply.state.upper(), State.CLOSED)
                event = machine.follow(target, reason, reply.remaining, reply.reopens, now)
        if event is not None:
            machine.publish(event)
        if reply.force_left > 0 and machine.forced is None:  # an override that lapses: read
            self.backend.sync_later(self, reply.force_left + 0.01)  # again then, not in 5 s

    # -- the store's health --------------------------------------------------------------------

    def degrade(self, on_error: str, *, only_if_degraded: bool = False) -> None:
        """The store failed: fall back to `on_error` until `adopt(..., sync=True)`.

        `only_if_degraded` (a reload changed ``on_error``): a breaker that is degraded now moves
        to the new fallback at once, any other is left alone. Leaving ``"closed"`` for
        ``"local"`` runs the local rules from closed; leaving ``"open"`` for ``"local"`` lets
        the hold lapse into a local probe (the open state may be a real trip)."""
        machine = self._machine()
        now = machine.now()
        event = None
        with machine.lock:
            if only_if_degraded and (not self._degraded or self._fail_mode == on_error):
                return
            before = self._fail_mode if self._degraded else None
            pending_trip = self._confirm_at != 0 and machine.current == State.OPEN
            self.remote, self._degraded, self._fail_mode = False, True, on_error
            self.holding = HOLD if on_error == "open" else 0.0
            self._local_open = (self._local_open or pending_trip) and on_error == "local"
            self._confirm_at = 0
            self.leases.clear()
            self._zero_batch()
            state = machine.current
            if machine.forced is None:
                if on_error == "open" and state != State.OPEN:
                    event = machine.move(State.OPEN, "store_unavailable", now, HOLD)
                elif on_error == "closed" and state != State.FORCED_CLOSED:
                    event = machine.move(State.FORCED_CLOSED, "store_unavailable", now)
                elif on_error == "local" and before == "closed" and state == State.FORCED_CLOSED:
                    event = machine.move(State.CLOSED, "store_unavailable", now)
        if event is not None:
            machine.publish(event)

    def detach(self) -> None:
        """The backend closed: from now on a plain local breaker, in the state it is in."""
        machine = self._machine()
        event = None
        with machine.lock:
            self.remote = False
            self._fail_mode = "local"
            self.holding = 0.0
            self.leases.clear()
            forced_closed = machine.current == State.FORCED_CLOSED
            if self._degraded and forced_closed and machine.forced is None:
                event = machine.move(State.CLOSED, "store_closed", machine.now())
            self._degraded = False
        if event is not None:
            machine.publish(event)

    def reconverge_op(self) -> tuple[str, tuple[Arg, ...]]:
        """What to run on (re)connecting and on resyncs: publish (renew) a force or a local
        trip, else read Redis."""
        machine = self._machine()
        now = machine.now()
        with machine.lock:
            force = machine.forced
            if force is not None or self._unforce:  # (_unforce: removed, not yet published)
                return "force", (force or "none", FORCE_TTL_MS)
            state = machine.current
            if self._local_open and self._fail_mode == "local" and state == State.OPEN:
                left = machine.open_left(now)
                return "open", (max(1, round(left * 1000)), machine.reopens, "local_trip")
            if self._local_open and state == State.HALF_OPEN:
                return "open", (1, machine.reopens, "local_trip")
        return "report", (0,) * 6

    @property
    def degraded(self) -> bool:
        return self._degraded
