"""`async with guard(name):` and `with guard(name):`: one attempt under the policy.

A block is one attempt: the breaker admits it (or raises CircuitOpenError), the bulkhead gives it
a slot, and in async code one timer bounds it at min(total, attempt). Retries and fallbacks need
a callable to run again, so they apply to `call`, `call_sync` and the decorator only.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._attempts import admit, count_full, wait_slot
from ._timeout import Deadline
from .exceptions import BulkheadFullError, GuardTimeoutError

if TYPE_CHECKING:
    from ._guard import Guard

__all__ = ["AttemptScope"]


class AttemptScope:
    __slots__ = ("_bulkhead", "_guard", "_limit", "_permit", "_started", "_t0", "_timer")

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._permit = 0
        self._bulkhead = False
        self._timer: Deadline | None = None
        limits = [x for x in (guard._total, guard._attempt) if x is not None]
        self._limit = min(limits) if limits else None
        self._started = 0.0
        self._t0 = 0.0

    def _admit(self) -> bool:
        """Count the call and take a breaker permit; False in disabled mode (nothing to do)."""
        guard = self._guard
        if guard.mode == "disabled":
            return False
        guard.metrics.start()
        try:
            self._permit = admit(guard, guard.breaker)
        except BaseException:
            guard.metrics.finish(-1, 0.0)
            raise
        self._started = guard._clock.now()
        self._t0 = self._started
        return True

    def _unwind_admit(self) -> None:
        guard = self._guard
        if guard.breaker is not None:
            guard.breaker.on_release(self._permit)
        guard.metrics.finish(-1, 0.0)

    async def enter_async(self, task: asyncio.Task[object] | None) -> None:
        if not self._admit():
            return
        guard = self._guard
        bulkhead = guard.bulkhead
        if bulkhead is not None and guard.mode == "enforce":
            loop = asyncio.get_running_loop()
            try:
                slot = bulkhead.enter(loop)
                if slot is not None:
                    await wait_slot(guard, bulkhead, slot, loop, None)
            except BaseException as exc:
                self._unwind_admit()
                if isinstance(exc, BulkheadFullError):
                    count_full(guard)
                raise
        self._bulkhead = bulkhead is not None and guard.mode == "enforce"
        if self._limit is not None and task is not None and guard.mode == "enforce":
            loop = asyncio.get_running_loop()
            self._timer = Deadline.at(loop, task, loop.time() + self._limit)

    def enter_sync(self) -> None:
        if not self._admit():
            return
        guard = self._guard
        bulkhead = guard.bulkhead
        if bulkhead is not None and guard.mode == "enforce":
            try:
                bulkhead.acquire_sync(None)
            except BaseException:
                self._unwind_admit()
                raise
            self._bulkhead = True

    def exit(self, exc: BaseException | None) -> bool:
        """Record the outcome; raises GuardTimeoutError when our timer cut the block short."""
        guard = self._guard
        if guard.mode == "disabled":
            return False
        if self._bulkhead and guard.bulkhead is not None:
            guard.bulkhead.release()
        duration = guard._clock.now() - self._started
        breaker = guard.breaker
        timer = self._timer
        error = exc
        if timer is not None:
            if not isinstance(exc, asyncio.CancelledError):
                timer.disarm()
            elif timer.expired():
                error = GuardTimeoutError(guard.name, "attempt", self._limit or 0.0)
                guard.metrics.count("timeouts")
        if error is None:
            if breaker is not None:
                breaker.on_success(self._permit, duration)
            guard.metrics.finish(1, duration)
            return False
        if not isinstance(error, Exception):
            if breaker is not None:
                breaker.on_release(self._permit)
            guard.metrics.finish(-1, duration)
            return False
        if breaker is not None:
            breaker.on_failure(self._permit, error, duration)
        guard.metrics.finish(0, duration)
        if error is not exc:
            raise error from None
        return False
