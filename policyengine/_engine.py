"""Engine: the registry of guards compiled from one set of policy files, and its reloads.

The guards in force live in one dict that is replaced whole (never mutated) on reload, so a call
sees either the old set or the new one, never a mix. Handles look their guard up by name at each
call, so they stay valid across reloads. A reload that fails keeps everything as it was.

`[state]` applies on reload too. Same store, url and prefix: the backend takes the new `on_error`
and `timeout` in place (`RedisBackend.retune`; shared breakers keep their state). Otherwise the
new backend is built aside, the guards are compiled against it (every `shared` breaker gets a new
breaker from it: "new state backend"), both are swapped in together, and only then the old
backend is closed: it flushes what it had batched and detaches its breakers, so calls in flight
on the old guards finish on local state. A backend that cannot be built fails the reload.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._clock import Clock, MonotonicClock
from ._compile import compile_guards
from ._events import Event, Listener, Listeners
from ._fork import track
from ._guard import Guard
from ._handle import GuardHandle
from ._loader import PolicySet, load_path, state_issue
from ._models import StateOptions
from ._record import RecordOptions
from ._recorder import Recording
from .exceptions import PolicyIssue, PolicyValidationError, UnknownGuardError

__all__ = ["Engine"]

logger = logging.getLogger("policyengine")


def _utcnow() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _elsewhere(guard: Guard, backend: Any) -> bool:
    """True if `guard`'s breaker is `shared` but keeps its state elsewhere than `backend` (None:
    memory): it was made before a reload that changed `[state]`, and must be made anew."""
    options = guard.policy.breaker
    if options is None or not options.shared or guard.breaker is None:
        return False
    return getattr(guard.breaker, "_backend", None) is not backend


class Engine:
    """Guards by name, compiled from validated policies; reloadable in place."""

    def __init__(
        self,
        policy_set: PolicySet,
        *,
        clock: Clock | None = None,
        path: str | Path | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.path = Path(path) if path is not None else None
        self.listeners = Listeners()
        self._guards: dict[str, Guard] = {}
        self._removed: dict[str, Guard] = {}
        self._handles: dict[str, GuardHandle] = {}
        self._lock = threading.Lock()  # serialises reloads, never taken by a call
        self._reload_lock = threading.RLock()  # one read-compare-apply at a time (watcher, user)
        self.strict = False  # reloads validate as the first load did (`load(..., strict=True)`)
        self._watcher: Any = None
        self._closed = False
        self.reloads = 0
        self.failed_reloads = 0
        self._last_error: str | None = None
        self._changes: dict[str, str] = {}
        self._policy_set = policy_set
        self.recording = Recording(
            self.clock, self.listeners
        )  # [record] / record(): the trace writer in force
        # the [state] in force and its backend (None: memory); both replaced by a reload that
        # changes [state], under `_lock`, with the guards (see `apply`)
        self._state_options = policy_set.state
        self._state_backend = self._make_state_backend(policy_set.state)
        self.apply(policy_set, initial=True)
        track(self)  # repaired in a forked child (see `_fork`)

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
            if name not in self._guards and name not in self._removed:
                raise UnknownGuardError(name, list(self._guards))
            handle = self._handles.setdefault(name, GuardHandle(name, self))
        return handle

    def _lookup(self, name: str) -> Guard:
        """The guard a call uses now (hot path: one dict look-up)."""
        try:
            return self._guards[name]
        except KeyError:
            removed = self._removed.get(name)
            if removed is not None:
                return removed
            raise UnknownGuardError(name, list(self._guards)) from None

    # ------------------------------------------------------------ listeners
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` for every event of every guard and of reloads."""
        self.listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.listeners.remove(listener)

    def _emit(self, event: Event) -> None:
        self.listeners(event)

    # -------------------------------------------------------------- reloads
    def _make_state_backend(self, state: StateOptions) -> Any:
        if state.backend == "memory":
            return None
        from ._shared import make_backend

        return make_backend(state, self.clock, self._emit)

    def _next_state(self, policy_set: PolicySet) -> tuple[Any, str | None]:
        """The backend for `policy_set`'s `[state]` and how it differs from the one in force:
        None (nothing that matters), "retuned" (the same backend, retuned at the swap) or "new
        backend" (built here, not yet used). PolicyValidationError if it cannot be built."""
        state, current = policy_set.state, self._state_options
        backend = self._state_backend
        if state == current or state.backend == current.backend == "memory":
            return backend, None  # (a memory backend has no other setting)
        if backend is not None and backend.same_store(state):
            return backend, "retuned"
        try:
            return self._make_state_backend(state), "new backend"
        except Exception as exc:
            raise PolicyValidationError([state_issue(policy_set, exc)]) from exc

    def apply(self, policy_set: PolicySet, *, initial: bool = False) -> dict[str, str]:
        """Compile `policy_set` aside and swap it in; returns what happened to each policy.

        A changed `[state]` is applied with it (see the module docstring). If its backend cannot
        be built, PolicyValidationError is raised and nothing changes (`reload` reports it).
        """
        with self._lock:
            before = self._describe_state()
            backend, how = (self._state_backend, None) if initial else self._next_state(policy_set)
            if how == "new backend" and self._closed and backend is not None:
                backend.close()  # a closed engine starts nothing: its breakers stay local
            kwargs = {} if backend is None else {"make_breaker": backend.breaker_factory}
            # a removed policy that comes back carries over the state its handles kept using
            carried = {**self._removed, **self._guards}
            renew = {name for name, guard in carried.items() if _elsewhere(guard, backend)}
            try:
                compiled = compile_guards(
                    policy_set.policies, carried, self.clock, self.listeners, renew=renew, **kwargs
                )
            except BaseException:
                if how == "new backend" and backend is not None:
                    backend.close()
                raise
            self.listeners.hold()  # a forced state's transition is told after the reload
            try:
                if how == "retuned":
                    backend.retune(policy_set.state)  # degraded breakers move to the new on_error
                for commit in compiled.commits:
                    commit()
            finally:
                deferred = self.listeners.release()
            removed = {n: g for n, g in self._guards.items() if n not in compiled.guards}
            for name in compiled.guards:
                self._removed.pop(name, None)
            self._removed.update(removed)
            retired = self._state_backend if how == "new backend" else None
            self._guards = compiled.guards  # the one swap
            self._state_backend, self._state_options = backend, policy_set.state
            previous, self._policy_set = self._policy_set.version, policy_set
            self._changes = dict(compiled.changes)
            self._changes.update({n: "removed" for n in self._removed})
            changes = dict(self._changes)
            self._loaded_at = _utcnow()
            self._last_error = None
            if not initial:
                self.reloads += 1
        if not initial:
            for name in removed:
                self._emit(Event("policy_removed", name, {"note": "handles keep the last policy"}))
            data = {"version": policy_set.version, "previous": previous, "changes": changes}
            self._emit(Event("reload", "*", data))
        if how is not None:
            renewed = sorted(n for n, c in compiled.changes.items() if c == "new state backend")
            data = {"from": before, "to": self._describe_state(), "how": how, "renewed": renewed}
            self._emit(Event("state_backend_changed", "*", data))
        for event in deferred:
            self._emit(event)
        if retired is not None:
            retired.close()  # flushes its batches; its breakers (calls in flight) go local
        self.recording.apply(policy_set.record, self._guards)  # a changed [record]: swapped
        return compiled.changes

    def record(self, path: str | os.PathLike[str] | None, sample: float = 1.0) -> None:
        """Write a trace of every attempt (a `sample` share) to `path`, whatever the file's
        `[record]` says, until the engine closes; None stops. See `_record`."""
        options = None if path is None else RecordOptions(path=os.fspath(path), sample=sample)
        self.recording.start(options, self._guards)

    def _describe_state(self) -> dict[str, Any]:
        """The `[state]` in force, as `status()["state"]` names it (the url redacted)."""
        backend = self._state_backend
        if backend is None:
            return {"backend": "memory"}
        status: dict[str, Any] = backend.status()
        return {k: status[k] for k in ("backend", "url", "prefix", "on_error", "timeout")}

    def reload(self, *, settle: float = 0.0) -> bool:
        """Re-read the files this engine was loaded from. True if a new set was applied.

        A file that fails to read or validate keeps the policies in force: the error goes to
        `status()["last_error"]`, a `reload_failed` event and the log, once (the same error
        again, as from a file that stays deleted, is not reported again). Content equal to the
        policies in force changes nothing; if a failure was reported meanwhile, it is cleared
        (a `reload` event with every policy "unchanged" says so).

        `settle` (seconds, for watchers): when the files look caught in the middle of a save
        (invalid, or suddenly without any policy), wait that long and read them again before
        judging, so a slow writer does not raise a false alarm.
        """
        with self._reload_lock:
            result = self._read()
            if settle > 0 and self._looks_torn(result):
                time.sleep(settle)
                result = self._read()
            if isinstance(result, PolicyValidationError):
                self._fail(result)
                return False
            if result.version == self._policy_set.version and self._last_error is None:
                return False
            try:
                self.apply(result)  # also clears last_error when the files are back to the policy
            except PolicyValidationError as exc:  # a [state] whose backend cannot be built
                self._fail(exc)
                return False
            return True

    def _read(self) -> PolicySet | PolicyValidationError:
        if self.path is None:
            raise RuntimeError("this engine was not loaded from a path; use apply()")
        try:
            return load_path(self.path, strict=self.strict)
        except PolicyValidationError as exc:
            return exc
        except (OSError, UnicodeDecodeError) as exc:  # the loader reports these; belt and braces
            return PolicyValidationError([PolicyIssue(str(self.path), None, "", str(exc))])

    def _looks_torn(self, result: PolicySet | PolicyValidationError) -> bool:
        if isinstance(result, PolicyValidationError):
            return str(result) != self._last_error  # an error reported already needs no wait
        return not result.policies and bool(self._guards)

    def _fail(self, exc: PolicyValidationError) -> None:
        error = str(exc)
        with self._lock:
            if error == self._last_error:
                return  # reported already: no error loop while a file stays bad or missing
            self.failed_reloads += 1
            self._last_error = error
            version = self._policy_set.version
        data = {"error": error, "issues": [e.as_dict() for e in exc.errors], "version": version}
        self._emit(Event("reload_failed", "*", data))

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
            # kept for compatibility: a reload applies [state] now, so nothing waits for a restart
            "state_pending_restart": False,
        }

    # ------------------------------------------------------------ lifecycle
    def watch(self, **options: Any) -> None:
        """Start watching the source files (see `_watcher.Watcher`)."""
        if self.path is None:
            raise RuntimeError("only an engine loaded from a path can watch it")
        if self._closed:
            raise RuntimeError("this engine is closed")
        if self._watcher is None:
            from ._watcher import Watcher

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
        """In a child just forked (see `_fork`): make this engine work without the parent's
        threads. Locks first (a thread of the parent may have held one), then the state backend,
        then the watcher, whose first look reloads through both. A closed engine stays closed."""
        self._lock = threading.Lock()
        self._reload_lock = threading.RLock()
        self.listeners.release()  # a hold taken mid-reload by a thread the child does not have
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
        restarted: list[str] = []
        if backend is not None and backend._after_fork():
            restarted.append("the Redis state backend (new loop, thread and connections)")
        watcher = self._watcher
        if watcher is not None and not self._closed and watcher._after_fork():
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

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
