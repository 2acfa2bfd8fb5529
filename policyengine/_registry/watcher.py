"""Watcher: re-read the policy files when they change; here the parts both watchers share, and
the thread watcher of programs without an asyncio loop (the loop's own is `_registry.loopwatch`).

Why the parent directory, not the file: editors and deploy tools save by writing a temporary
file and renaming it over the old one (an atomic replace). A watch on the file itself follows
the old inode, which is gone after the first save, so every later save would go unseen. A
Kubernetes ConfigMap volume is worse: `policies.toml` is a symlink to `..data/policies.toml`, and
an update swaps the `..data` symlink to a new timestamped directory, so no event ever names the
file. Watching the directory (not recursively) sees all of these: in-place writes, renames,
deletes and re-creates of the file, and the `..data` / `..<timestamp>` entries of a ConfigMap.
When a directory of policies is loaded, that directory is watched and every `*.toml` counts.

Events are only a hint to look: every look re-reads the files and compares the content hash
(`PolicySet.version`) with the policies in force, so touching a file without changing it, or a
burst of events for one save, applies nothing. A policy file that is a symlink into another
directory is watched there too. A slow periodic re-read (`backstop`) catches what events miss
(some network file systems). Polling is used when `force_polling` is true, or when it is None
and `WATCHFILES_FORCE_POLLING` is set (as in `watchfiles`); `WATCHFILES_POLL_DELAY_MS`
overrides `poll_interval`.

Which watcher: an engine bound to an asyncio loop (`load()` called inside a running loop, or
`engine.bind(loop)`) watches on the loop (`_registry.loopwatch.LoopWatcher`: inotify read by the
loop, no thread racing a busy loop for the GIL). Otherwise `Watcher` below: a daemon thread.

The thread runs watchfiles' `RustNotify` (the engine behind `watchfiles.watch`) with a
`threading.Event` as its stop event, so it needs no asyncio loop and `stop()` returns within
about `step_ms`. The notifier is created in `start()`, so the watch is in place when `start()`
returns; the thread then re-reads once, catching an edit made between the load and the watch.

After `os.fork()` the child has no watcher thread and the notifier's own Rust thread is gone too:
`_after_fork` (run by the engine's fork hook, see `_registry.fork`) starts a new notifier and
thread. The inherited notifier is abandoned, never used nor closed: a lock its dead Rust thread held
would block either for ever, and its inotify and wake-up descriptors are shared with the parent's.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchfiles._rust_notify import RustNotify

from .fork import abandon

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["WatchBase", "Watcher"]

logger = logging.getLogger("policyengine")

_DELETED = 3  # watchfiles.Change.deleted


def _env_polling() -> bool:
    """`WATCHFILES_FORCE_POLLING` as watchfiles reads it (and polling on WSL, as it does)."""
    value = os.environ.get("WATCHFILES_FORCE_POLLING")
    if value:
        return value.lower() not in {"false", "disable", "disabled"}
    return "microsoft-standard" in platform.uname().release.lower()


def _env_poll_delay_ms(default: int) -> int:
    value = os.environ.get("WATCHFILES_POLL_DELAY_MS", "")
    return int(value) if value.isdecimal() else default


class WatchBase:
    """What both watchers share: options, what to watch, what counts as a change.

    `debounce_ms` / `step_ms` group a burst of events into one look (watchfiles semantics: a look
    happens `step_ms` after the last event, at most `debounce_ms` after the first). `settle` is
    how long a look that finds an invalid (or suddenly empty) set waits for a save still under way
    before it reports the failure. `backstop` seconds (0: never) between periodic re-reads.
    """

    on_loop = False

    def __init__(
        self,
        engine: Engine,
        path: str | os.PathLike[str],
        *,
        force_polling: bool | None = None,
        poll_interval: float = 0.3,
        debounce_ms: int = 50,
        step_ms: int = 10,
        backstop: float = 30.0,
        settle: float = 0.1,
    ) -> None:
        self.engine = engine
        self.path = Path(os.path.abspath(path))
        self.is_dir = self.path.is_dir()
        self.directory = self.path if self.is_dir else self.path.parent
        self.polling = _env_polling() if force_polling is None else force_polling
        self.poll_delay_ms = _env_poll_delay_ms(max(1, round(poll_interval * 1000)))
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.backstop = backstop
        self.settle = settle
        self.looks = 0  # re-reads done (events, backstop and start-up), for tests and status
        self._last_look = time.monotonic()
        self._target = str(self.path)  # what the file resolves to (set when the watch opens)

    def _alive(self) -> bool:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What is watched and how, for `Engine.status()`."""
        return {
            "directory": str(self.directory),
            "on": "loop" if self.on_loop else "thread",
            "polling": self.polling,
            "poll_interval": self.poll_delay_ms / 1000 if self.polling else None,
            "backstop": self.backstop or None,
            "alive": self._alive(),
            "looks": self.looks,
        }

    def _linked_directory(self) -> Path | None:
        """Where a policy file that is a symlink into another directory really lives (its
        saves happen there, not in ours); None for a plain file or a link within our
        directory (a ConfigMap's ``..data``, already covered)."""
        if self.is_dir:
            return None
        target = Path(os.path.realpath(self.path)).parent
        if target == self.directory or target.is_relative_to(self.directory):
            return None
        return target

    def _fingerprint(self) -> tuple[Any, ...]:
        """Identity, size and times of the files (symlinks followed, so a ConfigMap swap shows)."""
        directory = str(self.directory)
        names = [self.path.name]
        if self.is_dir:
            try:
                names = sorted(n for n in os.listdir(directory) if n.endswith(".toml"))
            except OSError:
                return ()
        out: list[tuple[Any, ...]] = []
        for name in names:
            try:
                st = os.stat(os.path.join(directory, name))
            except OSError:
                out.append((name,))
                continue
            out.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(out)

    def _relevant(self, changed: str) -> bool:
        """Does an event on `changed` (a path in the directory) concern the policies?"""
        name = os.path.basename(changed)
        if name.startswith(".."):  # ConfigMap: `..data`, `..data_tmp`, `..2026_01_01_...`
            return True
        if os.path.dirname(changed) != str(self.directory):  # the linked file's directory
            return os.path.basename(self._target) == name
        return name.endswith(".toml") if self.is_dir else name == self.path.name

    def _backstop_due(self) -> bool:
        return self.backstop > 0 and time.monotonic() - self._last_look >= self.backstop


class Watcher(WatchBase):
    """Watches the directory holding `path` from a thread and reloads `engine` when its files
    change (see `WatchBase` for the options)."""

    def __init__(self, engine: Engine, path: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(engine, path, **options)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._notify: RustNotify | None = None

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Set the watch up (in this thread, so it is in place on return) and start the thread."""
        if self._thread is not None:
            return
        if not self.polling:
            self._notify = self._open()
        self._thread = threading.Thread(
            target=self._run, name=f"policyengine-watch:{self.path.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; returns once the thread has ended (within about `step_ms`), unless
        called from the thread itself (a listener), which then ends after the listener."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)  # the thread closes the notifier on its way out

    def _after_fork(self) -> bool:
        """In a forked child: watch again if the parent was watching (True), with a new
        notifier, stop event and thread. A watcher that was stopped (or never started) stays so.
        """
        if self._thread is None or self._stop.is_set():
            return False
        notify, self._notify = self._notify, None
        if notify is not None:
            abandon(notify)
        self._stop = threading.Event()
        if self._thread is threading.current_thread():
            # forked by a listener on this very thread, which goes on: it only needs a notifier
            if not self.polling:
                self._notify = self._open()
            return True
        self._thread = None
        self.start()  # the new thread looks once at start: an edit made around the fork counts
        return True

    # ---------------------------------------------------------------- loop
    def _open(self) -> RustNotify | None:
        """A notifier on the directory; None if the directory does not exist now (retried), or
        if notifications are unavailable (e.g. the inotify watch limit): then poll instead."""
        paths = [str(self.directory)]
        self._target = os.path.realpath(self.path)
        linked = self._linked_directory()
        if linked is not None and linked.is_dir():
            paths.append(str(linked))
        try:
            return RustNotify(paths, False, False, 0, False, False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("policyengine: cannot watch %s (%s); polling", self.directory, exc)
            self.polling = True
            return None

    def _run(self) -> None:
        try:
            seen = self._fingerprint()
            self._look()  # an edit made between the load and the watch
            while not self._stop.is_set():
                if self.polling:
                    seen = self._poll_once(seen)
                else:
                    self._wait_for_events()
        except BaseException:  # nothing may end the watch silently
            logger.exception("policyengine: the watcher of %s stopped", self.path)
        finally:
            notify, self._notify = self._notify, None
            if notify is not None:
                notify.close()

    def _wait_for_events(self) -> None:
        notify = self._notify
        if notify is None:  # the directory is gone (or was never there): wait for it
            if not self._stop.wait(self.poll_delay_ms / 1000):
                self._notify = self._open()
                if self._notify is not None or self._backstop_due():
                    self._look()
            return
        result = notify.watch(self.debounce_ms, self.step_ms, self._timeout_ms(), self._stop)
        if result == "stop":
            return
        look = self._backstop_due()
        if isinstance(result, set):
            if (_DELETED, str(self.directory)) in result:  # watch again once it is back
                notify.close()
                self._notify = None
            look = look or any(self._relevant(path) for _, path in result)
        if look:
            self._look()

    def _poll_once(self, seen: tuple[Any, ...]) -> tuple[Any, ...]:
        """One polling step. Our own `stat` comparison, not watchfiles' poller: that one compares
        modification times in whole seconds and misses a same-size save within the same second."""
        if self._stop.wait(self.poll_delay_ms / 1000):
            return seen
        now = self._fingerprint()
        if now != seen or self._backstop_due():
            self._look()
        return now

    def _timeout_ms(self) -> int:
        """Wait for events at most until the next backstop re-read (0: no limit)."""
        if self.backstop <= 0:
            return 0
        left = self._last_look + self.backstop - time.monotonic()
        return max(1, int(left * 1000))

    def _look(self) -> None:
        """Re-read and apply if the content changed; a failure is reported once, never raised."""
        self._last_look = time.monotonic()
        self.looks += 1
        try:
            self.engine.reload(settle=self.settle)
        except BaseException:  # nothing a reload raises may end the watch
            logger.exception("policyengine: reloading %s failed unexpectedly", self.path)
