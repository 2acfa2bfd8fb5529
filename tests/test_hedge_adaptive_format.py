"""The hedge section and the adaptive bulkhead in the file format: defaults, and each broken
file's exact error (key path, line, the fix)."""

from __future__ import annotations

import textwrap

import pytest

from policyengine._config.loader import load_text
from policyengine.exceptions import PolicyValidationError


def policies(text: str):  # type: ignore[no-untyped-def]
    return load_text(textwrap.dedent(text).lstrip("\n"), "p.toml").policies


def only(text: str) -> tuple[str, int | None, str]:
    with pytest.raises(PolicyValidationError) as info:
        load_text(textwrap.dedent(text).lstrip("\n"), "p.toml")
    found = [(e.path, e.line, e.message) for e in info.value.errors]
    assert len(found) == 1, found
    return found[0]


def test_hedge_defaults_and_percentile() -> None:
    hedge = policies("[policies.p.hedge]\n")["p"].hedge
    assert hedge is not None
    assert (hedge.delay, hedge.max_extra, hedge.max_extra_load, hedge.min_delay) == (
        "p95",
        1,
        0.05,
        0.005,
    )
    assert hedge.quantile == pytest.approx(0.95)
    tail = policies('[policies.p.hedge]\ndelay = "P99.90"\n')["p"].hedge
    assert tail is not None and tail.delay == "p99.9" and tail.quantile == pytest.approx(0.999)


def test_hedge_fixed_delay_is_seconds() -> None:
    hedge = policies('[policies.p.hedge]\ndelay = "50ms"\nmax_extra = 2\n')["p"].hedge
    assert hedge is not None and hedge.delay == pytest.approx(0.05) and hedge.quantile is None
    assert hedge.model_dump(mode="json")["delay"] == "50ms"


@pytest.mark.parametrize("delay", ['"p49"', '"p100"', '"p99.95"', '"fast"', "5"])
def test_hedge_bad_delay(delay: str) -> None:
    path, line, message = only(f"[policies.p.hedge]\ndelay = {delay}\n")
    assert (path, line) == ("policies.p.hedge.delay", 2)
    assert "p50" in message or "unit" in message or "duration" in message


def test_hedge_delay_below_min_delay() -> None:
    path, line, message = only('[policies.p.hedge]\ndelay = "2ms"\nmin_delay = "5ms"\n')
    assert (path, line) == ("policies.p.hedge.delay", 2)
    assert "shorter than min_delay" in message and "lower min_delay" in message


def test_hedge_max_extra_bounds_and_load() -> None:
    path, _, message = only("[policies.p.hedge]\nmax_extra = 6\n")
    assert path == "policies.p.hedge.max_extra" and "5" in message
    path, _, message = only("[policies.p.hedge]\nmax_extra_load = 0\n")
    assert path == "policies.p.hedge.max_extra_load" and "greater than 0" in message
    path, _, _ = only("[policies.p.hedge]\nbudget = 1\n")
    assert path == "policies.p.hedge.budget"


def test_adaptive_defaults() -> None:
    bulkhead = policies('[policies.p.bulkhead]\nkind = "adaptive"\nalgorithm = "vegas"\n')[
        "p"
    ].bulkhead
    assert bulkhead is not None
    assert (bulkhead.initial_limit, bulkhead.min_limit, bulkhead.max_limit) == (20, 1, 200)
    assert bulkhead.max_concurrent is None and bulkhead.limit == 20


def test_fixed_bulkhead_unchanged() -> None:
    bulkhead = policies("[policies.p.bulkhead]\nmax_concurrent = 3\n")["p"].bulkhead
    assert bulkhead is not None and bulkhead.limit == 3 and bulkhead.algorithm is None
    assert "initial_limit" not in bulkhead.model_dump(exclude_none=True)


def test_fixed_bulkhead_needs_max_concurrent() -> None:
    path, line, message = only("[policies.p.bulkhead]\nmax_queue = 3\n")
    assert (path, line) == ("policies.p.bulkhead.max_concurrent", 1)
    assert message == "missing required key `max_concurrent`"


def test_adaptive_needs_algorithm() -> None:
    path, line, message = only('[policies.p.bulkhead]\nkind = "adaptive"\n')
    assert path == "policies.p.bulkhead.algorithm" and line == 1
    assert '"gradient2", "vegas" or "aimd"' in message


def test_adaptive_refuses_max_concurrent() -> None:
    path, line, message = only(
        '[policies.p.bulkhead]\nkind = "adaptive"\nalgorithm = "aimd"\nmax_concurrent = 5\n'
    )
    assert (path, line) == ("policies.p.bulkhead.max_concurrent", 4)
    assert "initial_limit" in message


def test_adaptive_keys_need_the_kind() -> None:
    path, line, message = only('[policies.p.bulkhead]\nmax_concurrent = 5\nalgorithm = "aimd"\n')
    assert (path, line) == ("policies.p.bulkhead.algorithm", 3)
    assert 'kind = "adaptive"' in message


@pytest.mark.parametrize(
    ("lines", "key", "line"),
    [
        ("initial_limit = 1\nmin_limit = 2", "initial_limit", 4),
        ("initial_limit = 300", "initial_limit", 4),
        ("max_limit = 10", "max_limit", 4),
        ("min_limit = 30", "min_limit", 4),
        ("min_limit = 5\nmax_limit = 4\ninitial_limit = 4", "min_limit", 4),
    ],
)
def test_adaptive_limits_in_order(lines: str, key: str, line: int) -> None:
    path, at, message = only(
        f'[policies.p.bulkhead]\nkind = "adaptive"\nalgorithm = "gradient2"\n{lines}\n'
    )
    assert (path, at) == (f"policies.p.bulkhead.{key}", line)
    assert "must" in message


def test_unknown_algorithm() -> None:
    path, _, message = only('[policies.p.bulkhead]\nkind = "adaptive"\nalgorithm = "bbr"\n')
    assert path == "policies.p.bulkhead.algorithm" and "gradient2" in message
