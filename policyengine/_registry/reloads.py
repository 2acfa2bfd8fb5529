"""Reloads: read, validate and compile aside, then commit in one swap; the failures reported.

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
import threading
import time
from typing import TYPE_CHECKING, Any

from .._config.loader import PolicySet
from .._config.models import StateOptions
from .._runtime.guard import Guard
from .._telemetry.events import Event, Listeners
from ..exceptions import PolicyValidationError
from .compile import CompiledSet, compile_guards, paused_gc
from .staging import Staged, read_failure, state_issue

if TYPE_CHECKING:
    from pathlib import Path

    from .._config.source import PolicySource
    from .._rollout.recorder import Recording
    from .._runtime.clock import Clock

__all__ = ["Reloads"]


def _utcnow() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _elsewhere(guard: Guard, backend: Any) -> bool:
    """True if `guard`'s breaker is `shared` but keeps its state elsewhere than `backend` (None:
    memory): it was made before a reload that changed `[state]`, and must be made anew."""
    options = guard.policy.breaker
    if options is None or not options.shared or guard.breaker is None:
        return False
    return getattr(guard.breaker, "_backend", None) is not backend


class Reloads:
    """The reload half of `Engine` (a mixin: the attributes below are the engine's)."""

    source: PolicySource
    path: Path | None
    clock: Clock
    listeners: Listeners
    reloads: int
    failed_reloads: int
    _guards: dict[str, Guard]
    _removed: dict[str, Guard]
    _generation: int
    _lock: threading.Lock
    _reload_lock: threading.RLock
    _runner: Any
    _closed: bool
    _last_error: str | None
    _changes: dict[str, str]
    _policy_set: PolicySet
    _state_options: StateOptions
    _state_backend: Any
    _loaded_at: str
    recording: Recording

    def _emit(self, event: Event) -> None:
        self.listeners(event)

    # -------------------------------------------------------------- reloads
    def _make_state_backend(self, state: StateOptions) -> Any:
        if state.backend == "memory":
            return None
        from .._shared import make_backend

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
        May be called from any thread (on the loop path it swaps from the calling thread).
        """
        return self._commit(self._stage(policy_set, initial=initial), initial=initial)

    def _stage(self, policy_set: PolicySet, *, initial: bool = False) -> Staged:
        """Compile `policy_set` against the guards in force, aside: nothing live changes."""
        generation = self._generation
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
        return Staged(policy_set, compiled, backend, how, generation)

    @staticmethod
    def _discard(outcome: object) -> None:
        """Drop a staged reload that will not be committed (its new backend is closed)."""
        if isinstance(outcome, Staged) and outcome.how == "new backend" and outcome.backend:
            outcome.backend.close()

    def _commit(self, staged: Staged, *, initial: bool = False) -> dict[str, str]:
        """Run the compile's in-place updates and swap the guards in (short: no compile, unless
        another commit happened since `staged` was compiled); then tell the listeners. The
        collector is paused here too: a full collection of a large heap (100 ms and more) would
        otherwise land in this step, on the loop."""
        with paused_gc(), self._lock:
            if staged.generation != self._generation:  # compiled against guards since replaced
                self._discard(staged)
                staged = self._stage(staged.policy_set, initial=initial)
            policy_set, compiled, backend, how = (
                staged.policy_set,
                staged.compiled,
                staged.backend,
                staged.how,
            )
            before = self._describe_state()
            self.listeners.hold()  # a forced state's transition is told after the reload
            try:
                if how == "retuned":
                    backend.retune(policy_set.state)  # degraded breakers move to the new on_error
                for commit in compiled.commits:
                    commit()
            finally:
                deferred = self.listeners.release()
            removed = self._swap(compiled)
            retired = self._state_backend if how == "new backend" else None
            self._state_backend, self._state_options = backend, policy_set.state
            if backend is not None:  # (heartbeats say which policy version each process runs)
                backend.fleet.version = policy_set.version
            previous, self._policy_set = self._policy_set.version, policy_set
            self._changes = dict(compiled.changes)
            self._changes.update({n: "removed" for n in self._removed})
            changes = dict(self._changes)
            self._loaded_at = _utcnow()
            self._last_error = None
            self._generation += 1
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

    def _swap(self, compiled: CompiledSet) -> list[str]:
        """The one swap, in an order where a look-up always finds a policy that exists before
        or after it: removed ones join `_removed` first, then `_guards` is replaced, then the
        re-added ones leave `_removed`. Returns the names removed by this swap."""
        removed = {n: g for n, g in self._guards.items() if n not in compiled.guards}
        either = {**self._removed, **removed}
        self._removed = either
        self._guards = compiled.guards
        self._removed = {n: g for n, g in either.items() if n not in compiled.guards}
        return list(removed)

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
        again, as from a file that stays deleted, is not reported again). Whatever reading
        raises is reported so, never raised (see `_registry.staging.read_failure`). Content equal to
        the policies in force changes nothing; if a failure was reported meanwhile, it is cleared
        (a `reload` event with every policy "unchanged" says so).

        On an engine bound to a running loop (see `bind`), a call from another thread hands the
        reload to the loop and waits for it: it is read and compiled off the loop and swapped
        in on it, and lands however busy the loop is. Called on the loop thread itself, or on
        an engine not bound, it runs here.

        `settle` (seconds, for watchers): when the files look caught in the middle of a save
        (invalid, or suddenly without any policy), wait that long and read them again before
        judging, so a slow writer does not raise a false alarm.
        """
        if self.path is None:
            raise RuntimeError("this engine was not loaded from a path; use apply()")
        runner = self._runner
        if runner is not None and runner.takes_calls_from_here():
            return bool(runner.reload_from_thread(settle))
        with self._reload_lock:
            outcome = self._look()
            if settle > 0 and self._looks_torn(outcome):
                self._discard(outcome)
                time.sleep(settle)
                outcome = self._look()
            return self._conclude(outcome)

    def _look(self) -> Staged | PolicyValidationError | None:
        """Read, validate, compare and compile aside; None: nothing to apply. Changes nothing
        live, so it may run in any thread; never raises. The cyclic collector is paused
        meanwhile (see `_registry.compile.paused_gc`)."""
        with paused_gc():
            try:
                result = self.source.read()
            except PolicyValidationError as exc:
                return exc
            except BaseException as exc:  # a reload reports what a read raised
                return read_failure(self.path, exc)
            if result.version == self._policy_set.version and self._last_error is None:
                return None
            try:
                return self._stage(result)
            except PolicyValidationError as exc:  # a [state] whose backend cannot be built
                return exc
            except BaseException as exc:  # a bug in a compile step: reported too
                return read_failure(self.path, exc)

    def _conclude(self, outcome: Staged | PolicyValidationError | None) -> bool:
        """Commit a staged reload or report its failure; True if a new set is in force."""
        if outcome is None:
            return False
        if isinstance(outcome, PolicyValidationError):
            self._fail(outcome)
            return False
        try:
            self._commit(outcome)
        except PolicyValidationError as exc:  # recompiled against a newer set, and failed
            self._fail(exc)
            return False
        return True

    def _looks_torn(self, outcome: Staged | PolicyValidationError | None) -> bool:
        if isinstance(outcome, PolicyValidationError):
            return str(outcome) != self._last_error  # an error reported already needs no wait
        return outcome is not None and not outcome.policy_set.policies and bool(self._guards)

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
