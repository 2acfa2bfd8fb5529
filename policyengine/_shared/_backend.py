"""The Redis state backend: a daemon thread running an asyncio loop that owns all Redis I/O.

Guards never wait on Redis on the closed path: breakers decide from their cached state and hand
outcome batches to this loop, which every `FLUSH_EVERY` seconds (at once after a failure) runs the
``report`` script for each breaker with something to report and adopts the state it returns.
A pub/sub listener on ``{prefix}:events`` applies other processes' transitions within a round trip.
The only synchronous round trip is a half-open probe lease asked for off the event loop (a
worker thread), bounded by ``[state] timeout`` (see `_leases`).

Failures: every command has the ``[state] timeout`` and redis-py's retries are off, so a counting
script is never re-run (a batch whose reply was lost is dropped, never sent twice). The first
failure marks the backend degraded and every shared breaker falls back to `on_error`; a PING every
`RECOVER_EVERY` seconds looks for the store, and once it answers each breaker reconverges (a local
open state is published, otherwise Redis wins) before it goes back to shared mode.

A reload that changes `[state]` retunes this backend (`retune`) or replaces it (`close`: the
last batches are flushed, and its breakers detach into plain local breakers). After a fork the
child gets a loop, thread and clients of its own (`_after_fork`). Connections: `_link`; probe
leases: `_leases`; heartbeats and quorum breakers: `_fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from .._config.models import Policy, StateOptions
from .._patterns.breaker import Breaker
from .._registry.fork import abandon
from .._runtime.clock import Clock
from .._telemetry.events import Event
from ._address import parse_url
from ._fleet import Fleet, QuorumBreaker, QuorumStore
from ._link import Link
from ._listener import listen
from ._scripts import LUA, Arg
from ._shared_breaker import SharedBreaker
from ._store import RedisStore

__all__ = ["RedisBackend"]

logger = logging.getLogger("policyengine")

FLUSH_EVERY = 0.05  # outcome batches go out at least this often
MIN_GAP = 0.005  # and at most this often (a failure asks for an early flush)
RECOVER_EVERY = 0.25  # while degraded: how often the store is tried again
RESYNC_EVERY = 5.0  # re-read every breaker this often, in case a pub/sub message was lost


class RedisBackend:
    """Shared breaker state in Redis for one engine. See the module docstring."""

    def __init__(self, state: StateOptions, clock: Clock, emit: Callable[[Event], None]) -> None:
        self.options = state
        self.timeout = state.timeout
        self.on_error = state.on_error
        self.prefix = state.prefix
        self.channel = f"{state.prefix}:events"
        self._emit = emit
        # wire name -> breaker; a breaker dropped by a reload (no longer `shared`) goes away
        self._breakers: weakref.WeakValueDictionary[str, SharedBreaker]
        self._breakers = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._degraded = False
        self._degraded_since: float | None = None
        self.connected = False  # True from the first reply
        self._closing = False
        self._resync_at = 0.0
        self._retry_at = 0.0
        self.errors = 0
        self.dropped_batches = 0
        self.last_error: str | None = None
        self._listener: asyncio.Task[None] | None = None
        self.address = parse_url(state.url)  # ValueError: reported at the url's line
        self.link = Link(self.address, state.timeout)  # loop, tasks, clients
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="policyengine-redis", daemon=True)
        self.fleet = Fleet(self)

    @property
    def client(self) -> Any:
        return self.link.client

    _client = client

    @property
    def subscriber(self) -> Any:  # (blocks on pub/sub reads)
        return self.link.subscriber

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.link.loop

    _loop = loop

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        return self.link.tasks

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # -- the engine's side ---------------------------------------------------------------------

    def breaker_factory(
        self, name: str, policy: Policy, clock: Clock, emit: Callable[[Event], None]
    ) -> Breaker:
        """A plain `Breaker`, or a `SharedBreaker` when the policy's breaker is `shared`."""
        options = policy.breaker
        assert options is not None
        observe = policy.mode == "observe"
        if not options.shared:
            return Breaker(name, options, clock, emit, observe=observe)
        if options.shared == "quorum":
            quorum = QuorumBreaker(name, options, clock, emit, self, observe=observe)
            with self._lock:
                self.fleet.add(quorum)
                if not self._thread.is_alive() and not self._closing:
                    self._thread.start()
            self.wake()
            return quorum
        breaker = SharedBreaker(name, options, clock, emit, self, self.prefix, observe=observe)
        with self._lock:
            self._breakers[breaker.store.wire] = breaker
            if not self._thread.is_alive() and not self._closing:
                self._thread.start()  # on the first shared breaker: none, no thread
        if self._degraded:
            breaker.store.degrade(self.on_error)
        self.wake()
        return breaker

    def status(self) -> dict[str, Any]:
        """For `engine.status()["state"]`: where the state lives and whether it is reachable."""
        since = self._degraded_since
        breakers = list(self._breakers.values())
        # from the moment a breaker falls back until every breaker has reconverged
        degraded = any(b.degraded for b in breakers) if breakers else self._degraded
        return {
            "backend": "redis",
            "url": self.address.redacted(),
            "prefix": self.prefix,
            "on_error": self.on_error,
            "timeout": self.timeout,
            "connected": self.connected and not degraded,
            "degraded": degraded,
            "degraded_for": None if since is None else round(time.monotonic() - since, 3),
            "errors": self.errors,
            "last_error": self.last_error,
            "dropped_batches": self.dropped_batches,
            "shared_breakers": sorted(b.name for b in breakers),
            **self.fleet.status(),
        }

    def close(self) -> None:
        """Flush what is pending (bounded by the timeout), stop the loop; breakers go local."""
        if self._closing:
            return
        with self._lock:
            self._closing = True
            started = self._thread.ident is not None
        if not started:  # never used (no shared breaker): no thread to stop, only its loop
            self.link.loop.close()
        self.wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(self.timeout * 4 + 1.0)
        for breaker in list(self._breakers.values()):
            breaker.store.detach()

    def shared_breakers(self) -> list[SharedBreaker]:
        return list(self._breakers.values())

    def same_store(self, state: StateOptions) -> bool:
        """True if `state` names this backend's store and keys (it may differ in `on_error` and
        `timeout`, which `retune` applies in place)."""
        opts = self.options
        return (state.backend, state.url, state.prefix) == (opts.backend, opts.url, opts.prefix)

    def retune(self, state: StateOptions) -> None:
        """Take a reload's new `on_error` and `timeout` in place (`same_store(state)`): breakers
        keep their shared state, batch and fallback. A new `on_error` applies at once to the
        degraded ones; a new `timeout` replaces the clients on the loop (and resubscribes), the
        old ones closed once a command started on them has had its time."""
        assert self.same_store(state), "retune keeps the store: build a new backend instead"
        with self._lock:
            old_timeout = self.timeout
            self.options = state
            self.on_error = state.on_error
            self.timeout = state.timeout
            if state.timeout != old_timeout and not self._closing:
                if self._thread.ident is None:  # no loop yet: the clients were never used
                    self.link.rebuild(state.timeout)
                else:
                    self.link.call_soon(self._swap_clients, old_timeout)
        for breaker in list(self._breakers.values()):
            breaker.store.degrade(state.on_error, only_if_degraded=True)

    def _after_fork(self) -> bool:
        """In a forked child: a loop, thread and clients of its own (True), the thread started
        at once if the parent's was; the inherited ones are abandoned unclosed (their sockets
        and epoll instance are the parent's too). The breakers stay registered and resync at
        the first tick; what they had batched is the parent's to report. A degraded backend
        stays degraded and recovers as in the parent; a closed one stays closed (False)."""
        link = self.link
        abandon(link.loop, link.client, link.subscriber, link.tasks, self._listener)
        self._lock = threading.Lock()
        started = self._thread.ident is not None
        self._listener = None
        self._wake = asyncio.Event()
        self.link.renew(clients=not self._closing)
        self._thread = threading.Thread(target=self._run, name="policyengine-redis", daemon=True)
        if self._closing:
            self.link.loop.close()  # wake() and submit() find a closed loop, as after close()
            for breaker in list(self._breakers.values()):
                breaker.store.detach()
            return False
        self.fleet.after_fork()
        self.connected = False  # until this process's own first reply
        self._resync_at = 0.0  # read every breaker at the first tick
        for breaker in list(self._breakers.values()):
            breaker.store.take_batch()  # counted by the parent, which reports them
            breaker.store.op_lock = None  # (the parent's loop's)
        if started:
            self._thread.start()
        return True

    # -- the breakers' side (any thread) -------------------------------------------------------

    def store(self, wire: str) -> RedisStore | QuorumStore | None:
        breaker = self._breakers.get(wire)
        return self.fleet.store(wire) if breaker is None else breaker.store

    def resync_soon(self) -> None:
        """Re-read every breaker at the next tick (pub/sub messages may have been missed)."""
        self._resync_at = 0.0
        self.wake()

    def wake(self) -> None:
        """Flush soon (a failure was counted, or a breaker needs syncing)."""
        self.link.call_soon(self._wake.set)

    def submit(self, breaker: RedisStore, op: str, args: tuple[Arg, ...]) -> None:
        """Run one script for `breaker` without waiting (probe outcomes, forced states)."""
        self.start_job(lambda: self._apply(breaker, op, args))

    def sync_later(self, store: RedisStore, delay: float) -> None:
        """Read `store`'s state again after `delay` (when an override lapses)."""
        self.link.call_soon(self.link.loop.call_later, delay, self.submit, store, "sync", ())

    def start_job(self, job: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Start `job()` on the loop as a task of this backend; False if it is closing."""
        return not self._closing and self.link.start(job)

    def fail(self, exc: BaseException) -> None:
        """Record a store failure; the first one degrades every shared breaker."""
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            first = not self._degraded
            self._degraded = True
            if first:
                self._degraded_since = time.monotonic()
                self._retry_at = time.monotonic() + RECOVER_EVERY
        if not first:
            return
        logger.warning(
            "policyengine: shared state store unreachable (%s); breakers fall back to %r",
            self.last_error,
            self.on_error,
        )
        for breaker in list(self._breakers.values()):
            breaker.store.degrade(self.on_error)
        self._emit(
            Event("store_degraded", "*", {"error": self.last_error, "on_error": self.on_error})
        )

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = self.link.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    def _restart_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        self._listener = asyncio.get_running_loop().create_task(listen(self))

    def rotate_subscriber(self) -> None:
        """(On the loop, after a lost subscription.) A cluster's next node for pub/sub."""
        if not self._closing:
            self.link.next_node()

    def _swap_clients(self, grace: float) -> None:
        """(On the loop, for `retune`.) New clients with the new timeout, a new subscription on
        them; the old clients are closed after `grace` (a command started on one is bounded by
        the timeout in force when it started), or at shutdown, whichever comes first."""
        if self._closing:
            return  # _main is shutting down and closes the clients in force
        self.link.swap(grace, self.timeout)
        self._restart_listener()

    async def _main(self) -> None:
        self._restart_listener()
        try:
            await self.link.ready()
        except Exception as exc:
            self.fail(exc)
        last = 0.0
        try:
            while not self._closing:
                try:
                    async with asyncio.timeout(FLUSH_EVERY):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                gap = last + MIN_GAP - time.monotonic()
                if gap > 0 and not self._closing:
                    await asyncio.sleep(gap)
                self._wake.clear()
                last = time.monotonic()
                await self._tick()
            if not self._degraded:
                await self._tick()  # the last batches
                with contextlib.suppress(Exception):
                    await self.fleet.leave()
        finally:
            await self.link.shutdown(*([self._listener] if self._listener else []))

    async def _tick(self) -> None:
        if self._degraded and (time.monotonic() < self._retry_at or not await self._recover()):
            return
        now = time.monotonic()
        resync = now >= self._resync_at
        if resync:
            self._resync_at = now + RESYNC_EVERY
        jobs: list[Coroutine[Any, Any, None]] = []
        for breaker in [b.store for b in list(self._breakers.values())]:
            if not breaker.remote:
                jobs.append(self._apply(breaker, "sync", ()))
                continue
            batch = breaker.take_batch()
            if batch is not None:
                seen, counts, serial = batch
                jobs.append(self._apply(breaker, "report", counts, seen=seen, serial=serial))
            if resync:  # a full read (or a forced state renewed)
                jobs.append(self._apply(breaker, "sync", ()))
        if jobs:
            await asyncio.gather(*jobs)
        await self.fleet.tick(now)

    async def _recover(self) -> bool:
        try:
            await self.link.reach(LUA)  # (a cluster or Sentinel: with fresh clients)
        except Exception as exc:
            self.fail(exc)
            self._retry_at = time.monotonic() + RECOVER_EVERY
            return False
        with self._lock:
            since, self._degraded, self._degraded_since = self._degraded_since, False, None
        after = 0.0 if since is None else time.monotonic() - since
        logger.warning("policyengine: shared state store is back after %.2fs", after)
        self._restart_listener()  # its connection may be dead without knowing it
        self._emit(Event("store_recovered", "*", {"after": round(after, 3)}))
        return True

    async def _apply(
        self,
        breaker: RedisStore,
        op: str,
        args: tuple[Arg, ...],
        *,
        seen: int | None = None,
        serial: int = 0,
    ) -> None:
        try:
            reply = await breaker.run(op, args, seen)
        except Exception:
            if op == "report" and any(args):
                self.dropped_batches += 1
            return
        breaker.adopt(reply, sync=op == "sync" and not self._degraded, serial=serial)
