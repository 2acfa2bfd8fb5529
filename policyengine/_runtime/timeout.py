"""Timeouts without a timer per call: a deadline queue per (guard, loop, length).

`asyncio.timeout` allocates a context manager and pushes a timer onto the loop's heap on every
use, then cancels it. A guard's attempts mostly share one length (`min(total, attempt)`), so
their deadlines arrive in the order the attempts started: a FIFO queue is already sorted. Each
attempt appends a small entry; one loop timer, armed for the oldest live entry, cancels the tasks
whose deadline passed and re-arms itself for the next one. Finished entries are dropped from the
head lazily. Deadlines of other lengths (a retry bounded by the total deadline) use a plain
`loop.call_at`.

The uncancel bookkeeping is the same as `asyncio.timeout`'s: an outer cancellation that races
the deadline still propagates as `CancelledError`.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Deadline", "DeadlineQueue"]


class Deadline:
    """One attempt's deadline. `expired()` after a CancelledError tells ours from an outer one."""

    __slots__ = ("_cancelling", "_handle", "done", "fired", "task", "when")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self.task = task
        self.when = when
        self._cancelling = task.cancelling()
        self.fired = False
        self.done = False
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def at(
        cls, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], when: float
    ) -> Deadline:
        """A deadline with a timer of its own (for lengths the queue does not serve)."""
        deadline = cls(task, when)
        deadline._handle = loop.call_at(when, deadline.fire)
        return deadline

    def fire(self) -> None:
        if not self.done:
            self.fired = True
            self.task.cancel()

    def disarm(self) -> None:
        """The attempt ended without a CancelledError: drop the deadline."""
        self.done = True
        if self._handle is not None:
            self._handle.cancel()
        if self.fired:
            self.task.uncancel()  # the attempt swallowed our cancel: take it back

    def expired(self) -> bool:
        """After a CancelledError: True if this deadline caused it (not an outer cancel)."""
        self.done = True
        if self._handle is not None:
            self._handle.cancel()
        return self.fired and self.task.uncancel() <= self._cancelling


class DeadlineQueue:
    """Deadlines on one loop in non-decreasing order, served by a single timer.

    `add` keeps the order itself: a deadline earlier than the newest one gets its own timer.
    """

    __slots__ = ("_entries", "_handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._entries: deque[Deadline] = deque()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task[object], when: float) -> Deadline:
        entries = self._entries
        while entries and entries[0].done:
            entries.popleft()
        if entries and when < entries[-1].when:
            return Deadline.at(self.loop, task, when)
        entry = Deadline(task, when)
        entries.append(entry)
        if self._handle is None:
            self._handle = self.loop.call_at(entry.when, self._fire)
        return entry

    def _fire(self) -> None:
        self._handle = None
        entries = self._entries
        now = self.loop.time()
        while entries:
            entry = entries[0]
            if not entry.done and entry.when > now:
                self._handle = self.loop.call_at(entry.when, self._fire)
                return
            entries.popleft()
            entry.fire()

    def __len__(self) -> int:
        return len(self._entries)
