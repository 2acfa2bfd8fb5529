"""Engine: the registry of guards compiled from one policy source, and its lifecycle.

The guards in force live in one dict that is replaced whole (never mutated) on reload, so a call
sees either the old set or the new one, never a mix. Handles look their guard up by name at each
call, so they stay valid across reloads. How a reload is read, compiled aside and swapped in is
`_registry.reloads`; where the policies come from is `_config.source`; where reloads run (a thread,
or the engine's asyncio loop) is `bind` and `_registry.onloop`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._config.loader import PolicySet
from .._config.source import FileSource, FixedSource, PolicySource
from .._rollout.record import RecordOptions
from .._rollout.recorder import Recording
from .._runtime.clock import Clock, MonotonicClock
from .._runtime.guard import Guard
from .._telemetry.events import Listener, Listeners
from .fork import register
from .handle import GuardHandle
from .reloads import Reloads
from .staging import unknown_guard

__all__ = ["Engine"]

logger = logging.getLogger("policyengine")


class Engine(Reloads):
    """Guards by name, compiled from validated policies; reloadable in place.

    `source` is where the policies come from (`_config.source`: a file, a string, a set with test
    adjustments); it is read now and on every reload. A `PolicySet` is accepted too, with
    reloads read from `path` if one is given.
    """

    def __init__(
        self,
        source: PolicySource | PolicySet,
        *,
        clock: Clock | None = None,
        path: str | Path | None = None,
    ) -> None:
        if isinstance(source, PolicySet):
            initial = source
            allow = initial.allow_modules  # reloads validate as this set was
            again = FileSource(Path(path), allow_modules=allow) if path is not None else None
            source = FixedSource(initial, again)
        else:
            initial = source.read()
        self.source: PolicySource = source
        self.path = source.path
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.listeners = Listeners()
        self._guards: dict[str, Guard] = {}
        self._removed: dict[str, Guard] = {}
        self._handles: dict[str, GuardHandle] = {}
        self._generation = 0  # commits so far; a reload compiled against an older one recompiles
        self._lock = threading.Lock()  # serialises commits, never taken by a call
        self._reload_lock = threading.RLock()  # one read-compare-apply at a time (thread path)
        self._runner: Any = None  # an `_registry.onloop.LoopRunner` once bound to a loop
        self._watcher: Any = None
        self._watch_options: dict[str, Any] = {}
        self._closed = False
        self.reloads = 0
        self.failed_reloads = 0
        self._last_error: str | None = None
        self._changes: dict[str, str] = {}
        self._policy_set = initial
        self.recording = Recording(
            self.clock, self.listeners
        )  # [record] / record(): the trace writer in force
        # the [state] in force and its backend (None: memory); both replaced by a reload that
        # changes [state], under `_lock`, with the guards (see `apply`)
        self._state_options = initial.state
        self._state_backend = self._make_state_backend(initial.state)
        self.apply(initial, initial=True)
        register(self)  # repaired in a forked child (see `_registry.fork`)

    @property
    def strict(self) -> bool:
        """Whether reloads validate strictly (as `load(..., strict=True)` did)."""
        return bool(getattr(self.source, "strict", False))

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this engine watches and reloads on (None: threads; see `bind`)."""
        return None if self._runner is None else self._runner.loop

    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Watch and reload on `loop` (default: the running loop) instead of a thread.

        `load()` called inside a running loop binds to it; call this for an engine made
        elsewhere (at import time, before `asyncio.run`). A thread watcher already running is
        stopped and the watch moves to the loop. May be called from any thread.
        """
        from .onloop import LoopRunner

        loop = loop if loop is not None else asyncio.get_running_loop()
        if self._runner is not None and self._runner.loop is loop:
            return
        self._runner = LoopRunner(self, loop)
        watcher = self._watcher
        if watcher is not None and not self._closed:
            self._watcher = None
            watcher.stop()
            self.watch(**self._watch_options)

    def record(self, path: str | os.PathLike[str] | None, sample: float = 1.0) -> None:
        """Write a trace of every attempt (a `sample` share) to `path`, whatever the file's
        `[record]` says, until the engine closes; None stops. See `_rollout.record`."""
        options = None if path is None else RecordOptions(path=os.fspath(path), sample=sample)
        self.recording.start(options, self._guards)

    # ------------------------------------------------------------ look-ups
    @property
    def policy_set(self) -> PolicySet:
        return self._policy_set

    @property
    def guards(self) -> Mapping[str, Guard]:
        """The compiled guards in force (read-only view of the current snapshot)."""
        return self._guards

    def names(self) -> list[str]:
        return sorted(self._guards)

    def guard(self, name: str) -> GuardHandle:
        """A stable handle for policy `name`; UnknownGuardError if no such policy exists."""
        handle = self._handles.get(name)
        if handle is None:
            self._lookup(name)  # raises UnknownGuardError
            handle = self._handles.setdefault(name, GuardHandle(name, self))
        return handle

    def _lookup(self, name: str) -> Guard:
        """The guard a call uses now (hot path: one dict look-up).

        A reload replaces `_guards` and `_removed` one after the other (see `_commit`), so a
        miss in both, read at two moments, is only believed if no commit happened meanwhile:
        a policy re-added by a reload under way is found, never reported unknown.
        """
        try:
            return self._guards[name]
        except KeyError:
            pass
        while True:
            generation = self._generation
            guard = self._removed.get(name) or self._guards.get(name)
            if guard is not None:
                return guard
            if generation == self._generation:
                raise unknown_guard(name, self._guards) from None

    # ------------------------------------------------------------ listeners
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` for every event of every guard and of reloads."""
        self.listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.listeners.remove(listener)

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Version, load time, files, last error and what each policy kept on the last load."""
        ps = self._policy_set
        return {
            "version": ps.version,
            "loaded_at": self._loaded_at,
            "sources": list(ps.sources),
            "last_error": self._last_error,
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "watching": self._watcher is not None and not self._closed,
            "watch": None if self._watcher is None else self._watcher.describe(),
            "policies": dict(self._changes),
            "removed": sorted(self._removed),
            "warnings": [str(w) for w in ps.warnings],
            "record": self.recording.status(),
            "state": (
                {"backend": "memory"}
                if self._state_backend is None
                else self._state_backend.status()
            ),
        }

    # ------------------------------------------------------------ lifecycle
    def watch(self, **options: Any) -> None:
        """Start watching the source files: on the loop if bound
        (`_registry.loopwatch.LoopWatcher`), else from a thread (`_registry.watcher.Watcher`); the
        options are the same for both."""
        if self.path is None:
            raise RuntimeError("only an engine loaded from a path can watch it")
        if self._closed:
            raise RuntimeError("this engine is closed")
        if self._watcher is None:
            self._watch_options = dict(options)
            runner = self._runner
            if runner is not None and not runner.loop.is_closed():
                from .loopwatch import LoopWatcher

                self._watcher = LoopWatcher(self, self.path, runner, **options)
            else:
                from .watcher import Watcher

                self._watcher = Watcher(self, self.path, **options)
            self._watcher.start()

    def close(self) -> None:
        """Stop watching and release thread pools. `status()` still answers."""
        self._closed = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        for guard in list(self._guards.values()) + list(self._removed.values()):
            if guard.bulkhead is not None:
                guard.bulkhead.close()
        if self._state_backend is not None:
            self._state_backend.close()
        self.recording.close()

    def _after_fork(self) -> None:
        """In a child just forked (see `_registry.fork`): make this engine work without the parent's
        threads. Locks first (a thread of the parent may have held one), then the state backend,
        then the watcher, whose first look reloads through both: a watcher that ran on the
        parent's event loop goes on in a thread (that loop is not this process's; `bind` moves
        it to the child's loop). A closed engine stays closed."""
        self._lock = threading.Lock()
        self._reload_lock = threading.RLock()
        self._runner = None
        self.listeners.release()  # a hold taken mid-reload by a thread the child does not have
        pools = self._repair_parts()
        restarted: list[str] = []
        backend = self._state_backend
        if backend is not None and backend._after_fork():
            restarted.append("the Redis state backend (new loop, thread and connections)")
        watcher = self._watcher
        if watcher is not None and not self._closed:
            if watcher.on_loop:
                watcher._after_fork()  # abandons what it shares with the parent
                self._watcher = None
                self.watch(**self._watch_options)
                restarted.append(f"the watcher of {watcher.path}, in a thread")
            elif watcher._after_fork():
                restarted.append(f"the watcher of {watcher.path}")
        if pools:
            restarted.append(f"{pools} thread pool(s), started again at their next call")
        writer = self.recording.writer
        if writer is not None and not self._closed and writer._after_fork():
            restarted.append(f"the trace writer of {writer.path}")
        logger.log(
            logging.DEBUG if self._closed else logging.INFO,
            "policyengine: forked process %d (parent %d): %s; locks renewed",
            os.getpid(),
            os.getppid(),
            "restarted " + ", ".join(restarted) if restarted else "nothing to restart",
        )

    def _repair_parts(self) -> int:
        """Each guard part's own `_after_fork` (the `_registry.fork` protocol), once per part;
        returns how many thread pools were dropped."""
        done: set[int] = set()
        parts: list[Any] = []
        pools = 0
        backend = self._state_backend
        breakers = [] if backend is None else backend.shared_breakers()
        for guard in (*self._guards.values(), *self._removed.values()):
            parts += (guard.metrics, guard.breaker, guard.bulkhead, guard.budget, guard.hedge)
            parts += [x for x in guard.layers if hasattr(x, "_after_fork")]
        for part in (*parts, *breakers):
            if part is None or id(part) in done:
                continue
            done.add(id(part))
            if part._after_fork():  # only a bulkhead says True: it dropped its thread pool
                pools += 1
        return pools

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
