"""An enforcement ramp wired into a compiled guard: each async call is enforced or observed.

`attach_ramp(guard, old)` replaces the guard's call entry (`Guard._first`) by a `Ramped` that
draws a number per call: below the ramp's share the call runs the guard's own entry (enforced),
otherwise a shadow guard's in ``mode = "observe"`` (never refused, timed out or retried; what
enforcement would have done is counted as would-be events).

The shadow shares everything with the guard (metrics, bulkhead, budget, layers) and sees its
breaker through `ObservingBreaker`: outcomes of observed calls feed the same breaker, so it
judges all the traffic, but an observed call it would refuse is let through and counted as
`would_reject` instead. A reload that keeps `enforce` and `ramp` keeps the ramp's start.
`call_sync` draws the same way (`Guard.sync_entry`); an `async with` block is always enforced.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._runtime.guard import Guard
from .._runtime.sync import plain_sync
from .._telemetry.events import Event
from ..exceptions import CircuitOpenError
from .ramp import Ramp, make_ramp

if TYPE_CHECKING:
    from .._patterns.breaker import Breaker

__all__ = ["ObservingBreaker", "Ramped", "attach_ramp", "ramp_of", "shadow_of"]

_OBSERVED = -1  # the breaker's permit of an observe-mode call that enforcement would refuse


class ObservingBreaker:
    """The guard's breaker as observe mode needs it: `acquire` never raises."""

    __slots__ = ("_breaker",)
    observe = True

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def acquire(self) -> int:
        try:
            return self._breaker.acquire()
        except CircuitOpenError as exc:
            data = {"state": exc.state, "retry_after": max(exc.retry_after, 0.0)}
            self._breaker._emit(Event("would_reject", self._breaker.name, data))
            return _OBSERVED

    def __getattr__(self, name: str) -> Any:
        return getattr(self._breaker, name)


class Ramped:
    """The call entry of a ramped guard."""

    __slots__ = (
        "_clock", "_enforced", "_guard", "_inner", "_observed", "_random", "ramp", "shadow",
    )  # fmt: skip

    def __init__(
        self, guard: Guard, shadow: Guard, ramp: Ramp, random: Callable[[], float]
    ) -> None:
        self.ramp = ramp
        self._guard = guard
        self._inner = self._enforced = guard._first
        self.shadow = shadow
        self._observed = shadow._first
        self._clock = guard.clock
        self._random = random

    def __call__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.ramp.enforced(self._clock.now(), self._random()):
            return self._enforced(fn, args, kwargs)
        return self._observed(fn, args, kwargs)

    def call_sync(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """`call_sync`'s entry: the same draw; an observed call runs as in observe mode."""
        if self.ramp.enforced(self._clock.now(), self._random()):
            return plain_sync(self._guard, fn, args, kwargs)
        return plain_sync(self.shadow, fn, args, kwargs)


def _ramped(guard: Guard | None) -> Ramped | None:
    """`guard`'s Ramped call entry (under a drill's, if any)."""
    first = getattr(guard, "_first", None)
    while first is not None:
        if isinstance(first, Ramped):
            return first
        first = getattr(first, "_inner", None)
    return None


def ramp_of(guard: Guard | None) -> Ramp | None:
    """The ramp of `guard`, if it has one."""
    ramped = _ramped(guard)
    return None if ramped is None else ramped.ramp


def shadow_of(guard: Guard | None) -> Guard | None:
    """The observe-mode guard that runs `guard`'s observed calls, if it has a ramp."""
    ramped = _ramped(guard)
    return None if ramped is None else ramped.shadow


def attach_ramp(
    guard: Guard, old: Guard | None, random: Callable[[], float] = _random.random
) -> None:
    """Give a just-compiled guard its policy's ramp (nothing without `enforce` and `ramp`, or
    unless the policy enforces: observe and disabled modes have nothing to ramp)."""
    policy = guard.policy
    if (policy.enforce is None and policy.ramp is None) or guard.mode != "enforce":
        return
    ramp = make_ramp(policy.enforce, policy.ramp, guard.clock.now(), ramp_of(old))
    if ramp is None:
        return
    breaker = guard.breaker
    shadow = Guard(
        guard.name,
        policy.model_copy(update={"mode": "observe"}),
        guard.clock,
        guard.emit,
        guard.metrics,
        breaker=None if breaker is None else ObservingBreaker(breaker),  # type: ignore[arg-type]
        bulkhead=guard.bulkhead,
        retry=guard.retry,
        budget=guard.budget,
        fallback=guard.fallback,
        layers=guard.layers,
    )
    ramped = Ramped(guard, shadow, ramp, random)
    guard._first = ramped
    guard.sync_entry = ramped.call_sync
    guard.door = None  # the handle's open-circuit shortcut would refuse observed calls too
