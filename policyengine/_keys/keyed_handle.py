"""`guard(name).key(k)`: a handle on one key's lane of a partitioned policy.

A `KeyedHandle` holds a `GuardHandle` and a key; its `current()` is the guard of the key's lane
(the lane's breaker and bulkhead, the policy's everything else), so `call`, `call_sync`, the
decorator and `async with` / `with` serve the key with the policy's own drivers. Stable across
reloads; `GuardHandle.key()` makes one per key and keeps it (bounded), so a request path may call
`guard(name).key(host)` every time. (Composition, not a `GuardHandle` subclass: `_registry.handle`
imports this module, and the package has no import circles.)

- A policy without `[partition]` ignores the key: the call runs through the policy's guard (so a
  reload that removes `partition` never breaks a caller, nor one that adds it).
- Reading `state` or `metrics()` never creates a lane: a key not kept reads as it would start,
  "closed".
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .._runtime.scope import AttemptScope
from .._telemetry.snapshot import GuardSnapshot
from .partition import UNKEYED
from .partition_guard import PartitionedGuard

if TYPE_CHECKING:
    from .._registry.handle import GuardHandle
    from .._runtime.guard import Guard
    from .partition import KeyRegistry

__all__ = ["KeySnapshot", "KeyedHandle", "attempt_guard", "keyed_handle", "keys_of", "partition_of"]

P = ParamSpec("P")
T = TypeVar("T")


class KeySnapshot(GuardSnapshot):
    """`guard(name).key(k).metrics()`: the policy's counters and the key's own view."""

    key: str
    kept: bool  # the key has a lane now (else it reads as it would start: closed)
    breaker: dict[str, object] | None  # the key's breaker counts (`Breaker.snapshot()`)


def partition_of(guard: Guard) -> KeyRegistry | None:
    """The key registry of a compiled guard, None when its policy is not partitioned."""
    registry: KeyRegistry | None = getattr(guard, "partition", None)
    return registry


def attempt_guard(guard: Guard) -> Guard:
    """The guard one attempt scope (`async with guard(name):`) runs under: a partitioned
    policy's unkeyed scope runs in the lane of the key ""."""
    registry = partition_of(guard)
    if registry is None:
        return guard
    runner: Guard | None = registry.lane(UNKEYED).runner
    return guard if runner is None else runner


def keys_of(guard: Guard) -> dict[str, str]:
    """{key: state} of the keys `guard`'s partition keeps now ({} without one)."""
    registry = partition_of(guard)
    return {} if registry is None else registry.keys()


_HANDLES_KEPT = 4096  # keyed handles one handle keeps for reuse (then it starts over)

_scopes: contextvars.ContextVar[tuple[AttemptScope, ...]] = contextvars.ContextVar(
    "policyengine_keyed_scopes", default=()
)


def keyed_handle(handle: GuardHandle, key: str) -> KeyedHandle:
    """`handle.key(key)`: made once per key and kept in `handle._keyed` (a bounded cache: a
    request path that does `guard(name).key(host)` allocates nothing after the first time;
    more than `_HANDLES_KEPT` keys start the cache over)."""
    cache = handle._keyed
    if cache is None:
        cache = handle._keyed = {}
    found = cache.get(key)
    if found is None:
        if len(cache) >= _HANDLES_KEPT:
            cache.clear()
        found = cache[key] = KeyedHandle(handle, key)
    return found


class KeyedHandle:
    """`guard(name).key(key)`: call through, and read, one key's lane (see the module)."""

    __slots__ = ("__weakref__", "_engine", "handle", "key", "name")

    def __init__(self, handle: GuardHandle, key: str) -> None:
        self.handle = handle
        self.name = handle.name
        self.key = key
        self._engine = handle._engine  # None: the default engine, looked up at each use

    def __repr__(self) -> str:
        return f"<KeyedHandle {self.name!r} key={self.key!r} state={self.state!r}>"

    def _policy(self) -> Guard:
        engine = self.handle.engine
        return engine._guards.get(self.name) or engine._lookup(self.name)

    def current(self) -> Guard:
        """The guard the key's calls run through now (its lane's; the policy's if unpartitioned)."""
        guard = self._policy()
        registry = partition_of(guard)
        if registry is None:
            return guard
        runner: Guard | None = registry.lane(self.key).runner
        return guard if runner is None else runner

    # ------------------------------------------------------------ calling
    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """`await guard(name).key(k).call(fn, *args, **kwargs)`: as `GuardHandle.call`, in the
        key's lane (the registry's fast path inlined: this is every keyed request's path)."""
        engine = self._engine if self._engine is not None else self.handle.engine
        guard = engine._guards.get(self.name) or engine._lookup(self.name)
        if guard.__class__ is PartitionedGuard:
            registry = guard.partition
            key = self.key
            lane = registry._lanes.get(key)
            if (
                lane is None
                or registry._now() - lane.used >= registry._grain
                or lane.factories is not registry._factories
            ):
                lane = registry.lane(key)
            runner: Guard | None = lane.runner
            if runner is not None:
                guard = runner
        door = guard.door
        if door is not None and door._closed_permit < 0:
            refused = guard.refusal(door)  # an open circuit: decided here, as GuardHandle.call
            if refused is not None:
                return refused
        return guard._first(fn, args, kwargs)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking `fn` through the key's lane in this thread."""
        return self.current().call_sync(fn, *args, **kwargs)

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function: every call runs through this key's lane."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(fn, *args, **kwargs)

            return guarded

        @functools.wraps(fn)
        def guarded_sync(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call_sync(fn, *args, **kwargs)

        return guarded_sync

    # ---------------------------------------------------- one attempt scope
    async def __aenter__(self) -> KeyedHandle:
        scope = AttemptScope(self.current())
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

    def __enter__(self) -> KeyedHandle:
        scope = AttemptScope(self.current())
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
        """The key's state: "closed" | "open" | "half_open" | "forced_open" | "disabled"."""
        guard = self._policy()
        registry = partition_of(guard)
        if registry is None or guard.mode == "disabled":
            return guard.state
        return registry.state(self.key)

    def metrics(self) -> KeySnapshot:
        """The policy's counters (calls are counted per policy, not per key: a key costs no
        counters) with this key's view: `key`, `kept`, `state`, `breaker_failure_rate`, the
        key's `breaker` counts, and its own `bulkhead` with `bulkhead = "per_key"`."""
        guard = self._policy()
        registry = partition_of(guard)
        lane = None if registry is None else registry.get(self.key)
        runner: Guard | None = None if lane is None else lane.runner
        breaker = None if lane is None else lane.breaker
        out: KeySnapshot = {
            **(runner or guard).snapshot(),
            "key": self.key,
            "kept": lane is not None,
            "breaker": None if breaker is None else breaker.snapshot(),
        }
        if registry is not None and lane is None:
            out["state"] = "disabled" if guard.mode == "disabled" else "closed"
            out["breaker_failure_rate"] = None
        return out
