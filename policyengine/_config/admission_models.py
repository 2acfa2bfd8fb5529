"""Admission control as policy data: the `rate_limit` and `throttle` sections.

Kept apart from `_config.models` (which declares the `Policy` fields) so that the runtimes in
`_patterns.ratelimit`, `_patterns.throttle` and `_shared._limiter` import their options without
importing the whole format. Rates are parsed once here ("50/s" -> `Rate(50, 1.0)`), so the runtime
never parses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, model_validator

from .matcher_models import FieldError, FrozenModel
from .units import Duration, Ratio, format_duration

__all__ = ["MAX_WINDOW_COUNT", "Rate", "RateLimitOptions", "ThrottleOptions", "parse_rate"]

MAX_WINDOW_COUNT = 100_000
"""A rate after the first (and the first, with a burst) keeps the times of its last N admissions,
so that it holds over every window exactly: N is capped to bound that memory (8 bytes each)."""

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0}
_PERIODS |= {"h": 3600.0, "hour": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")
RATE_PATTERN = r"^\s*\d+\s*/\s*(s|sec|second|min|minute|h|hour)\s*$"


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` attempts per `period` seconds."""

    count: int
    period: float

    @property
    def interval(self) -> float:
        """The steady flow: seconds between two attempts."""
        return self.period / self.count

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period)
        if unit is None:
            return f"{self.count}/{format_duration(self.period)}"
        return f"{self.count}/{unit}"


def parse_rate(value: object) -> Rate:
    """`Rate` from ``"N/s"``, ``"N/min"`` or ``"N/h"``; a ValueError that says how to write it."""
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise ValueError(f'a rate is a string such as "50/s", "3000/min" or "100/h", not {value!r}')
    match = _RATE_RE.match(value.lower())
    if match is None or match.group(2) not in _PERIODS:
        raise ValueError(
            f"{value!r} is not a rate: write a whole number of attempts per s, min or h, as in "
            '"50/s", "3000/min", "100/h"'
        )
    count = int(match.group(1))
    if count < 1:
        raise ValueError(f"{value!r} allows nothing: a rate needs at least 1 attempt per period")
    return Rate(count, _PERIODS[match.group(2)])


def _rate_in(value: Any) -> Rate:
    return parse_rate(value)


def _rate_out(rate: Rate) -> str:
    return str(rate)


RateSpec = Annotated[
    Rate,
    BeforeValidator(_rate_in),
    PlainSerializer(_rate_out, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": RATE_PATTERN,
            "description": 'Attempts per period: "50/s", "3000/min", "100/h".',
        }
    ),
]


class RateLimitOptions(FrozenModel):
    """How fast attempts may reach the dependency (see `_patterns.ratelimit` for the exact
    semantics)."""

    rates: list[RateSpec] = Field(
        min_length=1, description='Every rate must allow the attempt: ["50/s", "3000/min"].'
    )
    burst: int = Field(
        default=0,
        ge=0,
        strict=True,
        description="Tokens above the first rate's steady flow (0: one attempt per interval).",
    )
    max_wait: Duration = Field(
        default=0.0, description="Wait this long for a token, else RateLimitedError."
    )
    scope: Literal["process", "shared"] = Field(
        default="process",
        description='"shared": one budget for every process on the [state] backend.',
    )
    pause_on_429: bool = Field(
        default=True,
        strict=True,
        description="A 429/503 with a Retry-After hint pauses the limiter until the hint.",
    )

    @model_validator(mode="after")
    def _bounded(self) -> RateLimitOptions:
        for i, rate in enumerate(self.rates):
            if (i > 0 or self.burst > 0) and rate.count > MAX_WINDOW_COUNT:
                per_second = rate.count / rate.period
                fix = (
                    f'write it over a shorter period, such as "{math.ceil(per_second)}/s"'
                    if rate.period > 1.0 and per_second <= MAX_WINDOW_COUNT
                    else "make it the first rate, with burst = 0 (a steady flow keeps no log)"
                )
                raise FieldError(
                    "rates",
                    f"rate {rate} counts more than {MAX_WINDOW_COUNT:,} attempts per period "
                    f"(each is remembered, to hold the rate over every window): {fix}",
                )
        if self.burst > MAX_WINDOW_COUNT:
            raise FieldError("burst", f"burst must not exceed {MAX_WINDOW_COUNT:,}")
        return self


class ThrottleOptions(FrozenModel):
    """Client-side adaptive throttling (Google SRE): see `_patterns.throttle` for what counts."""

    k: float = Field(
        default=2.0, ge=1.0, description="Reject once requests exceed k x accepts (1.1 to 2 usual)."
    )
    window: Duration = Field(default=120.0, description="Requests and accepts counted over this.")
    max_reject: Ratio = Field(default=0.9, description="Never reject more than this share.")

    @model_validator(mode="after")
    def _positive(self) -> ThrottleOptions:
        if self.window <= 0:
            raise FieldError("window", "throttle.window must be greater than 0s")
        return self
