"""`guard(name).key(k)`: a handle on one key's lane of a partitioned policy.

A `KeyedHandle` is a `GuardHandle` whose `current()` is the guard of the key's lane (the lane's
breaker and bulkhead, the policy's everything else), so `call`, `call_sync`, the decorator and
`async with` / `with` all serve the key with the policy's own drivers. It holds a name and a key,
nothing else: stable across reloads, cheap to create (one per request is fine).

- A policy without `[partition]` ignores the key: the call runs through the policy's guard (so a
  reload that removes `partition` never breaks a caller, nor one that adds it).
- Reading `state` or `metrics()` never creates a lane: a key not kept reads as it would start,
  "closed".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._handle import GuardHandle, _default_engine
from ._partition import UNKEYED
from ._snapshot import GuardSnapshot

if TYPE_CHECKING:
    from ._engine import Engine
    from ._guard import Guard
    from ._partition import KeyRegistry

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


def keyed_handle(handle: GuardHandle, key: str) -> KeyedHandle:
    """`handle.key(key)`: made once per key and kept (a bounded cache: a request path that does
    `guard(name).key(host)` allocates nothing after the first time; more than `_HANDLES_KEPT`
    keys just start the cache over)."""
    cache = handle._keyed
    if cache is None:
        cache = handle._keyed = {}
    found = cache.get(key)
    if found is None:
        if len(cache) >= _HANDLES_KEPT:
            cache.clear()
        found = cache[key] = KeyedHandle(handle.name, key, handle._engine)
    return found


class KeyedHandle(GuardHandle):
    """`guard(name).key(key)`: call through, and read, one key's lane (see the module)."""

    __slots__ = ("partition_key",)

    def __init__(self, name: str, key: str, engine: Engine | None = None) -> None:
        """`key`, read as `partition_key` (`key()` stays the handle's method)."""
        self.name = name
        self._engine = engine
        self._keyed = None
        self.partition_key = key

    def __repr__(self) -> str:
        return f"<KeyedHandle {self.name!r} key={self.partition_key!r} state={self.state!r}>"

    def current(self) -> Guard:
        """The guard the key's calls run through now (its lane's; the policy's if unpartitioned)."""
        guard = super().current()
        registry = partition_of(guard)
        if registry is None:
            return guard
        runner: Guard | None = registry.lane(self.partition_key).runner
        return guard if runner is None else runner

    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """`await guard(name).key(k).call(fn, *args, **kwargs)`: `current()`, inlined."""
        engine = self._engine if self._engine is not None else _default_engine()
        guard = engine._guards.get(self.name) or engine._lookup(self.name)
        registry: KeyRegistry | None = getattr(guard, "partition", None)
        if registry is not None:
            key = self.partition_key
            lane = registry._lanes.get(key)  # `KeyRegistry.lane`'s fast path, inlined
            if (
                lane is None
                or registry._now() - lane.used >= registry._grain
                or lane.factories is not registry._factories
            ):
                lane = registry.lane(key)
            runner: Guard | None = lane.runner
            if runner is not None:
                guard = runner
        return guard._first(fn, args, kwargs)

    def call_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking `fn` through the key's lane in this thread."""
        return self.current().call_sync(fn, *args, **kwargs)

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function: every call runs through this key's lane."""
        import functools
        import inspect

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.current()._first(fn, args, kwargs)

            return guarded

        @functools.wraps(fn)
        def guarded_sync(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.current().call_sync(fn, *args, **kwargs)

        return guarded_sync

    @property
    def state(self) -> str:
        """The key's state: "closed" | "open" | "half_open" | "forced_open" | "disabled"."""
        guard = super().current()
        registry = partition_of(guard)
        if registry is None or guard.mode == "disabled":
            return guard.state
        return registry.state(self.partition_key)

    def metrics(self) -> KeySnapshot:
        """The policy's counters (calls are counted per policy, not per key: a key costs no
        counters) with this key's view: `key`, `kept`, `state`, `breaker_failure_rate`, the
        key's `breaker` counts, and its own `bulkhead` with `bulkhead = "per_key"`."""
        guard = super().current()
        registry = partition_of(guard)
        lane = None if registry is None else registry.get(self.partition_key)
        runner: Guard | None = None if lane is None else lane.runner
        breaker = None if lane is None else lane.breaker
        out: KeySnapshot = {
            **(runner or guard).snapshot(),
            "key": self.partition_key,
            "kept": lane is not None,
            "breaker": None if breaker is None else breaker.snapshot(),
        }
        if registry is not None and lane is None:
            out["state"] = "disabled" if guard.mode == "disabled" else "closed"
            out["breaker_failure_rate"] = None
        return out
