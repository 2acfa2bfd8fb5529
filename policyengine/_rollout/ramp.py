"""Enforcement ramps: enforce a new policy on a share of calls, growing on its own.

Why: a stricter breaker or timeout is safest tried on a few calls first. With ``enforce = 0.1``
one call in ten gets the guard's rejections and timeouts; the rest run as in
``mode = "observe"`` (counted as would-be events, never refused). With
``ramp = { to = 1.0, over = "30m" }`` the share grows linearly from `enforce` to `to` over
`over`, from the moment the edit is in force. Envoy's outlier detection `enforcing_*`
percentages are the anchor (a share of the decisions is acted on, the rest only counted).

A reload that leaves `enforce` and `ramp` as they were keeps the ramp's start (`reconfigure`),
so retuning another key half-way does not restart the ramp.

Runtime: `Ramp.enforced(now, u)` for a uniform draw `u` in [0, 1), per call: True to enforce.
"""

from __future__ import annotations

from pydantic import Field

from .._config.matcher_models import FrozenModel
from .._config.units import Duration, Ratio

__all__ = ["Ramp", "RampOptions", "make_ramp"]


class RampOptions(FrozenModel):
    """Grow `enforce` linearly to `to` over `over`, from when the edit is in force."""

    to: Ratio = Field(default=1.0, description="Share of calls enforced at the end.")
    over: Duration = Field(description='How long the ramp takes, e.g. "30m".')


class Ramp:
    """The share of calls enforced at a time; thread-safe (immutable but for `reconfigure`)."""

    __slots__ = ("_slope", "end", "start", "start_share", "to")

    def __init__(self, enforce: float, ramp: RampOptions | None, start: float) -> None:
        self.start = start
        self._set(enforce, ramp)

    def _set(self, enforce: float, ramp: RampOptions | None) -> None:
        self.start_share = enforce
        if ramp is None or ramp.over <= 0:
            self.to = enforce if ramp is None else ramp.to
            self.end = self.start
            self._slope = 0.0
        else:
            self.to = ramp.to
            self.end = self.start + ramp.over
            self._slope = (ramp.to - enforce) / ramp.over

    def share(self, now: float) -> float:
        """The share of calls enforced at `now` (engine clock)."""
        if now >= self.end:
            return self.to
        if now <= self.start:
            return self.start_share
        return self.start_share + self._slope * (now - self.start)

    def enforced(self, now: float, u: float) -> bool:
        """Whether the call that drew `u` (uniform in [0, 1)) is enforced."""
        return u < self.share(now)

    def reconfigure(self, enforce: float, ramp: RampOptions | None, now: float) -> bool:
        """New settings: True (and a restart at `now`) only if they differ from these."""
        same = enforce == self.start_share and (
            (ramp is None and self.end == self.start and self.to == enforce)
            or (ramp is not None and ramp.to == self.to and self.end - self.start == ramp.over)
        )
        if same:
            return False
        self.start = now
        self._set(enforce, ramp)
        return True


def make_ramp(
    enforce: float | None, ramp: RampOptions | None, now: float, previous: Ramp | None = None
) -> Ramp | None:
    """The ramp of a policy being compiled (None: every call enforced, no cost), reusing the
    guard's `previous` ramp (and its start) when the settings did not change."""
    if enforce is None and ramp is None:
        return None
    share = 0.0 if enforce is None else enforce
    if previous is not None:
        previous.reconfigure(share, ramp, now)
        return previous
    return Ramp(share, ramp, now)
