"""Durations and ratios: parsing, canonical formatting, the JSON Schema pattern, the hints."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyengine._config.units import (
    DURATION_PATTERN,
    TYPICAL,
    format_duration,
    parse_duration,
    parse_ratio,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("500us", 0.0005),
        (" 1m 30s ", 90.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "hint"),
    [(2, '"2s"'), (0.25, '"250ms"'), (1.5, '"1.5s"'), (30, '"30s"')],
)
def test_a_bare_number_is_an_error_that_shows_the_fix(value: float, hint: str) -> None:
    with pytest.raises(ValueError, match="a duration needs a unit") as info:
        parse_duration(value)
    assert f"write {hint} instead of {value!r}" in str(info.value)


@pytest.mark.parametrize("bad", ["2", "s", "2 seconds", "-1s", "1x", "", True, None, [1]])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.45, "450ms"),
        (90, "1m30s"),
        (2, "2s"),
        (3600, "1h"),
        (0, "0s"),
        (300, "5m"),
        (1.5, "1.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_format_then_parse_round_trips_milliseconds(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


@pytest.mark.parametrize("text", ["250ms", "2s", "1m30s", "1h", "1.5s", "10us", "1d2h"])
def test_schema_pattern_accepts_what_the_parser_accepts(text: str) -> None:
    parse_duration(text)
    assert re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize("text", ["2", "s", "2 s", "1.s", "-1s"])
def test_schema_pattern_rejects_bare_and_broken(text: str) -> None:
    assert not re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize(("value", "ratio"), [(0.5, 0.5), (0, 0.0), (1, 1.0), ("50%", 0.5)])
def test_parse_ratio(value: object, ratio: float) -> None:
    assert parse_ratio(value) == ratio


@pytest.mark.parametrize("bad", [1.5, -0.1, "150%", "0.5", "half", True])
def test_parse_ratio_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_ratio(bad)


# -- bare numbers: a hint that fits the key (issue 20) ----------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "hints"),
    [
        ("initial_delay", 100, ["100ms"]),
        ("max_wait", 100, ["100ms", "100s"]),  # a thread pool's queue may wait a minute
        ("max_wait", 250, ["250ms"]),
        ("timeout", 50, ["50ms"]),  # [state] timeout
        ("attempt", 450, ["450ms"]),
        ("total", 3000, ["3000ms"]),
        ("total", 3, ["3s"]),
        ("open_duration", 30, ["30s"]),
        ("window_duration", 60, ["60s"]),
        ("max_retry_after", 30, ["30s"]),
        ("max", 300, ["300s"]),
        ("open_duration", 0.5, ["500ms"]),
        ("initial_delay", 1, ["1s", "1ms"]),  # either is plausible: say both
        ("max_wait", 5, ["5s", "5ms"]),
        (None, 100, ["100s"]),  # a key without a typical range keeps the seconds hint
        ("total", 0, ["0s"]),
    ],
)
def test_a_bare_number_hint_fits_the_key(key: str | None, value: float, hints: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value, key)
    shown = " or ".join(f'"{h}"' for h in hints)
    assert f"write {shown} instead of {value!r}" in str(info.value)
    assert ("whichever you meant" in str(info.value)) is (len(hints) > 1)


@given(st.sampled_from(sorted(TYPICAL)), st.integers(min_value=1, max_value=10**7))
def test_a_single_hint_lies_in_the_keys_typical_range_when_any_reading_does(
    key: str, value: int
) -> None:
    low, high = TYPICAL[key]
    readings = [r for r in (value, value / 1000) if low <= r <= high]
    with pytest.raises(ValueError) as info:
        parse_duration(value, key)
    suggested = re.findall(r'"([^"]+)"', str(info.value))
    assert len(suggested) == max(1, len(readings))
    if readings:
        assert sorted(parse_duration(s) for s in suggested) == pytest.approx(sorted(readings))
