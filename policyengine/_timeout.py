"""Timeouts: one event-loop timer per attempt, armed at min(total deadline, attempt deadline).

`asyncio.timeout` allocates a context manager and reschedules a handle on every use; a guard
needs only "cancel this task at time T, and tell me whether you did". `AttemptTimer` is that: one
`loop.call_at` and one `handle.cancel()`, with the same uncancel bookkeeping `asyncio.timeout`
does, so an outer cancellation that races the timer still wins.
"""

from __future__ import annotations

import asyncio

__all__ = ["AttemptTimer"]


class AttemptTimer:
    """Cancels `task` at loop time `when`; `expired()` tells a timeout from a real cancel."""

    __slots__ = ("_cancelling", "_handle", "_task", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float, task: asyncio.Task[object]):
        self._task = task
        self._cancelling = task.cancelling()
        self.fired = False
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()

    def disarm(self) -> None:
        """The attempt ended normally: drop the timer (and a cancel it may have swallowed)."""
        self._handle.cancel()
        if self.fired:
            self._task.uncancel()

    def expired(self) -> bool:
        """After a CancelledError: True if it was our timer (not an outer cancel)."""
        self._handle.cancel()
        return self.fired and self._task.uncancel() <= self._cancelling
