"""A chaos drill wired into a compiled guard: each attempt of an async call meets the drill.

Why here and not as an `AttemptLayer`: a layer's `admit` can only refuse (a rejection, never a
dependency failure) or delay before the attempt's deadline is armed. A drill must look like the
dependency itself, so the function the attempt calls is wrapped: an injected fault is raised by
the attempt (the breaker counts it, retries run, fallbacks serve), an injected delay is slept
inside the attempt (its timeout and slow-call rules see it).

`attach_drill(guard, old)` replaces the guard's call entry (`Guard._first`) by a `Drilled` that
wraps the function while the drill runs; after its end a call costs one clock read more. A
reload that keeps the drill keeps its end (`make_chaos`). `call_sync` meets the drill through
`Guard.sync_entry` (`Drilled.call_sync`); an `async with` block has no function to wrap and is
not drilled.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._runtime.sync import plain_sync
from .._telemetry.events import Event
from .chaos import Chaos, make_chaos

if TYPE_CHECKING:
    from .._runtime.guard import Guard

__all__ = ["Drilled", "attach_drill", "drill_of"]


class Drilled:
    """The call entry of a drilled guard: the drill's wrapper around the function, then the
    guard's own entry."""

    __slots__ = ("_clock", "_guard", "_inner", "_inner_sync", "_random", "_sync", "chaos")

    def __init__(
        self, guard: Guard, chaos: Chaos, random: Callable[[], float] = _random.random
    ) -> None:
        self.chaos = chaos
        self._guard = guard
        self._inner = guard._first
        self._inner_sync = guard.sync_entry  # a ramp's, if the guard has one
        self._clock = guard.clock
        self._sync = guard.threaded  # a threads bulkhead runs `fn` (blocking) in its pool
        self._random = random

    def __call__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        chaos = self.chaos
        if chaos.end > self._clock.now():
            fn = chaos.wrap(fn, self._clock, self._random, sync=self._sync, told=self._told)
        return self._inner(fn, args, kwargs)

    def call_sync(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """`call_sync`'s entry: the blocking function meets the drill in each attempt."""
        chaos = self.chaos
        if chaos.end > self._clock.now():
            fn = chaos.wrap(fn, self._clock, self._random, sync=True, told=self._told)
        if self._inner_sync is not None:
            return self._inner_sync(fn, args, kwargs)
        return plain_sync(self._guard, fn, args, kwargs)

    def _told(self, kind: str) -> None:
        """The drill injected a `kind` ("fault" or "delay"): counted and announced."""
        guard = self._guard
        guard.metrics.count("injected")
        if guard.emit.hot:
            guard.emit(Event("injected", guard.name, {"kind": kind}))


def drill_of(guard: Guard | None) -> Chaos | None:
    """The drill running in `guard`, if any."""
    first = getattr(guard, "_first", None)
    return first.chaos if isinstance(first, Drilled) else None


def attach_drill(
    guard: Guard, old: Guard | None, random: Callable[[], float] = _random.random
) -> None:
    """Give a just-compiled guard its policy's drill (nothing without one, or when disabled)."""
    options = guard.policy.chaos
    if options is None or guard.mode == "disabled":
        return
    chaos = make_chaos(options, guard.clock.now(), drill_of(old))
    if chaos is not None:
        drilled = Drilled(guard, chaos, random)
        guard._first = drilled
        guard.sync_entry = drilled.call_sync
