"""`async with guard(name):` and `with guard(name):`: one attempt under the policy.

A block is one attempt: the breaker admits it (or raises CircuitOpenError), the layers admit it,
the bulkhead gives it a slot, and in async code one timer bounds it at min(total, attempt).
Retries and fallbacks need a callable to run again, so they apply to `call`, `call_sync` and the
decorator only. In observe mode the block is counted and the breaker fed, nothing enforced.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .attempt import Attempt
from .timeout import Deadline

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["AttemptScope"]


class AttemptScope:
    """The attempt of one `with` block: entered, then exited with the block's exception."""

    __slots__ = ("_attempt", "_guard", "_limit", "_t0", "_wait")

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._attempt: Attempt | None = None
        limits = [x for x in (guard.total, guard.attempt_timeout) if x is not None]
        self._limit = min(limits) if limits else None
        self._t0 = 0.0
        self._wait = 0.0  # what a layer asked the block to wait (a rate-limit token later)

    def _admit(self) -> Attempt | None:
        """Count the call, take a breaker permit and the layers'; None in disabled mode."""
        guard = self._guard
        if guard.mode == "disabled":
            return None
        guard.metrics.start()
        attempt = Attempt(guard, 0)
        try:
            attempt.renew()
            if guard.layers and guard.mode == "enforce":
                self._wait = attempt.pass_layers(guard.clock.now(), self._limit)
        except BaseException:
            guard.metrics.finish(-1, 0.0)
            raise
        self._t0 = attempt.started = guard.clock.now()
        self._attempt = attempt
        return attempt

    def _unwind(self, attempt: Attempt, exc: BaseException) -> None:
        attempt.give_back("rejected" if isinstance(exc, Exception) else "cancelled", exc)
        self._guard.metrics.finish(-1, 0.0)

    async def enter_async(self, task: asyncio.Task[object] | None) -> None:
        attempt = self._admit()
        if attempt is None:
            return
        guard = self._guard
        if guard.mode != "enforce":
            return
        loop = asyncio.get_running_loop()
        if self._wait > 0.0:
            try:
                await guard.clock.sleep(self._wait)
            except BaseException as exc:
                self._unwind(attempt, exc)
                raise
        try:
            future = attempt.enter(loop)
            if future is not None:
                await attempt.wait_slot(future, loop, None)
        except BaseException:
            guard.metrics.finish(-1, 0.0)  # the attempt gave everything back itself
            raise
        if self._limit is not None and task is not None:
            attempt.timer = Deadline.at(loop, task, loop.time() + self._limit)

    def enter_sync(self) -> None:
        attempt = self._admit()
        if attempt is None:
            return
        guard = self._guard
        if self._wait > 0.0:
            try:
                guard.clock.sleep_sync(self._wait)
            except BaseException as exc:
                self._unwind(attempt, exc)
                raise
        bulkhead = guard.bulkhead
        if bulkhead is not None and guard.mode == "enforce":
            try:
                bulkhead.acquire_sync(None)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    guard.count_rejection("bulkhead_full")
                self._unwind(attempt, exc)
                raise
            attempt.slot = True

    def exit(self, exc: BaseException | None) -> bool:
        """Record the outcome; raises GuardTimeoutError when our timer cut the block short."""
        attempt = self._attempt
        if attempt is None:
            return False
        guard = self._guard
        now = guard.clock.now()
        duration = now - self._t0
        if exc is None:
            attempt.succeeded()
            guard.metrics.finish(1, duration)
            return False
        total = self._limit is not None and self._limit == guard.total
        error = attempt.failed(exc, total, 1, now)
        if not isinstance(error, Exception):
            guard.metrics.finish(-1, duration)
            return False
        guard.metrics.finish(-1 if guard.ignores(error) else 0, duration)
        if error is not exc:
            raise error from None
        return False
