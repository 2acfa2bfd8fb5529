"""`PartitionedGuard`: the compiled guard of a policy with `[partition]`.

It is the policy's guard (its metrics, retry, budget, fallback, shared bulkhead, events) plus
`partition`, the `KeyRegistry` of its lanes; it has no breaker of its own. A call made without a
key runs in the lane of the key ``""`` (`UNKEYED`), a key like any other: it has its own
breaker, counts in `keys`, and is dropped when idle. That choice, rather than an error, means a
reload that adds `partition` to a policy never breaks a caller that passes no key (the
decorator, `guard(name).call`), while such calls still get a breaker.

A subclass, so that a policy without `partition` pays nothing: its guard is a plain `Guard`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .._runtime.guard import Guard
from .._telemetry.snapshot import GuardSnapshot
from .partition import UNKEYED, KeyRegistry

if TYPE_CHECKING:
    from .._runtime.timeout import Deadline

__all__ = ["LaneGuard", "PartitionSnapshot", "PartitionedGuard"]

T = TypeVar("T")


def _slots(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names += [slots] if isinstance(slots, str) else list(slots)
    return [n for n in names if n not in ("__weakref__", "__dict__")]


class PartitionSnapshot(GuardSnapshot):
    """`metrics()` of a partitioned policy: the policy's, and its keys."""

    keys: int  # keys kept now
    keys_open: int  # of which open, half-open or forced open
    would_trip: int  # trips past `max_open_ratio`, only observed


class PartitionedGuard(Guard):
    """A partitioned policy's guard: the shared parts, and `partition` (see the module)."""

    __slots__ = ("partition",)

    partition: KeyRegistry

    @classmethod
    def from_guard(cls, guard: Guard) -> PartitionedGuard:
        """A copy of `guard` (every slot) as a PartitionedGuard; `bind` gives it its lanes."""
        out = cls.__new__(cls)
        for name in _slots(Guard):
            try:
                setattr(out, name, getattr(guard, name))
            except AttributeError:  # a slot left unset
                pass
        return out

    def bind(self, registry: KeyRegistry) -> None:
        """Calls without a key go to the lane "" (the policy's ramp and drill, if any, are the
        lanes' own: see `_keys.keyed.guard_runner`)."""
        self.partition = registry
        if self.mode != "disabled":  # disabled passes everything through, keyed or not
            self._first = self._unkeyed
            self.sync_entry = self._unkeyed_sync  # `_runtime.sync.call_sync`'s entry

    def _unkeyed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        runner: Guard = self.partition.lane(UNKEYED).runner
        door = runner.door
        if door is not None and door._closed_permit < 0:
            refused = runner.refusal(door)  # an open circuit, decided as `Guard.call` does
            if refused is not None:
                return refused
        return runner._first(fn, args, kwargs)

    def call_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return self._unkeyed_sync(fn, args, kwargs)

    def _unkeyed_sync(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        runner: Guard = self.partition.lane(UNKEYED).runner
        return runner.call_sync(fn, *args, **kwargs)

    def unkeyed(self) -> Guard:
        """The guard an unkeyed call runs through (`async with guard(name):` uses it)."""
        runner: Guard = self.partition.lane(UNKEYED).runner
        return runner

    @property
    def state(self) -> str:
        """The state of the key "" (what an unkeyed call meets); `keys()` has every key's."""
        if self.mode == "disabled":
            return "disabled"
        return self.partition.state(UNKEYED)

    def snapshot(self) -> PartitionSnapshot:
        """The policy's metrics, plus `keys`, `keys_open` and `would_trip` of its lanes."""
        stats = self.partition.stats()
        return {
            **super().snapshot(),
            "keys": stats["keys"],
            "keys_open": stats["keys_open"],
            "would_trip": stats["would_trip"],
        }


class LaneGuard(Guard):
    """A lane's guard: the policy's guard over the lane's breaker and bulkhead. Its deadlines go
    to the policy guard's queues (`owner`), so all keys share one timer per loop, as the calls
    of an unkeyed policy do, and a lane holds no queue of its own."""

    __slots__ = ("owner",)

    owner: Guard

    def deadline(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], when: float
    ) -> Deadline:
        return self.owner.deadline(loop, task, when)

    def wait_deadline(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], when: float
    ) -> Deadline:
        return self.owner.wait_deadline(loop, task, when)
