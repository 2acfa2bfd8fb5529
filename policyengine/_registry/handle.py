"""GuardHandle: the stable object `guard(name)` returns.

A handle holds a name, not a guard: every use looks up the guard in force, so a decorator applied
at import time follows every reload. A handle made by the module-level `guard()` before anything
was loaded binds to the default engine at its first use.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .._keys.keyed_handle import KeyedHandle, attempt_guard, keyed_handle, keys_of
from .._runtime.scope import AttemptScope
from .._runtime.sync import call_sync as _call_sync

if TYPE_CHECKING:
    from .._runtime.guard import Guard
    from .._telemetry.snapshot import GuardSnapshot
    from .engine import Engine

__all__ = ["GuardHandle"]

P = ParamSpec("P")
T = TypeVar("T")

_scopes: contextvars.ContextVar[tuple[AttemptScope, ...]] = contextvars.ContextVar(
    "policyengine_scopes", default=()
)


def _default_engine() -> Engine:
    from .default import default_engine

    return default_engine()


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _is_async(fn: object) -> bool:
    """An `async def`, a partial of one, or an object whose `__call__` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or not callable(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def _wraps(wrapper: Callable[P, Any], fn: Callable[P, Any]) -> Callable[P, Any]:
    """`functools.wraps`, plus the defaults that tools reading a signature's values look at."""
    functools.update_wrapper(wrapper, fn)
    for attr in ("__defaults__", "__kwdefaults__"):
        value = getattr(fn, attr, None)
        if value is not None:
            setattr(wrapper, attr, value)
    return wrapper


class GuardHandle:
    """Call through a named policy: `await h.call(fn, ...)`, `h.call_sync(fn, ...)`, `@h`,
    `async with h:` / `with h:` (one attempt)."""

    __slots__ = ("__weakref__", "_engine", "_keyed", "name")

    def __init__(self, name: str, engine: Engine | None = None) -> None:
        self.name = name
        self._engine = engine
        self._keyed: dict[str, KeyedHandle] | None = None  # `key()`'s handles, made once

    def __repr__(self) -> str:
        return f"<GuardHandle {self.name!r} state={self.state!r}>"

    @property
    def engine(self) -> Engine:
        return self._engine if self._engine is not None else _default_engine()

    def current(self) -> Guard:
        """The compiled guard in force now."""
        return self.engine._lookup(self.name)

    # ------------------------------------------------------------ calling
    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """`await handle.call(fn, *args, **kwargs)`: run `fn` through the policy."""
        engine = self._engine if self._engine is not None else _default_engine()
        guard = engine._guards.get(self.name) or engine._lookup(self.name)
        door = guard.door
        if door is not None and door._closed_permit < 0:
            refused = guard.refusal(door)  # an open circuit: decided here, see `Guard.refusal`
            if refused is not None:
                return refused
        return guard._first(fn, args, kwargs)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking `fn` through the policy in this thread (see the README on timeouts)."""
        engine = self._engine if self._engine is not None else _default_engine()
        return _call_sync(
            engine._guards.get(self.name) or engine._lookup(self.name), fn, args, kwargs
        )

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate an `async def` (or an object whose `__call__` is one) or a `def`; the
        policy in force is used at each call. Generators are refused: a guard bounds one call,
        and a generator's work happens after it returned."""
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise TypeError(
                f"guard({self.name!r}) cannot decorate the generator {_name(fn)}: its work runs "
                "after the call returns; guard each step instead (`async with guard(...)`)"
            )
        if _is_async(fn):

            async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
                engine = self._engine if self._engine is not None else _default_engine()
                return await engine._lookup(self.name)._first(fn, args, kwargs)

            return _wraps(guarded, fn)

        def guarded_sync(*args: P.args, **kwargs: P.kwargs) -> Any:
            engine = self._engine if self._engine is not None else _default_engine()
            return engine._lookup(self.name).call_sync(fn, *args, **kwargs)

        return _wraps(guarded_sync, fn)

    # ---------------------------------------------------- one attempt scope
    async def __aenter__(self) -> GuardHandle:
        scope = AttemptScope(attempt_guard(self.current()))
        await scope.enter_async(asyncio.current_task())
        _scopes.set((*_scopes.get(), scope))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._pop().exit(exc)

    def __enter__(self) -> GuardHandle:
        scope = AttemptScope(attempt_guard(self.current()))
        scope.enter_sync()
        _scopes.set((*_scopes.get(), scope))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._pop().exit(exc)

    def _pop(self) -> AttemptScope:
        stack = _scopes.get()
        _scopes.set(stack[:-1])
        return stack[-1]

    # -------------------------------------------------------------- reading
    @property
    def state(self) -> str:
        """ "closed" | "open" | "half_open" | "forced_open" | "disabled"."""
        return self.current().state

    def metrics(self) -> GuardSnapshot:
        """Counters since the guard was created (kept across reloads) and the state."""
        return self.current().snapshot()

    # ---------------------------------------------------------- keyed guards
    def key(self, key: str) -> KeyedHandle:
        """A handle on `key`'s lane of a partitioned policy (`_keys.keyed_handle`): its own
        breaker."""
        cache = self._keyed  # a request path calls this each time: the kept one, at once
        found = None if cache is None else cache.get(key)
        return found if found is not None else keyed_handle(self, key)

    def keys(self) -> dict[str, str]:
        """{key: state} of the keys a partitioned policy keeps now ({} without `partition`)."""
        return keys_of(self.current())
