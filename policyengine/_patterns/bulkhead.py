"""Bulkhead: at most `max_concurrent` calls at once, `max_queue` waiting, each for `max_wait`.

One counter serves coroutines (on any loop) and threads alike. The free-slot path is a counter
bump under a short lock, cheaper than `asyncio.Semaphore`. A released slot is handed straight to
the oldest waiter (FIFO, no barging), so a waiter's permit is never stolen and never counted twice.
Queue waits run on the event loop's timer (real time), never the engine's clock.

Resizing (a hot reload) changes the limits in place: permits held by calls in flight stay counted,
and raising the limit wakes waiters at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..exceptions import BulkheadFullError

__all__ = ["Bulkhead"]

_running_loop = asyncio._get_running_loop

_WAITING, _GRANTED, _GONE = 0, 1, 2


class _Waiter:
    __slots__ = ("event", "future", "loop", "state")

    def __init__(
        self, future: asyncio.Future[None] | None, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self.future = future
        self.loop = loop
        self.event = threading.Event() if future is None else None
        self.state = _WAITING

    def wake(self) -> None:
        """Called with the bulkhead lock held, after `state` became _GRANTED."""
        if self.event is not None:
            self.event.set()
        elif self.future is not None and self.loop is not None:
            if _running_loop() is self.loop:
                _resolve(self.future)  # same loop: no self-pipe wake-up needed
            else:
                self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Bulkhead:
    """Counts running calls and queues the overflow; `kind = "threads"` also owns a pool."""

    __slots__ = (
        "_lock",
        "_pool",
        "_waiters",
        "active",
        "kind",
        "max_concurrent",
        "max_queue",
        "max_wait",
        "name",
    )

    def __init__(
        self,
        name: str,
        max_concurrent: int,
        max_queue: int = 0,
        max_wait: float | None = None,
        kind: str = "async",
    ) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.kind = kind
        self.active = 0
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The policy's own thread pool (kind = "threads"), sized to the limit."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.max_concurrent, thread_name_prefix=f"policyengine-{self.name}"
            )
        return self._pool

    def try_acquire(self) -> bool:
        """Take a free slot if one is free and nobody waits; never blocks."""
        with self._lock:
            if self.active < self.max_concurrent and not self._waiters:
                self.active += 1
                return True
            return False

    def enter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """Take a slot (None), or join the queue: the future resolves when a slot is handed
        over. Raises BulkheadFullError when the queue is full. One lock, no coroutine: the
        guard awaits the future itself when no deadline bounds the wait (see `leave_queue`)."""
        with self._lock:
            if self.active < self.max_concurrent and not self._waiters:
                self.active += 1
                return None
            if len(self._waiters) >= self.max_queue:
                raise self._full()
            waiter = _Waiter(loop.create_future(), loop)
            self._waiters.append(waiter)
            return waiter.future

    def leave_queue(self, future: asyncio.Future[None]) -> None:
        """A caller stops waiting on `future` (cancelled): hand on a slot granted meanwhile."""
        with self._lock:
            for waiter in self._waiters:
                if waiter.future is future:
                    waiter.state = _GONE
                    self._waiters.remove(waiter)
                    return
        self.release()  # no longer queued, so it was granted: pass the slot on

    def _full(self) -> BulkheadFullError:
        return BulkheadFullError(self.name, self.max_concurrent, self.max_queue)

    def _enqueue(self, waiter: _Waiter) -> bool:
        """Queue `waiter`, or grant at once; False when the queue is full."""
        with self._lock:
            if self.active < self.max_concurrent and not self._waiters:
                self.active += 1
                waiter.state = _GRANTED
                return True
            if len(self._waiters) >= self.max_queue:
                return False
            self._waiters.append(waiter)
            return True

    def _give_up(self, waiter: _Waiter) -> bool:
        """The waiter stops waiting. True if it holds a permit after all (granted meanwhile)."""
        with self._lock:
            if waiter.state == _GRANTED:
                return True
            waiter.state = _GONE
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
            return False

    def _wait_budget(self, remaining: float | None) -> float | None:
        if self.max_wait is None:
            return remaining
        if remaining is None:
            return self.max_wait
        return min(self.max_wait, remaining)

    def acquire_sync(self, remaining: float | None = None) -> None:
        """The blocking twin of `acquire`, for threads."""
        if self.try_acquire():
            return
        waiter = _Waiter(None, None)
        if not self._enqueue(waiter):
            raise self._full()
        if waiter.state == _GRANTED:
            return
        assert waiter.event is not None
        budget = self._wait_budget(remaining)
        try:
            granted = waiter.event.wait(None if budget is None else max(0.0, budget))
        except BaseException:  # KeyboardInterrupt while queued: leave the queue cleanly
            if self._give_up(waiter):
                self.release()
            raise
        if not granted and not self._give_up(waiter):
            raise self._full()

    def release(self) -> None:
        """Return a slot: to the oldest live waiter if there is one, else to the pool."""
        with self._lock:
            while self._waiters and self.active <= self.max_concurrent:
                waiter = self._waiters.popleft()
                if waiter.state == _WAITING:
                    waiter.state = _GRANTED
                    waiter.wake()
                    return
            self.active -= 1

    def resize(self, max_concurrent: int, max_queue: int, max_wait: float | None) -> None:
        """Change the limits in place (hot reload); held permits stay counted."""
        with self._lock:
            self.max_concurrent = max_concurrent
            self.max_queue = max_queue
            self.max_wait = max_wait
            while self._waiters and self.active < self.max_concurrent:
                waiter = self._waiters.popleft()
                if waiter.state == _WAITING:
                    waiter.state = _GRANTED
                    self.active += 1
                    waiter.wake()
            if self._pool is not None and self._pool._max_workers < max_concurrent:
                self._pool._max_workers = max_concurrent

    def set_limit(self, max_concurrent: int) -> None:
        """A new limit (an adaptive bulkhead's algorithm moved it): growing hands free slots to
        the oldest waiters at once; shrinking admits nobody until enough calls ended."""
        with self._lock:
            self.max_concurrent = max_concurrent
            while self._waiters and self.active < max_concurrent:
                waiter = self._waiters.popleft()
                if waiter.state == _WAITING:
                    waiter.state = _GRANTED
                    self.active += 1
                    waiter.wake()

    def switch_kind(self, kind: str) -> None:
        """A reload changed `kind` (the same object, so the slots held stay counted); a pool no
        longer needed is shut down without waiting: its threads end once their calls finish."""
        self.kind = kind
        if kind != "threads":
            self.close()

    def _after_fork(self) -> bool:
        """In a forked child (see `_registry.fork`): a fresh lock, no waiters (their threads and
        loops are the parent's), and no pool: the inherited one counts workers that do not exist
        here, so the next call starts a new one. True if a pool was dropped. Permits held by calls
        in flight in the parent's other threads stay counted (those calls never end here)."""
        self._lock = threading.Lock()
        for waiter in self._waiters:
            waiter.state = _GONE
        self._waiters = deque()
        pool, self._pool = self._pool, None
        return pool is not None

    def close(self) -> None:
        """Let the pool's threads end; a later call starts a new pool (guards outlive close)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=False)
