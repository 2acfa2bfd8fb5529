"""The load generator: a steady stream of calls per guard, each one its own task.

Callers never see a traceback: whatever a guarded call raises (the dependency's 503, a
`CircuitOpenError`, a `BulkheadFullError`, a timeout) is counted by the guard's own metrics,
which is what the view shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from .._registry.handle import GuardHandle

__all__ = ["LoadGenerator"]

MAX_IN_FLIGHT = 300  # per stream: a dependency that hangs must not grow the task set forever


class LoadGenerator:
    """Calls `request(endpoint)` through `handle` `rate` times a second, for each stream."""

    def __init__(self, request: Callable[[str], Awaitable[str]]) -> None:
        self._request = request
        self._streams: list[tuple[GuardHandle, str, float]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.caller_errors: dict[str, int] = {}

    def add(self, handle: GuardHandle, endpoint: str, rate: float) -> None:
        self._streams.append((handle, endpoint, rate))
        self.caller_errors.setdefault(handle.name, 0)

    async def run(self) -> None:
        """Generate load until cancelled; then cancel every call still running."""
        try:
            async with asyncio.TaskGroup() as tg:
                for handle, endpoint, rate in self._streams:
                    tg.create_task(self._stream(handle, endpoint, rate))
        finally:
            await self._cancel_calls()

    async def _stream(self, handle: GuardHandle, endpoint: str, rate: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        next_at = loop.time()
        running: set[asyncio.Task[None]] = set()
        while True:
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = loop.time()  # fell far behind (a paused process): do not burst
            if len(running) >= MAX_IN_FLIGHT:
                continue
            task = asyncio.create_task(self._one(handle, endpoint))
            running.add(task)
            self._tasks.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(self._tasks.discard)

    async def _one(self, handle: GuardHandle, endpoint: str) -> None:
        try:
            await handle.call(self._request, endpoint)
        except Exception:
            self.caller_errors[handle.name] += 1

    async def _cancel_calls(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(tasks, timeout=2.0)
