"""A lane of a keyed guard: one key's breaker, bulkhead and runner, the factories that build
lanes, and the event sink through which a lane's breaker reports to its registry
(`_keys.partition`).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._patterns.breaker import Breaker
    from .._patterns.bulkhead import Bulkhead
    from .._telemetry.events import Event

__all__ = ["Lane", "LaneFactories", "Sink", "repaired_after_fork"]


class _Registry(Protocol):
    def _on_event(self, sink: Sink, event: Event) -> None: ...

    def _after_fork(self) -> None: ...


_registries: weakref.WeakSet[_Registry] = weakref.WeakSet()


def repaired_after_fork(registry: _Registry) -> None:
    """Have `registry._after_fork()` run in every child forked from now on (`_registry.fork`'s
    reason: a lock a parent's thread held at the fork stays locked in the child). Weakly held."""
    _registries.add(registry)


def _after_fork_in_child() -> None:
    for registry in list(_registries):
        registry._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True, slots=True)
class LaneFactories:
    """How lanes are built and updated (the compile step's business, not the registry's).

    - `breaker(key, emit)`: a new breaker for `key` reporting to `emit`, or None;
    - `bulkhead(key)`: the lane's bulkhead (the policy's own when "shared"), or None (as is no
      `bulkhead` factory at all);
    - `runner(lane)`: what a call of that lane runs through (e.g. a guard), or None;
    - `update(lane)`: apply these factories' options to a lane built by older ones, in place
      (`lane.factories` still names the older ones while it runs);
    - `own_bulkheads`: `bulkhead` builds one per key (else it hands out the policy's one).
    """

    breaker: Callable[[str, Callable[[Event], None]], Breaker | None]
    bulkhead: Callable[[str], Bulkhead | None] | None = None
    runner: Callable[[Lane], Any] | None = None
    update: Callable[[Lane], None] | None = None
    own_bulkheads: bool = False


class Lane:
    """One key's runtime: its breaker, its bulkhead (own or shared) and its runner."""

    __slots__ = ("breaker", "bulkhead", "factories", "key", "open", "runner", "sink", "used")

    def __init__(self, key: str, used: float) -> None:
        self.key = key
        self.used = used  # engine clock of the last use
        self.open = False  # open, half_open or forced_open (from the breaker's events)
        self.breaker: Breaker | None = None
        self.bulkhead: Bulkhead | None = None
        self.runner: Any = None
        self.sink: Sink | None = None
        self.factories: LaneFactories | None = None  # those that built it, or last updated it

    @property
    def state(self) -> str:
        breaker = self.breaker
        return "closed" if breaker is None else breaker.state


class Sink:
    """The event sink of one breaker of one lane. It names the key, not the lane, so that a
    dropped lane is garbage at once (no cycle lane -> breaker -> sink -> lane)."""

    __slots__ = ("key", "registry")

    def __init__(self, registry: _Registry, key: str) -> None:
        self.registry = registry
        self.key = key

    def __call__(self, event: Event) -> None:
        self.registry._on_event(self, event)
