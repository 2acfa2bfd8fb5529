"""The Redis state backend: a daemon thread running an asyncio loop that owns all Redis I/O.

Guards never wait on Redis on the closed path: breakers decide from their cached state and hand
outcome batches to this loop, which every `FLUSH_EVERY` seconds (at once after a failure) runs the
``report`` script for each breaker with something to report and adopts the state it returns.
A pub/sub listener on ``{prefix}:events`` applies other processes' transitions within a round trip.
The only synchronous round trip is a half-open probe lease asked for off the event loop (a
worker thread), bounded by ``[state] timeout``; on the event loop leases are fetched here, in
the background (`fetch_lease`).

Failures: every command has the ``[state] timeout`` and redis-py's retries are off, so a counting
script is never re-run (a batch whose reply was lost is dropped, never sent twice). The first
failure marks the backend degraded and every shared breaker falls back to `on_error`; a PING every
`RECOVER_EVERY` seconds looks for the store, and once it answers each breaker reconverges (a local
open state is published, otherwise Redis wins) before it goes back to shared mode.

A reload that changes `[state]` either retunes this backend (`retune`: a new `on_error` or
`timeout`, same store) or replaces it: the engine then closes it after the swap (`close`: the
last batches are flushed, bounded by the timeout, and its breakers, which calls still in flight
may use, detach into plain local breakers).

After `os.fork()` the child has no loop thread: `_after_fork` (run by the engine's fork hook, see
`_fork`) gives it a loop, thread, clients and asyncio primitives of its own, and abandons the
inherited ones unclosed (their sockets and epoll instance are the parent's too). The breakers stay
registered and resync at the child's first tick; the outcomes they had batched are the parent's
to report. A degraded backend stays degraded and recovers as in the parent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import NoScriptError

from .._breaker import Breaker
from .._clock import Clock
from .._events import Event
from .._fork import abandon
from .._models import Policy, StateOptions
from ._address import parse_url
from ._fleet import Fleet, QuorumBreaker, QuorumStore
from ._listener import listen
from ._scripts import LUA, LUA_SHA, Arg
from ._shared_breaker import SharedBreaker
from ._store import RedisStore
from ._wire import Reply

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
        self._clock = clock
        self._emit = emit
        # wire name -> breaker; a breaker dropped by a reload (no longer `shared`) goes away
        self._breakers: weakref.WeakValueDictionary[str, SharedBreaker]
        self._breakers = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._degraded = False
        self._degraded_since: float | None = None
        self._connected = False
        self._closing = False
        self._resync_at = 0.0
        self._retry_at = 0.0
        self.errors = 0
        self.dropped_batches = 0
        self.last_error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._op_locks: dict[str, asyncio.Lock] = {}  # loop thread only
        self.address = parse_url(state.url)  # ValueError: reported at the url's line
        self._sub_attempt = 0  # (a cluster's subscriber moves to the next node on failures)
        self._client, self.subscriber = self._new_clients()  # (the subscriber blocks on reads)
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="policyengine-redis", daemon=True)
        self.fleet = Fleet(self)

    @property
    def client(self) -> Any:
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def degraded(self) -> bool:
        return self._degraded

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
            "connected": self._connected and not degraded,
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
            self._loop.close()
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
        """Take a reload's new `on_error` and `timeout` in place (`same_store(state)`): every
        breaker stays registered and keeps its shared state, its batch and its local fallback.

        `on_error`: breakers degraded now fall back to the new mode at once (the others when the
        store next fails); the connections are kept. `timeout`: bounds every command from now
        on; the clients, whose socket timeouts were set from the old one, are replaced on the
        loop (which also resubscribes), and the old ones closed once a command started on them
        has had its time.
        """
        assert self.same_store(state), "retune keeps the store: build a new backend instead"
        with self._lock:
            old_timeout = self.timeout
            self.options = state
            self.on_error = state.on_error
            self.timeout = state.timeout
            if state.timeout != old_timeout and not self._closing:
                if self._thread.ident is None:  # no loop yet: the clients were never used
                    self._client, self.subscriber = self._new_clients()
                else:
                    self._call_soon(self._swap_clients, old_timeout)
        for breaker in list(self._breakers.values()):
            breaker.store.degrade(state.on_error, only_if_degraded=True)

    def _after_fork(self) -> bool:
        """In a forked child: a loop, thread and clients of its own (True), the thread started
        at once if the parent's was. A closing or closed backend stays closed (False)."""
        abandon(self._loop, self._client, self.subscriber, self._tasks, self._listener)
        self._lock = threading.Lock()
        started = self._thread.ident is not None
        self._tasks = set()
        self._listener = None
        self._op_locks = {}
        self._wake = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="policyengine-redis", daemon=True)
        if self._closing:
            self._loop.close()  # wake() and submit() find a closed loop, as after close()
            for breaker in list(self._breakers.values()):
                breaker.store.detach()
            return False
        self._client, self.subscriber = self._new_clients()
        self.fleet.after_fork()
        self._connected = False  # until this process's own first reply
        self._resync_at = 0.0  # read every breaker at the first tick
        for breaker in list(self._breakers.values()):
            breaker.store.take_batch()  # counted by the parent, which reports them
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
        self._call_soon(self._wake.set)

    def _call_soon(self, callback: Callable[..., object], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            pass

    def lease(self, breaker: RedisStore) -> Reply | None:
        """Ask for a probe lease, waiting at most `timeout`. None: the store failed (degraded)."""
        if self._closing or threading.current_thread() is self._thread:
            return None
        coro = self._op(breaker, "probe", ())
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self.fail(TimeoutError(f"no probe lease within {self.timeout}s"))
        except Exception:  # already recorded by _op
            pass
        return None

    def submit(self, breaker: RedisStore, op: str, args: tuple[Arg, ...]) -> None:
        """Run one script for `breaker` without waiting (probe outcomes, forced states)."""
        self.start_job(lambda: self._apply(breaker, op, args))

    def fetch_lease(self, store: RedisStore) -> None:
        """Ask for a probe lease without waiting; `store.fetched` gets the reply (None: the
        store failed, or this backend is closing)."""

        async def fetch() -> None:
            try:
                reply: Reply | None = await self._op(store, "probe", ())
            except Exception:  # already recorded by _op
                reply = None
            store.fetched(reply)

        if not self.start_job(fetch):
            store.fetched(None)

    def sync_later(self, store: RedisStore, delay: float) -> None:
        """Read `store`'s state again after `delay` (when an override lapses)."""
        self._call_soon(self._loop.call_later, delay, self.submit, store, "sync", ())

    def unpocket_later(self, store: RedisStore, lease: int, delay: float) -> None:
        """(On the loop.) Give `lease` back after `delay` unless a probe took it."""
        self._loop.call_later(delay, store.unpocket, lease)

    def start_job(self, job: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Start `job()` on the loop as a task of this backend; False if it is closing."""
        if self._closing:
            return False

        def start() -> None:
            task = self._loop.create_task(job())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            self._loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed
            return False
        return True

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
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    def _restart_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        self._listener = asyncio.get_running_loop().create_task(listen(self))

    def _new_clients(self) -> tuple[Any, Any]:
        address, timeout = self.address, self.timeout
        return address.client(timeout, timeout), address.subscriber(timeout, self._sub_attempt)

    def rotate_subscriber(self) -> None:
        """(On the loop, after a lost subscription.) A cluster's next node for pub/sub."""
        if self.address.kind != "cluster" or self._closing:
            return
        old, self._sub_attempt = self.subscriber, self._sub_attempt + 1
        self.subscriber = self.address.subscriber(self.timeout, self._sub_attempt)
        task = self._loop.create_task(self._retire((old,), 0.0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _swap_clients(self, grace: float) -> None:
        """(On the loop, for `retune`.) New clients with the new timeout, a new subscription on
        them; the old clients are closed after `grace` (a command started on one is bounded by
        the timeout in force when it started), or at shutdown, whichever comes first."""
        if self._closing:
            return  # _main is shutting down and closes the clients in force
        old = (self._client, self.subscriber)
        self._client, self.subscriber = self._new_clients()
        self._restart_listener()
        task = self._loop.create_task(self._retire(old, grace * 2 + 0.1))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retire(self, clients: tuple[Any, ...], after: float) -> None:
        try:
            await asyncio.sleep(after)
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _ready(self) -> None:
        """A cluster client learns the slot map first: several round trips, bounded apart."""
        if self.address.kind == "cluster":
            async with asyncio.timeout(max(1.0, self.timeout * 10)):
                await self._client.initialize()

    async def _main(self) -> None:
        self._restart_listener()
        try:
            await self._ready()
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
            tasks = [*self._tasks, *([self._listener] if self._listener else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._client.aclose()
            await self.subscriber.aclose()

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
        if self.address.kind != "single":  # after a failover or a lost node: fresh topology
            self._sub_attempt += 1
            self._swap_clients(self.timeout)
        try:
            await self._ready()
            async with asyncio.timeout(self.timeout):
                await self._client.ping()
                await self._client.script_load(LUA)
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
            reply = await self._op(breaker, op, args, seen)
        except Exception:
            if op == "report" and any(args):
                self.dropped_batches += 1
            return
        breaker.adopt(reply, sync=op == "sync" and not self._degraded, serial=serial)

    async def _op(
        self, breaker: RedisStore, op: str, args: tuple[Arg, ...], seen: int | None = None
    ) -> Reply:
        """One script call, never retried (a NOSCRIPT reply means it did not run: EVAL it).

        One breaker's calls run one at a time, in order; ``sync`` (publish a force or a local
        trip, else read) is decided when it runs, so it always carries the latest settings.
        """
        lock = self._op_locks.get(breaker.wire)
        if lock is None:
            lock = self._op_locks[breaker.wire] = asyncio.Lock()
        async with lock:
            if op == "sync":
                op, args = breaker.reconverge_op()
            head: tuple[Arg, ...] = (op, self.channel, breaker.wire)
            argv = (*head, breaker.rgen if seen is None else seen, *breaker.args, *args)
            try:
                async with asyncio.timeout(self.timeout):
                    try:
                        raw = await self._client.evalsha(LUA_SHA, 1, breaker.key, *argv)
                    except NoScriptError:
                        raw = await self._client.eval(LUA, 1, breaker.key, *argv)
            except Exception as exc:
                self.fail(exc)
                raise
        self._connected = True
        return Reply.parse(raw)
