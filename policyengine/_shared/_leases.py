"""A shared breaker's probe leases: held by probes, fetched ahead for the event loop, denied.

A local probe permit also needs a lease from Redis (exactly `half_open_calls` across the fleet).
Off the event loop (a worker thread) it is asked for inline, bounded by ``[state] timeout``; on
the event loop no round trip is ever waited for: the call is refused with ``retry_after`` = the
round trip bound while the lease is fetched in the background (`_fetch`), and the next call
takes it from the pocket. A fetched lease nobody takes within `POCKET_HOLD` is given back; a
denial is remembered for `DENY_CACHE` seconds, or until the next transition arrives. The fields
are guarded by the breaker's lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import TYPE_CHECKING

from .._patterns.breaker import State
from .._patterns.outcomes import DECIDE_AGAIN

if TYPE_CHECKING:
    from ._store import RedisStore
    from ._wire import Reply

__all__ = ["ProbeLeases"]

DENY_CACHE = 0.05  # a denied probe lease is not asked for again this soon (unless state moves)
POCKET_HOLD = 0.5  # a lease fetched for the event loop and not taken is given back after this


class ProbeLeases:
    """The leases of one `RedisStore` (see the module docstring)."""

    __slots__ = ("_deny_until", "_fetching", "_held", "_pocket", "store")

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._held: dict[int, int] = {}  # local probe id -> Redis lease id
        self._pocket: list[tuple[int, int]] = []  # (lease, rgen) fetched for the next probe
        self._fetching = False  # a lease is being fetched for the event loop
        self._deny_until = 0.0  # a denied probe lease is not asked for again before this

    def clear(self) -> None:
        """(Under the lock.) A transition or a fallback: every lease of the period is gone."""
        self._held.clear()
        self._pocket.clear()

    def new_period(self) -> None:
        """(Under the lock.) Redis moved on: a denial no longer holds."""
        self._deny_until = 0.0

    def done(self, probe: int, outcome: str, slow: bool) -> None:
        """(Under the lock.) A probe ended: its lease goes back with its outcome."""
        lease = self._held.pop(probe, None)
        if lease is not None and self.store.remote:
            self.store.backend.submit(self.store, "done", (lease, outcome, int(slow)))

    def admit(self, probe: int, now: float) -> float | None:
        """(Outside the lock.) `OutcomeStore.admit_probe` for a shared breaker."""
        store = self.store
        if not store.remote:
            return None
        machine = store.breaker
        assert machine is not None
        with machine.lock:
            while self._pocket:
                lease, gen = self._pocket.pop()
                if gen == store.rgen and machine.has_probe(probe):
                    self._held[probe] = lease
                    return None
        if now < self._deny_until:
            return self._deny_until - now
        if asyncio._get_running_loop() is not None:  # on an event loop: never wait
            self._fetch()
            return store.backend.timeout  # ask again once the lease is here: one round trip
        reply = self._ask()
        if reply is None:  # the store failed: decide as on_error says
            return DECIDE_AGAIN
        store.adopt(reply)
        if reply.lease:
            with machine.lock:
                if machine.has_probe(probe):
                    self._held[probe] = reply.lease
                    return None
            store.backend.submit(store, "done", (reply.lease, "release", 0))
        else:
            self._deny_until = now + DENY_CACHE
        if reply.state == "open":
            return reply.remaining
        return machine.open_duration if reply.state == "forced_open" else reply.wait

    def _ask(self) -> Reply | None:
        """A lease, waiting at most `timeout` (off the loop). None: the store failed."""
        backend = self.store.backend
        if backend.closing or threading.current_thread() is backend.thread:
            return None
        future = asyncio.run_coroutine_threadsafe(self.store.run("probe", ()), backend.loop)
        try:
            return future.result(backend.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            backend.fail(TimeoutError(f"no probe lease within {backend.timeout}s"))
        except Exception:  # already recorded by run
            pass
        return None

    def _fetch(self) -> None:
        """Ask for a lease without waiting; `fetched` gets the reply (None: it failed)."""
        store = self.store
        assert store.breaker is not None
        with store.breaker.lock:
            if self._fetching:
                return
            self._fetching = True

        async def fetch() -> None:
            try:
                reply: Reply | None = await store.run("probe", ())
            except Exception:  # already recorded by run
                reply = None
            self.fetched(reply)

        if not store.backend.start_job(fetch):
            self.fetched(None)

    def fetched(self, reply: Reply | None) -> None:
        """(On the backend's loop.) Pocket the lease for the next probe, or give it back if
        the period it was asked for is over."""
        store = self.store
        machine = store.breaker
        assert machine is not None
        now = machine.now()
        with machine.lock:
            self._fetching = False
        if reply is None:
            return
        store.adopt(reply)
        if not reply.lease:
            self._deny_until = now + DENY_CACHE
            return
        with machine.lock:
            keep = store.remote and reply.gen == store.rgen and machine.current == State.HALF_OPEN
            if keep:
                self._pocket.append((reply.lease, reply.gen))
        if keep:
            store.backend.loop.call_later(POCKET_HOLD, self._unpocket, reply.lease)
        else:
            store.backend.submit(store, "done", (reply.lease, "release", 0))

    def _unpocket(self, lease: int) -> None:
        """(On the backend's loop.) Give back a pocketed lease nobody took."""
        store = self.store
        assert store.breaker is not None
        with store.breaker.lock:
            for item in self._pocket:
                if item[0] == lease:
                    self._pocket.remove(item)
                    break
            else:
                return
        store.backend.submit(store, "done", (lease, "release", 0))
