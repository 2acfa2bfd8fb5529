"""The state backend's link to the store: its event loop, the jobs running on it, its clients.

One `Link` per `RedisBackend`. The clients come from the `Address` (one server, a cluster, or a
master behind Sentinel) and are replaced as a whole: on a new timeout (`swap`), after a failover
or a lost node (the backend swaps them before it looks for the store again), after a fork
(`renew`). A replaced client is closed once a command started on it has had its time (`retire`).
Everything here runs on the loop's thread except `start` and `call_soon`, which any thread may
call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import NoScriptError

from ._address import Address

__all__ = ["Link"]

Job = Callable[[], Coroutine[Any, Any, None]]


class Link:
    """The loop, its tracked tasks, and the clients (`client` for scripts, `subscriber`)."""

    def __init__(self, address: Address, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.attempt = 0  # (a cluster's subscriber moves to the next node on each failure)
        self.loop = asyncio.new_event_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.client, self.subscriber = self._clients()

    def _clients(self) -> tuple[Any, Any]:
        address, timeout = self.address, self.timeout
        return address.client(timeout, timeout), address.subscriber(timeout, self.attempt)

    def renew(self, *, clients: bool = True) -> None:
        """After a fork (the caller abandoned the inherited ones): a new loop and task set, and
        new clients unless the backend is closed."""
        self.loop = asyncio.new_event_loop()
        self.tasks = set()
        if clients:
            self.client, self.subscriber = self._clients()

    def rebuild(self, timeout: float) -> None:
        """New clients for `timeout`, before the loop has ever run (nothing to retire)."""
        self.timeout = timeout
        self.client, self.subscriber = self._clients()

    # -- from any thread -----------------------------------------------------------------------

    def call_soon(self, callback: Callable[..., object], *args: object) -> bool:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def start(self, job: Job) -> bool:
        """Run `job()` as a tracked task on the loop; False if the loop is closed."""
        return self.call_soon(lambda: self.spawn(job()))

    # -- on the loop ---------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def swap(self, grace: float, timeout: float | None = None) -> None:
        """New clients (with `timeout`, if given); the old ones close after `grace` * 2."""
        old = (self.client, self.subscriber)
        if timeout is not None:
            self.timeout = timeout
        self.client, self.subscriber = self._clients()
        self.spawn(self.retire(old, grace * 2 + 0.1))

    def next_node(self) -> None:
        """A cluster's subscriber moves to its next node (after a lost subscription)."""
        if self.address.kind == "cluster":
            self.attempt += 1
            old, self.subscriber = (
                self.subscriber,
                self.address.subscriber(self.timeout, self.attempt),
            )
            self.spawn(self.retire((old,), 0.0))

    async def retire(self, clients: tuple[Any, ...], after: float) -> None:
        try:
            await asyncio.sleep(after)
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def ready(self) -> None:
        """A cluster client learns the slot map first: several round trips, bounded apart."""
        if self.address.kind == "cluster":
            async with asyncio.timeout(max(1.0, self.timeout * 10)):
                await self.client.initialize()

    async def reach(self, script: str) -> None:
        """Is the store there? Fresh clients first for a cluster or Sentinel (the slot map or
        the master may have moved), then PING and load `script`, bounded by the timeout."""
        if self.address.kind != "single":
            self.attempt += 1
            self.swap(self.timeout)
        await self.ready()
        async with asyncio.timeout(self.timeout):
            await self.client.ping()
            await self.client.script_load(script)

    async def run_script(self, sha: str, script: str, key: str, *argv: Any) -> Any:
        """One script call on one key, never retried (NOSCRIPT: it did not run, so EVAL it)."""
        async with asyncio.timeout(self.timeout):
            try:
                return await self.client.evalsha(sha, 1, key, *argv)
            except NoScriptError:
                return await self.client.eval(script, 1, key, *argv)

    async def shutdown(self, *others: asyncio.Task[None]) -> None:
        """Cancel every task (and `others`), then close the clients."""
        tasks = [*self.tasks, *others]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()
        await self.subscriber.aclose()
