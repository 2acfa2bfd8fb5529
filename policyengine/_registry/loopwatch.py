"""The loop watcher: detection, debounce and swap on the engine's asyncio loop, no thread.

Why: a watcher thread must win the GIL from a busy loop for every system call it makes, and
loses that race for up to seconds (see `_registry.onloop`). Here the loop does the watching itself:

- an inotify descriptor (`_registry.inotify`) on the watched directories is registered with
  `loop.add_reader`, so an event costs the loop one callback and one `read`;
- a burst of events is grouped by a loop timer (`step_ms` after the last event, at most
  `debounce_ms` after the first, as the thread watcher does);
- the look is handed to the engine's `LoopRunner`: read and compiled off the loop while the loop
  lends the GIL in slices, swapped in on the loop;
- one loop timer serves polling (`force_polling`, or inotify unavailable: `stat` every
  `poll_interval`, done by the runner's worker, since polling is for network file systems,
  where a `stat` may hang), the retry while the directory is missing, and the `backstop`.

Everything the thread watcher handles is handled the same way (the helpers are shared through
`WatchBase`): in-place writes, atomic saves, ConfigMap `..data` swaps, a file symlinked from
another directory (that directory is watched too), delete and re-create of the file or of the
directory, bad edits keeping the last good set.

All of this runs on the loop thread; `start()` and `stop()` may be called from any thread. After
a fork the child must not touch the parent's loop (its epoll instance is shared with the parent):
`_after_fork` abandons the descriptor and the engine watches from a thread instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fork import abandon
from .inotify import IN_DIR_GONE, IN_Q_OVERFLOW, Inotify
from .watcher import WatchBase

if TYPE_CHECKING:
    from .engine import Engine
    from .onloop import LoopRunner

__all__ = ["LoopWatcher"]

logger = logging.getLogger("policyengine")


class LoopWatcher(WatchBase):
    """Watches `path` on `runner.loop` and reloads `engine` through `runner`."""

    on_loop = True

    def __init__(
        self, engine: Engine, path: str | os.PathLike[str], runner: LoopRunner, **options: Any
    ) -> None:
        super().__init__(engine, path, **options)
        self.runner = runner
        self.loop = runner.loop
        self._inotify: Inotify | None = None
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory
        self._dir_wd = -1
        self._debounce: asyncio.TimerHandle | None = None
        self._first: float | None = None  # loop time of the first event of a burst
        self._tick: asyncio.TimerHandle | None = None  # polling, directory retry, backstop
        self._seen: tuple[Any, ...] | None = None  # the poller's last fingerprint (worker)
        self._started = False
        self._stopped = False

    def _alive(self) -> bool:
        return self._started and not self._stopped and not self.loop.is_closed()

    # ----------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Set the watch up on the loop. From another thread while the loop runs, return once it
        is in place; if the loop is not running yet, it is set up when the loop starts."""
        if self.runner.on_loop_thread():
            self._setup()
            return
        ready = threading.Event()
        self.loop.call_soon_threadsafe(self._setup, ready)
        if self.loop.is_running():
            ready.wait(5.0)

    def stop(self) -> None:
        """Stop watching (from any thread; the descriptor is closed on the loop)."""
        self._stopped = True
        if self.runner.on_loop_thread() or not self.loop.is_running():
            self._teardown()
        else:
            try:
                self.loop.call_soon_threadsafe(self._teardown)
            except RuntimeError:  # closed meanwhile
                self._teardown()

    def _after_fork(self) -> bool:
        """In a forked child: stop, touching nothing of the parent's loop (see the module
        docstring); the engine watches from a thread instead."""
        self._stopped = True
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            abandon(inotify)
        return False

    def _setup(self, ready: threading.Event | None = None) -> None:
        try:
            if self._stopped or self._started:
                return
            self._started = True
            if not self.polling:
                self._open()
            self._arm_tick()
            self._look()  # an edit made between the load and the watch
        finally:
            if ready is not None:
                ready.set()

    def _teardown(self) -> None:
        for timer in (self._debounce, self._tick):
            if timer is not None:
                timer.cancel()
        self._debounce = self._tick = None
        self._close_notify()

    # ------------------------------------------------------------- inotify
    def _open(self) -> None:
        """Watch the directory (and a linked file's own directory); stay closed if the
        directory does not exist now (retried), poll if inotify cannot be had."""
        self._target = os.path.realpath(self.path)
        try:
            inotify = Inotify()
        except OSError as exc:
            logger.warning("policyengine: cannot watch %s (%s); polling", self.directory, exc)
            self.polling = True
            return
        try:
            self._dir_wd = inotify.add(str(self.directory))
            self._dirs = {self._dir_wd: str(self.directory)}
            linked = self._linked_directory()
            if linked is not None and linked.is_dir():
                self._dirs[inotify.add(str(linked))] = str(linked)
        except FileNotFoundError:
            inotify.close()
            return
        except OSError as exc:  # e.g. the inotify watch limit
            inotify.close()
            logger.warning("policyengine: cannot watch %s (%s); polling", self.directory, exc)
            self.polling = True
            return
        self._inotify = inotify
        self.loop.add_reader(inotify.fd, self._on_events)

    def _close_notify(self) -> None:
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            if not self.loop.is_closed():
                self.loop.remove_reader(inotify.fd)
            inotify.close()

    def _on_events(self) -> None:
        """The descriptor is readable: drain it, and start (or extend) the debounce."""
        inotify = self._inotify
        if inotify is None or self._stopped:
            return
        relevant = gone = False
        for wd, mask, name in inotify.events():
            if mask & IN_Q_OVERFLOW:
                relevant = True
            elif wd == self._dir_wd and mask & IN_DIR_GONE:
                gone = relevant = True
            elif name and wd in self._dirs:
                relevant = relevant or self._relevant(os.path.join(self._dirs[wd], name))
        if gone:  # watched again once it is back (see `_on_tick`)
            self._close_notify()
            self._arm_tick()
        if relevant:
            self._hint()

    def _hint(self) -> None:
        now = self.loop.time()
        if self._first is None:
            self._first = now
        due = min(now + self.step_ms / 1000, self._first + self.debounce_ms / 1000)
        if self._debounce is not None:
            self._debounce.cancel()
        self._debounce = self.loop.call_at(due, self._debounced)

    def _debounced(self) -> None:
        self._debounce = None
        self._first = None
        if not self._stopped:
            self._look()

    # -------------------------------------------------------------- timer
    def _arm_tick(self) -> None:
        if self._stopped:
            return
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self.polling or self._inotify is None:
            delay = self.poll_delay_ms / 1000
        elif self.backstop > 0:
            delay = max(0.001, self._last_look + self.backstop - time.monotonic())
        else:
            return
        self._tick = self.loop.call_later(delay, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        if self._stopped:
            return
        try:
            if self.polling:
                self.runner.request(self.settle, None, self._poll_changed)
            elif self._inotify is None:  # the directory was missing: is it back?
                self._open()
                if self._inotify is not None or self._backstop_due():
                    self._look()
            elif self._backstop_due():
                self._look()
        finally:
            self._arm_tick()

    def _poll_changed(self) -> bool:
        """(Worker thread.) Did the files change since the last poll (or is the backstop due)?
        Our own `stat` comparison, not watchfiles' poller (see `Watcher._poll_once`)."""
        now = self._fingerprint()
        changed, self._seen = now != self._seen, now
        if changed or self._backstop_due():
            self._last_look = time.monotonic()
            self.looks += 1
            return True
        return False

    def _look(self) -> None:
        """Hand a look to the runner (read off the loop, swap on it); never raises."""
        self._last_look = time.monotonic()
        self.looks += 1
        try:
            self.runner.request(self.settle)
        except Exception:  # nothing may end the watch (the read itself runs in a worker)
            logger.exception("policyengine: reloading %s failed unexpectedly", self.path)

    @property
    def watched(self) -> list[Path]:
        """The directories watched now (none while the directory is missing or when polling)."""
        return [Path(d) for d in self._dirs.values()] if self._inotify is not None else []
