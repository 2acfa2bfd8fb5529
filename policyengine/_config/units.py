"""Durations (``"250ms"``, ``"1m30s"``) and ratios (``0.5``, ``"50%"``) as Pydantic types.

Values are stored as floats (seconds, or a ratio in [0, 1]) so the runtime never parses; they
serialise back to the canonical string form for `explain --format toml` and the JSON Schema.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, ValidationInfo, WithJsonSchema

__all__ = ["Duration", "Ratio", "format_duration", "parse_duration", "parse_ratio"]

MAX_DURATION = 365 * 86400.0
"""No timeout, delay or window is longer than a year; longer is a typo, and inf breaks math."""
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_PART = r"(\d+(?:\.\d+)?)(ms|us|µs|s|m|h|d)"
_PART_RE = re.compile(_PART)
_DURATION_RE = re.compile(rf"^(?:{_PART})+$")
DURATION_PATTERN = r"^(?:\d+(?:\.\d+)?(?:ms|us|µs|s|m|h|d))+$"
"""The same grammar as a JSON Schema pattern (no capture groups), for editors."""


TYPICAL: dict[str, tuple[float, float]] = {
    "total": (0.1, 600.0),
    "attempt": (0.01, 120.0),
    "initial_delay": (0.001, 10.0),
    "max_delay": (0.01, 600.0),
    "max_retry_after": (1.0, 3600.0),
    "window_duration": (1.0, 3600.0),
    "open_duration": (0.1, 3600.0),
    "slow_call_duration": (0.01, 60.0),
    "half_open_max_wait": (0.1, 600.0),
    "max": (1.0, 86400.0),
    "max_wait": (0.001, 120.0),
    "timeout": (0.001, 5.0),
    "idle_ttl": (1.0, 86400.0),
    "min_delay": (0.001, 10.0),
    "delay": (0.001, 10.0),
    "window": (1.0, 3600.0),
    "over": (60.0, 86400.0),
    "for": (60.0, 86400.0),
}
"""The range (seconds) a key's value usually lies in: a bare number's hint suggests the unit
that puts it there (``initial_delay = 100`` -> ``"100ms"``, ``open_duration = 30`` -> ``"30s"``),
or both when either could be meant."""


def parse_duration(value: object, key: str | None = None) -> float:
    """Seconds from a duration string; a clear ValueError (with the fix) for anything else.
    `key` (the field name) lets a bare number's hint suggest the unit that fits it."""
    if isinstance(value, bool):
        raise ValueError(f'a duration is a string with a unit such as "2s", not {value!r}')
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f'a duration is a string with a unit such as "2s", not {value!r}')
        hints = number_hints(value, key)
        shown = " or ".join(f'"{h}"' for h in hints)
        either = " (seconds or milliseconds: whichever you meant)" if len(hints) > 1 else ""
        raise ValueError(f"a duration needs a unit: write {shown} instead of {value!r}{either}")
    if not isinstance(value, str):
        raise ValueError(f'a duration is a string with a unit such as "2s", not {value!r}')
    text = value.strip().replace(" ", "")
    if not _DURATION_RE.match(text):
        raise ValueError(
            f"{value!r} is not a duration: use a number and a unit (ms, s, m, h, d), "
            'as in "250ms", "2s", "1m30s"'
        )
    seconds = sum(float(num) * _UNITS[unit] for num, unit in _PART_RE.findall(text))
    if not seconds <= MAX_DURATION:  # also catches a float that overflowed to infinity
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise ValueError(f"{shown!r} is too long: a duration may be at most 365d")
    return seconds


def _as_seconds(value: float) -> str:
    if value == int(value):
        return f"{int(value)}s"
    if value < 1:
        return f"{format_number(value * 1000)}ms"
    return f"{format_number(value)}s"


def _off(seconds: float, low: float, high: float) -> float:
    """How far (in orders of magnitude) `seconds` lies outside [low, high]; 0 inside."""
    if seconds <= 0:
        return 0.0 if low <= 0 else math.inf
    return max(0.0, math.log10(low / seconds), math.log10(seconds / high))


def number_hints(value: float, key: str | None = None) -> list[str]:
    """What to write instead of the bare number `value`: ``["2s"]``, or for a key whose values
    are usually milliseconds ``["100ms"]``, or ``["5ms", "5s"]`` (likelier first) when both
    are plausible for `key` (see `TYPICAL`)."""
    if value == 0:
        return ["0s"]
    typical = TYPICAL.get(key or "")
    as_seconds = _as_seconds(value)
    if typical is None:
        return [as_seconds]
    as_ms = f"{format_number(value)}ms"
    off_s, off_ms = _off(value, *typical), _off(value / 1000, *typical)
    if off_s == off_ms == 0:
        centre = math.sqrt(typical[0] * typical[1])
        ranked = sorted(
            ((as_ms, value / 1000), (as_seconds, value)),
            key=lambda c: abs(math.log10(c[1] / centre)),
        )
        return [text for text, _ in ranked]
    return [as_ms] if off_ms < off_s else [as_seconds]


def format_number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def format_duration(seconds: float) -> str:
    """The shortest exact string for `seconds` (``0.45`` -> ``"450ms"``, ``90`` -> ``"1m30s"``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        if abs(ms - round(ms)) < 1e-9 or ms >= 1:
            return f"{format_number(ms)}ms"
        return f"{format_number(seconds * 1e6)}us"
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{format_number(seconds)}s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        n, whole = divmod(whole, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def parse_ratio(value: object) -> float:
    """A ratio in [0, 1] from a number or a percentage string (``"50%"``)."""
    if isinstance(value, bool):
        raise ValueError(
            f'a ratio is a number in [0, 1] or a percentage such as "50%", not {value}'
        )
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(f'{value!r} is not a ratio: write 0.5 or "50%"')
        try:
            ratio = float(text[:-1]) / 100.0
        except ValueError:
            raise ValueError(f'{value!r} is not a ratio: write 0.5 or "50%"') from None
    elif isinstance(value, int | float):
        ratio = float(value)
    else:
        raise ValueError(
            f'a ratio is a number in [0, 1] or a percentage such as "50%", not {value!r}'
        )
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"a ratio must lie in [0, 1] (or 0% to 100%), got {value!r}")
    return ratio


def _duration_in(value: Any, info: ValidationInfo) -> float:
    return parse_duration(value, info.field_name)


def _ratio_in(value: Any) -> float:
    return parse_ratio(value)


Duration = Annotated[
    float,
    BeforeValidator(_duration_in),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": 'A duration with a unit: "250ms", "2s", "1m30s", "1h".',
        }
    ),
]

Ratio = Annotated[
    float,
    BeforeValidator(_ratio_in),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "pattern": r"^\d+(?:\.\d+)?%$"},
            ],
            "description": 'A ratio in [0, 1], or a percentage string such as "50%".',
        }
    ),
]
