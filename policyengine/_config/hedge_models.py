"""The options of hedged requests (`[policies.X.hedge]`): when an extra attempt starts.

`delay` is a duration (``"50ms"``) or a percentile of recent successful attempts (``"p95"``,
``"p50"`` to ``"p99.9"``). The percentile is kept as its canonical string, so `explain` and the
JSON Schema show what was written; `HedgeOptions.quantile` gives the runtime its number.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, model_validator

from .matcher_models import FieldError, FrozenModel
from .units import (
    DURATION_PATTERN,
    Duration,
    Ratio,
    format_duration,
    format_number,
    parse_duration,
)

__all__ = ["HedgeOptions", "parse_delay"]

_PERCENTILE_RE = re.compile(r"^p(\d{2}(?:\.\d+)?)$")
PERCENTILE_PATTERN = r"^p\d{2}(?:\.\d+)?$"


def parse_delay(value: object) -> float | str:
    """Seconds for a duration, the canonical ``"pNN"`` for a percentile; a clear error else."""
    if isinstance(value, str) and value.strip().lower().startswith("p"):
        text = value.strip().lower()
        match = _PERCENTILE_RE.match(text)
        if match is None or not 50.0 <= float(match.group(1)) <= 99.9:
            raise ValueError(
                f'{value!r} is not a percentile delay: use "p50" to "p99.9" (as in "p95"), '
                'or a duration such as "50ms"'
            )
        return "p" + format_number(float(match.group(1)))
    return parse_duration(value)


def _delay_out(value: float | str) -> str:
    return value if isinstance(value, str) else format_duration(value)


HedgeDelay = Annotated[
    float | str,
    BeforeValidator(parse_delay),
    PlainSerializer(_delay_out, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "string", "pattern": PERCENTILE_PATTERN},
            ],
            "description": 'A duration ("50ms") or a percentile of recent successful attempts '
            '("p50" to "p99.9").',
        }
    ),
]


class HedgeOptions(FrozenModel):
    """Hedged requests: after `delay`, start another attempt of idempotent work; the first
    success wins and the others are cancelled. Extra attempts stay within a budget."""

    delay: HedgeDelay = Field(
        default="p95", description='When to start an extra attempt: "50ms", or "p50".."p99.9".'
    )
    max_extra: int = Field(
        default=1, ge=1, le=5, strict=True, description="Extra attempts in flight at once."
    )
    max_extra_load: Ratio = Field(
        default=0.05, description="Extra attempts at most this share of calls over 10 s (+1)."
    )
    min_delay: Duration = Field(
        default=0.005, description="Never hedge sooner, even when the percentile is lower."
    )

    @model_validator(mode="after")
    def _consistent(self) -> HedgeOptions:
        if self.max_extra_load <= 0:
            raise FieldError(
                "max_extra_load",
                "max_extra_load must be greater than 0 (remove the hedge table to stop hedging)",
            )
        delay = self.delay
        if not isinstance(delay, str) and delay < self.min_delay:
            raise FieldError(
                "delay",
                f"delay ({format_duration(delay)}) is shorter than min_delay "
                f"({format_duration(self.min_delay)}): raise delay or lower min_delay",
            )
        return self

    @property
    def quantile(self) -> float | None:
        """The percentile as a fraction (``"p95"`` -> 0.95); None for a fixed delay."""
        delay: Any = self.delay
        return float(delay[1:]) / 100.0 if isinstance(delay, str) else None
