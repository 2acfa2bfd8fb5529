"""Backoff schedules and jitter, compiled once per retry policy.

For retry n = 1, 2, ... the undithered delay ``d`` is

- constant:    ``d = initial_delay``
- linear:      ``d = initial_delay * n``
- exponential: ``d = initial_delay * multiplier ** (n - 1)``

each capped at ``max_delay`` when set. Jitter then turns ``d`` into the sleep:

- none:         ``d``
- full:         ``uniform(0, d)``
- equal:        ``d / 2 + uniform(0, d / 2)``
- decorrelated: ``min(max_delay, uniform(initial_delay, 3 * previous))`` (AWS "decorrelated
  jitter"). It replaces ``d``: the backoff kind does not matter. ``previous`` is the previous
  sleep; for retry 1 it is ``initial_delay``, and a smaller value is raised to ``initial_delay``
  so the result never falls below it. Without ``max_delay`` it is uncapped.

A `Backoff` precomputes ``d`` for every retry the policy allows; a jitter function is chosen
once, so a delay costs a tuple lookup and at most one call to the random generator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Literal

__all__ = ["Backoff", "BackoffKind", "Jitter", "JitterKind", "jitter_bounds", "make_jitter"]

BackoffKind = Literal["constant", "linear", "exponential"]
JitterKind = Literal["none", "full", "equal", "decorrelated"]
Jitter = Callable[[float, float], float]
"""``jitter(d, previous) -> sleep``."""

# Retries beyond this many are computed on demand instead of stored.
_PRECOMPUTE_LIMIT = 4096


def _scaled_power(base: float, factor: float, exponent: int) -> float:
    """``base * factor ** exponent`` without OverflowError (``inf`` instead); 0 for base 0."""
    if base == 0.0:
        return 0.0
    try:
        return base * factor**exponent
    except OverflowError:
        return math.inf


class Backoff:
    """The undithered delay before retry n, capped at `cap`. ``backoff(n)`` for n >= 1."""

    __slots__ = ("cap", "delays", "initial", "kind", "multiplier")

    def __init__(
        self,
        kind: BackoffKind,
        initial: float,
        cap: float | None,
        multiplier: float,
        retries: int,
    ) -> None:
        self.kind: BackoffKind = kind
        self.initial = float(initial)
        self.cap = None if cap is None else float(cap)
        self.multiplier = float(multiplier)
        count = max(0, min(retries, _PRECOMPUTE_LIMIT))
        self.delays: tuple[float, ...] = tuple(self.compute(n) for n in range(1, count + 1))

    def compute(self, n: int) -> float:
        """The formula itself (no table): the delay before retry `n`."""
        if n < 1:
            raise ValueError(f"retry numbers start at 1, not {n}")
        if self.kind == "constant":
            d = self.initial
        elif self.kind == "linear":
            d = self.initial * n
        else:
            d = _scaled_power(self.initial, self.multiplier, n - 1)
        cap = self.cap
        return d if cap is None or d <= cap else cap

    def __call__(self, n: int) -> float:
        delays = self.delays
        if 0 < n <= len(delays):
            return delays[n - 1]
        return self.compute(n)

    def __repr__(self) -> str:
        return (
            f"Backoff({self.kind!r}, initial={self.initial:g}, cap={self.cap!r}, "
            f"multiplier={self.multiplier:g})"
        )


def make_jitter(kind: JitterKind, initial: float, cap: float | None, rng: random.Random) -> Jitter:
    """The jitter function of `kind`, bound once to `rng` (see the module docstring)."""
    uniform = rng.uniform
    if kind == "none":

        def none(d: float, previous: float) -> float:
            return d

        return none
    if kind == "full":

        def full(d: float, previous: float) -> float:
            return uniform(0.0, d)

        return full
    if kind == "equal":

        def equal(d: float, previous: float) -> float:
            half = d * 0.5
            return half + uniform(0.0, half)

        return equal
    if kind == "decorrelated":
        low = float(initial)
        top = math.inf if cap is None else float(cap)

        def decorrelated(d: float, previous: float) -> float:
            base = previous if previous > low else low
            value = uniform(low, 3.0 * base)
            return value if value <= top else top

        return decorrelated
    raise ValueError(f"unknown jitter {kind!r}")


def jitter_bounds(
    kind: JitterKind, d: float, n: int, initial: float, cap: float | None
) -> tuple[float, float]:
    """(min, max) of the sleep before retry `n` whose undithered delay is `d`."""
    if kind == "none":
        return (d, d)
    if kind == "full":
        return (0.0, d)
    if kind == "equal":
        return (d * 0.5, d)
    # decorrelated: the largest previous sleep grows threefold per retry from `initial`.
    top = math.inf if cap is None else cap
    return (min(initial, top), min(_scaled_power(initial, 3.0, n), top))
