"""Retry decisions: backoff, jitter, retry_on / never_retry, Retry-After, deadline, budget."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import threading
from collections import deque
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine._config.models import BudgetOptions, RetryOptions
from policyengine._patterns.backoff import Backoff, jitter_bounds, make_jitter
from policyengine._patterns.retry import (
    DEFAULT_MAX_RETRY_AFTER,
    MAX_SLEEP,
    RetryBudget,
    RetryStrategy,
    add_budget_note,
)
from policyengine.exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    GuardTimeoutError,
    RejectedError,
)
from policyengine.testing import FakeClock

WALL = 1_700_000_000.0  # a fixed wall-clock "now" for HTTP dates


def options(**kw: Any) -> RetryOptions:
    return RetryOptions.model_validate(kw)


def strategy(seed: int = 7, **kw: Any) -> RetryStrategy:
    if kw.get("backoff", "exponential") == "exponential":
        kw.setdefault("max_delay", "2s")  # required by exponential, the default backoff
    return RetryStrategy(
        options(**kw), FakeClock(), rng=random.Random(seed), wall_time=lambda: WALL
    )


def flat(pairs: list[tuple[float, float]]) -> list[float]:
    return [x for pair in pairs for x in pair]


def budget(clock: FakeClock, **kw: Any) -> RetryBudget:
    return RetryBudget(BudgetOptions.model_validate(kw), clock)


class StatusError(ConnectionError):
    """A transport-ish error carrying an HTTP status on itself."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status_code = status


class _Response:
    def __init__(self, status: int = 503, headers: Any = None) -> None:
        self.status_code = status
        self.headers = headers if headers is not None else {}


class ResponseError(ConnectionError):
    """An error carrying `response.status_code` and `response.headers`, as httpx's do."""

    def __init__(self, status: int = 503, headers: Any = None) -> None:
        super().__init__(status)
        self.response = _Response(status, headers)


class HintError(ConnectionError):
    def __init__(self, retry_after: object) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def http_status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://example.test/")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError("boom", request=request, response=response)


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"backoff": "constant", "initial_delay": "100ms"}, [0.1, 0.1, 0.1, 0.1, 0.1]),
        ({"backoff": "linear", "initial_delay": "100ms"}, [0.1, 0.2, 0.3, 0.4, 0.5]),
        ({"backoff": "linear", "initial_delay": "100ms", "max_delay": "250ms"},
         [0.1, 0.2, 0.25, 0.25, 0.25]),
        ({"backoff": "exponential", "initial_delay": "100ms", "max_delay": "1s"},
         [0.1, 0.2, 0.4, 0.8, 1.0]),
        ({"backoff": "exponential", "initial_delay": "100ms", "max_delay": "10s", "multiplier": 3},
         [0.1, 0.3, 0.9, 2.7, 8.1]),
        ({"backoff": "exponential", "initial_delay": "1s", "max_delay": "1s"}, [1.0] * 5),
        ({"backoff": "constant", "initial_delay": "0s"}, [0.0] * 5),
    ],
)  # fmt: skip
def test_backoff_formulas_without_jitter(kw: dict[str, Any], expected: list[float]) -> None:
    s = strategy(max_attempts=6, jitter="none", **kw)
    got = [s.delay(n, 0.0) for n in range(1, 6)]
    assert got == pytest.approx(expected)
    assert flat(s.schedule()) == pytest.approx(flat([(d, d) for d in expected]))
    assert s.worst_case_sleep() == pytest.approx(sum(expected))


def test_backoff_precomputes_the_schedule_and_computes_beyond_it() -> None:
    b = Backoff("exponential", 0.1, 5.0, 2.0, retries=3)
    assert b.delays == pytest.approx((0.1, 0.2, 0.4))
    assert b(3) == pytest.approx(0.4)
    assert b(4) == pytest.approx(0.8)  # past the table: the formula
    assert b(10_000) == 5.0  # 2 ** 9999 overflows a float: capped, no OverflowError
    with pytest.raises(ValueError, match="start at 1"):
        b(0)
    assert Backoff("linear", 0.5, None, 2.0, retries=2)(7) == pytest.approx(3.5)
    assert Backoff("exponential", 0.0, 1.0, 2.0, retries=0)(5000) == 0.0


def test_max_attempts_one_means_no_schedule() -> None:
    s = RetryStrategy(options(max_attempts=1), FakeClock())  # no max_delay needed: no retries
    assert s.max_attempts == 1
    assert s.schedule() == []
    assert s.worst_case_sleep() == 0.0


def test_max_attempts_sets_the_schedule_length() -> None:
    s = strategy(max_attempts=5, backoff="constant", initial_delay="1s", jitter="full")
    assert s.max_attempts == 5
    assert s.schedule() == [(0.0, 1.0)] * 4
    assert s.worst_case_sleep() == 4.0


# --------------------------------------------------------------------------- jitter


def test_schedule_bounds_for_each_jitter() -> None:
    common: dict[str, Any] = {
        "max_attempts": 5,
        "backoff": "exponential",
        "initial_delay": "100ms",
        "max_delay": "1s",
    }
    d = [0.1, 0.2, 0.4, 0.8]
    for jitter, lows in (("none", d), ("full", [0.0] * 4), ("equal", [x / 2 for x in d])):
        got = strategy(jitter=jitter, **common).schedule()
        assert flat(got) == pytest.approx(flat(list(zip(lows, d, strict=True)))), jitter
    # decorrelated: min(max_delay, uniform(initial, 3 * previous)); the max grows 3x from initial
    deco = strategy(jitter="decorrelated", **common)
    assert flat(deco.schedule()) == pytest.approx([0.1, 0.3, 0.1, 0.9, 0.1, 1.0, 0.1, 1.0])
    assert deco.worst_case_sleep() == pytest.approx(3.2)


@pytest.mark.parametrize("kind", ["full", "equal", "decorrelated"])
def test_jitter_is_reproducible_with_a_seeded_rng(kind: str) -> None:
    kw: dict[str, Any] = {"jitter": kind, "max_attempts": 6, "max_delay": "3s"}
    a, b, c = strategy(1, **kw), strategy(1, **kw), strategy(2, **kw)
    seq = [[s.delay(n, 0.2 * n) for n in range(1, 6)] for s in (a, b, c)]
    assert seq[0] == seq[1]
    assert seq[0] != seq[2]


def test_jitter_spreads_over_its_whole_range() -> None:
    d = 1.0
    rng = random.Random(42)
    full = [make_jitter("full", 0.1, 2.0, rng)(d, 0.0) for _ in range(5000)]
    equal = [make_jitter("equal", 0.1, 2.0, rng)(d, 0.0) for _ in range(5000)]
    assert min(full) < 0.01 and max(full) > 0.99
    assert statistics.fmean(full) == pytest.approx(0.5, abs=0.02)
    assert min(equal) >= 0.5 and min(equal) < 0.51 and max(equal) > 0.99
    assert statistics.fmean(equal) == pytest.approx(0.75, abs=0.02)
    deco = make_jitter("decorrelated", 0.1, 2.0, rng)
    samples = [deco(d, 0.5) for _ in range(5000)]  # uniform(0.1, 1.5)
    assert min(samples) >= 0.1 and max(samples) <= 1.5
    assert statistics.fmean(samples) == pytest.approx(0.8, abs=0.03)


def test_decorrelated_uses_initial_delay_as_the_first_previous() -> None:
    s = strategy(jitter="decorrelated", initial_delay="100ms", max_delay="10s", max_attempts=4)
    for previous in (0.0, -1.0, 0.05):  # what a caller passes for retry 1, or anything too small
        samples = [s.delay(1, previous) for _ in range(2000)]
        assert min(samples) >= 0.1 and max(samples) <= 0.3
    assert max(s.delay(2, 2.0) for _ in range(2000)) > 5.0  # 3 * previous widens the range


def test_decorrelated_without_max_delay_is_uncapped() -> None:
    s = strategy(jitter="decorrelated", backoff="constant", initial_delay="1s", max_attempts=4)
    assert flat(s.schedule()) == pytest.approx([1, 3, 1, 9, 1, 27])
    assert 1.0 <= s.delay(3, 100.0) <= 300.0


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["constant", "linear", "exponential"]),
    jitter=st.sampled_from(["none", "full", "equal", "decorrelated"]),
    initial_ms=st.integers(0, 5000),
    cap_extra_ms=st.integers(0, 60_000),
    multiplier=st.floats(1.0, 10.0),
    attempts=st.integers(2, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_delay_is_within_its_bounds(
    kind: str,
    jitter: str,
    initial_ms: int,
    cap_extra_ms: int,
    multiplier: float,
    attempts: int,
    seed: int,
) -> None:
    s = strategy(
        seed,
        max_attempts=attempts,
        backoff=kind,
        initial_delay=f"{initial_ms}ms",
        max_delay=f"{initial_ms + cap_extra_ms}ms",
        multiplier=multiplier,
        jitter=jitter,
    )
    initial = s.options.initial_delay
    cap = s.options.max_delay
    assert cap is not None
    bounds = s.schedule()
    assert len(bounds) == attempts - 1
    previous = 0.0
    for n in range(1, attempts):
        d = Backoff(kind, initial, cap, multiplier, 0).compute(n)  # type: ignore[arg-type]
        lo, hi = bounds[n - 1]
        for _ in range(5):
            value = s.delay(n, previous)
            assert 0.0 <= value <= cap + 1e-12
            assert lo - 1e-12 <= value <= hi + 1e-12
            if jitter == "none":
                assert value == d
            elif jitter in ("full", "equal"):
                assert value <= d
                if jitter == "equal":
                    assert value >= d / 2
            else:
                assert value >= initial
        previous = value
    assert s.worst_case_sleep() == pytest.approx(math.fsum(hi for _, hi in bounds))
    assert s.worst_case_sleep() <= cap * (attempts - 1) + 1e-9


def test_jitter_bounds_and_unknown_kind() -> None:
    assert jitter_bounds("decorrelated", 0.0, 2, 0.5, None) == (0.5, 4.5)
    with pytest.raises(ValueError, match="unknown jitter"):
        make_jitter("bogus", 0.1, 1.0, random.Random())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- what is retried


def test_default_retries_any_exception_only() -> None:
    s = strategy()
    assert s.should_retry(ValueError())
    assert s.should_retry(ConnectionError())
    assert s.should_retry(GuardTimeoutError("g", "attempt", 1.0))
    assert not s.should_retry(BaseException())


@pytest.mark.parametrize(
    "retry_on",
    [None, ["Exception"], ["BaseException"], ["policyengine.exceptions.RejectedError"],
     ["asyncio.CancelledError", "KeyboardInterrupt", "SystemExit", "GeneratorExit"],
     [{"type": "BaseException", "status": ["5xx"]}]],
)  # fmt: skip
def test_rejections_and_cancellation_are_never_retried(retry_on: Any) -> None:
    s = strategy(retry_on=retry_on)
    for exc in (
        CircuitOpenError("g", 1.0),
        BulkheadFullError("g", 1, 0),
        RejectedError("g"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
    ):
        assert not s.should_retry(exc), exc


def test_retry_on_limits_what_is_retried() -> None:
    s = strategy(retry_on=["ConnectionError", "TimeoutError", "httpx.TransportError"])
    assert s.should_retry(ConnectionRefusedError())
    assert s.should_retry(TimeoutError())
    assert s.should_retry(httpx.ConnectTimeout("slow"))
    assert s.should_retry(GuardTimeoutError("g", "attempt", 0.45))  # attempt timeouts are retried
    assert not s.should_retry(ValueError())
    assert not s.should_retry(http_status_error(503))  # not a TransportError
    assert not strategy(retry_on=["ConnectionError"]).should_retry(
        GuardTimeoutError("g", "attempt", 0.45)
    )
    assert not strategy(retry_on=[]).should_retry(ConnectionError())


def test_never_retry_wins_over_retry_on() -> None:
    s = strategy(retry_on=["OSError"], never_retry=["ConnectionRefusedError", "FileNotFoundError"])
    assert s.should_retry(ConnectionResetError())
    assert not s.should_retry(ConnectionRefusedError())
    assert not s.should_retry(FileNotFoundError())
    d = strategy(never_retry=["ValueError"])  # with the default retry_on
    assert d.should_retry(KeyError())
    assert not d.should_retry(UnicodeError())  # a ValueError subclass


def test_status_matchers_in_retry_on() -> None:
    s = strategy(retry_on=[{"type": "ConnectionError", "status": ["5xx"], "except_status": [503]}])
    assert s.should_retry(StatusError(500))
    assert s.should_retry(ResponseError(502))  # from response.status_code
    assert not s.should_retry(StatusError(503))
    assert not s.should_retry(ResponseError(503))
    assert not s.should_retry(StatusError(404))
    assert not s.should_retry(ConnectionError())  # `status` given, none carried: no match
    assert not s.should_retry(ValueError())


def test_status_matchers_in_never_retry_win() -> None:
    s = strategy(
        retry_on=["ConnectionError", "httpx.HTTPStatusError"],
        never_retry=[
            {"type": "httpx.HTTPStatusError", "status": ["4xx"], "except_status": [408, 429]}
        ],
    )
    assert s.should_retry(http_status_error(500))
    assert s.should_retry(http_status_error(429))
    assert s.should_retry(http_status_error(408))
    assert not s.should_retry(http_status_error(404))
    assert not s.should_retry(http_status_error(400))
    assert s.should_retry(StatusError(404))  # another type: the matcher does not apply
    assert not s.should_retry(CircuitOpenError("g", 1.0))


def test_except_status_alone_and_mixed_plain_types() -> None:
    s = strategy(never_retry=["KeyError", {"type": "ConnectionError", "except_status": ["5xx"]}])
    assert not s.should_retry(ConnectionError())  # no status: not excluded, so it matches
    assert not s.should_retry(StatusError(404))
    assert s.should_retry(StatusError(500))
    assert not s.should_retry(KeyError())
    assert s.should_retry(ValueError())
    assert not s.should_retry(BulkheadFullError("g", 1, 1))


def test_should_retry_is_one_precompiled_function() -> None:
    s = strategy(retry_on=["ConnectionError"])
    assert callable(s.should_retry) and not hasattr(s.should_retry, "__self__")


# --------------------------------------------------------------------------- Retry-After


def test_retry_after_is_ignored_unless_respected() -> None:
    s = strategy(respect_retry_after=False)
    assert s.retry_after_hint(HintError(5)) is None
    assert s.retry_after_hint(ResponseError(503, {"Retry-After": "5"})) is None
    assert strategy(respect_retry_after=False, jitter="none", backoff="constant").wait_before(
        1, HintError(5), 0.0, None
    ) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5.0), (2.5, 2.5), ("7", 7.0), (" 1.5 ", 1.5), (b"3", 3.0), (timedelta(seconds=4), 4.0),
     (-3, 0.0), (0, 0.0), ("soon", None), ("", None), (float("nan"), None), ("inf", None),
     (True, None), ([1], None)],
)  # fmt: skip
def test_retry_after_attribute(value: object, expected: float | None) -> None:
    assert strategy(respect_retry_after=True).retry_after_hint(HintError(value)) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "120"},
        {"retry-after": "120"},
        {"RETRY-AFTER": "120"},
        {b"retry-after": b"120"},
        httpx.Headers({"retry-after": "120"}),
        httpx.Headers({"Retry-After": "120"}),
    ],
)
def test_retry_after_header_in_seconds(headers: Any) -> None:
    s = strategy(respect_retry_after=True)
    assert s.retry_after_hint(ResponseError(503, headers)) == 120.0


def test_retry_after_header_on_an_httpx_error() -> None:
    s = strategy(respect_retry_after=True)
    assert s.retry_after_hint(http_status_error(429, {"Retry-After": "30"})) == 30.0
    assert s.retry_after_hint(http_status_error(429)) is None
    assert s.retry_after_hint(ConnectionError()) is None
    assert s.retry_after_hint(ResponseError(503, None)) is None
    assert s.retry_after_hint(ResponseError(503, {"Retry-After": "later"})) is None


def test_retry_after_header_as_an_http_date() -> None:
    s = strategy(respect_retry_after=True)
    future = format_datetime(datetime.fromtimestamp(WALL + 90, UTC), usegmt=True)
    past = format_datetime(datetime.fromtimestamp(WALL - 90, UTC), usegmt=True)
    assert future.endswith("GMT")
    assert s.retry_after_hint(ResponseError(503, {"Retry-After": future})) == pytest.approx(90.0)
    assert s.retry_after_hint(ResponseError(503, {"Retry-After": past})) == 0.0
    assert s.retry_after_hint(http_status_error(503, {"Retry-After": future})) == pytest.approx(90)
    naive = datetime.fromtimestamp(WALL + 30, UTC).strftime("%a, %d %b %Y %H:%M:%S -0000")
    assert s.retry_after_hint(HintError(naive)) == pytest.approx(30.0)


def test_retry_after_http_date_against_the_real_wall_clock() -> None:
    s = RetryStrategy(options(respect_retry_after=True, max_delay="1s"), FakeClock())
    when = datetime.now(UTC) + timedelta(seconds=60)
    hint = s.retry_after_hint(ResponseError(503, {"Retry-After": format_datetime(when, True)}))
    assert hint is not None and 57.0 <= hint <= 60.0  # the date has whole seconds


def test_retry_after_attribute_wins_and_falls_back_to_the_header() -> None:
    s = strategy(respect_retry_after=True)
    exc = ResponseError(503, {"Retry-After": "9"})
    exc.retry_after = 4  # type: ignore[attr-defined]
    assert s.retry_after_hint(exc) == 4.0
    exc.retry_after = "garbage"  # type: ignore[attr-defined]
    assert s.retry_after_hint(exc) == 9.0


def test_headers_that_misbehave_give_no_hint() -> None:
    class Broken:
        def get(self, key: str) -> str:
            raise RuntimeError("no")

        def items(self) -> list[tuple[str, str]]:
            raise RuntimeError("no")

    s = strategy(respect_retry_after=True)
    assert s.retry_after_hint(ResponseError(503, Broken())) is None
    assert s.retry_after_hint(ResponseError(503, object())) is None


# --------------------------------------------------------------------------- wait_before


def constant(**kw: Any) -> RetryStrategy:
    return strategy(backoff="constant", initial_delay="1s", jitter="none", **kw)


def test_wait_is_the_larger_of_hint_and_backoff() -> None:
    s = constant(respect_retry_after=True, max_attempts=4)
    assert s.wait_before(1, ConnectionError(), 0.0, None) == 1.0
    assert s.wait_before(1, HintError(5), 0.0, None) == 5.0
    assert s.wait_before(1, HintError(0.2), 0.0, None) == 1.0
    assert s.wait_before(2, ResponseError(503, {"Retry-After": "3"}), 1.0, 10.0) == 3.0


def test_hint_capped_by_max_retry_after() -> None:
    s = constant(respect_retry_after=True, max_retry_after="30s")
    assert s.wait_before(1, HintError(3600), 0.0, None) == 30.0  # waits the cap, then retries
    assert s.wait_before(1, HintError(20), 0.0, None) == 20.0
    small = constant(respect_retry_after=True, max_retry_after="500ms")
    assert small.wait_before(1, HintError(60), 0.0, None) == 1.0  # the cap never cuts the backoff


def test_no_sleep_that_cannot_finish_before_the_deadline() -> None:
    s = constant(respect_retry_after=True)
    assert s.wait_before(1, ConnectionError(), 0.0, 1.5) == 1.0
    assert s.wait_before(1, ConnectionError(), 0.0, 1.0) is None  # nothing left for the attempt
    assert s.wait_before(1, ConnectionError(), 0.0, 0.5) is None
    assert s.wait_before(1, ConnectionError(), 0.0, 0.0) is None
    assert s.wait_before(1, ConnectionError(), 0.0, -2.0) is None
    assert s.wait_before(1, HintError(60), 0.0, 10.0) is None  # the hint cannot fit
    assert s.wait_before(1, HintError(5), 0.0, 10.0) == 5.0
    capped = constant(respect_retry_after=True, max_retry_after="2s")
    assert capped.wait_before(1, HintError(60), 0.0, 10.0) == 2.0  # capped first, then it fits


def test_a_huge_hint_without_cap_or_deadline_is_clamped_to_the_documented_maximum() -> None:
    s = constant(respect_retry_after=True)
    for hint in (1e300, 10**400, "1e300", "99999999999", 400.0):
        assert s.wait_before(1, HintError(hint), 0.0, None) == DEFAULT_MAX_RETRY_AFTER
    assert s.wait_before(1, ResponseError(503, {"Retry-After": "1e300"}), 0.0, None) == 300.0
    assert s.wait_before(1, HintError(299), 0.0, None) == 299.0
    longer = constant(respect_retry_after=True, max_retry_after="1h")  # the policy may allow more
    assert longer.wait_before(1, HintError(1e300), 0.0, None) == 3600.0


def test_every_sleep_is_capped_even_an_uncapped_decorrelated_jitter() -> None:
    s = strategy(backoff="constant", jitter="decorrelated", initial_delay="1s", max_attempts=10**6)
    previous, waits = 0.0, []
    for n in range(1, 2000):
        wait = s.wait_before(n, ConnectionError(), previous, None)
        assert wait is not None and 0.0 <= wait <= MAX_SLEEP
        previous = wait
        waits.append(wait)
    assert waits[-1] == MAX_SLEEP  # it grew to the cap instead of overflowing


def test_call_sync_with_a_1e300_retry_after_sleeps_the_cap_then_retries() -> None:
    import policyengine

    clock = FakeClock()
    engine = policyengine.loads(
        '[policies.p.retry]\nmax_attempts = 2\nbackoff = "constant"\n'
        'initial_delay = "10ms"\njitter = "none"\nrespect_retry_after = true\n',
        clock=clock,
        default=False,
    )
    calls: list[float] = []

    def flaky() -> str:
        calls.append(clock.now())
        if len(calls) == 1:
            raise HintError(1e300)
        return "ok"

    assert engine.guard("p").call_sync(flaky) == "ok"
    assert calls[1] - calls[0] == pytest.approx(DEFAULT_MAX_RETRY_AFTER)


async def test_call_with_a_1e300_retry_after_sleeps_the_cap_then_retries() -> None:
    import policyengine

    clock = FakeClock()
    engine = policyengine.loads(
        '[policies.p.retry]\nmax_attempts = 2\nbackoff = "constant"\n'
        'initial_delay = "10ms"\njitter = "none"\nrespect_retry_after = true\n',
        clock=clock,
        default=False,
    )
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(clock.now())
        if len(calls) == 1:
            raise HintError(1e300)
        return "ok"

    assert await engine.guard("p").call(flaky) == "ok"
    assert calls[1] - calls[0] == pytest.approx(DEFAULT_MAX_RETRY_AFTER)


@pytest.mark.parametrize("jitter", ["none", "full", "equal", "decorrelated"])
@pytest.mark.parametrize("backoff", ["constant", "linear", "exponential"])
def test_a_max_delay_below_initial_delay_caps_every_delay(backoff: str, jitter: str) -> None:
    s = strategy(backoff=backoff, jitter=jitter, initial_delay="2s", max_delay="500ms")
    previous = 0.0
    for n in range(1, 50):
        wait = s.wait_before(n, ConnectionError(), previous, None)
        assert wait is not None and 0.0 <= wait <= 0.5
        previous = wait
    assert all(0.0 <= lo <= hi <= 0.5 for lo, hi in s.schedule())


def test_wait_before_applies_jitter() -> None:
    s = strategy(jitter="full", backoff="constant", initial_delay="1s", respect_retry_after=True)
    waits = [s.wait_before(1, ConnectionError(), 0.0, None) for _ in range(200)]
    assert all(w is not None and 0.0 <= w <= 1.0 for w in waits)
    assert len(set(waits)) > 100
    hinted = [s.wait_before(1, HintError(0.5), 0.0, None) for _ in range(200)]
    assert all(w is not None and 0.5 <= w <= 1.0 for w in hinted)


# --------------------------------------------------------------------------- budget


def test_budget_floor_alone() -> None:
    clock = FakeClock(1000.0)
    b = budget(clock, ratio=0.0, min_per_second=1)  # 10 retries per 10 s, whatever the calls
    for _ in range(50):
        b.record_call()
    assert sum(b.try_acquire_retry() for _ in range(15)) == 10
    assert b.snapshot() == {"calls": 50.0, "retries": 10.0, "allowed": 10.0}


def test_budget_ratio_of_calls() -> None:
    clock = FakeClock(1000.0)
    b = budget(clock, ratio=0.2, min_per_second=0)
    assert not b.try_acquire_retry()  # no calls, no floor: nothing
    for _ in range(100):
        b.record_call()
    assert sum(b.try_acquire_retry() for _ in range(50)) == 20
    b.record_call()
    assert not b.try_acquire_retry()  # 0.2 * 101 = 20.2
    for _ in range(4):
        b.record_call()
    assert b.try_acquire_retry()  # 0.2 * 105 = 21


def test_budget_float_rounding_does_not_deny_an_exact_allowance() -> None:
    clock = FakeClock(0.0)
    b = budget(clock, ratio=0.29, min_per_second=0)  # 0.29 * 100 == 28.999999999999996
    for _ in range(100):
        b.record_call()
    assert sum(b.try_acquire_retry() for _ in range(40)) == 29


def test_budget_denies_everything_at_zero() -> None:
    b = budget(FakeClock(), ratio=0.0, min_per_second=0)
    b.record_call()
    assert not b.try_acquire_retry()


def test_budget_window_slides() -> None:
    clock = FakeClock(1000.0)
    b = budget(clock, ratio=0.0, min_per_second=1)
    assert sum(b.try_acquire_retry() for _ in range(20)) == 10
    clock.advance(9.99)
    assert not b.try_acquire_retry()
    clock.advance(0.01)  # exactly 10 s later: those retries are still in the last 10 s
    assert not b.try_acquire_retry()
    clock.advance(1.0)  # a bucket later they have expired (the window errs on the safe side)
    assert sum(b.try_acquire_retry() for _ in range(20)) == 10


def test_budget_calls_expire_too() -> None:
    clock = FakeClock(1000.0)
    b = budget(clock, ratio=0.5, min_per_second=0)
    for _ in range(20):
        b.record_call()
    clock.advance(5)
    assert b.snapshot()["calls"] == 20.0
    clock.advance(5)  # the calls' bucket has left the window
    assert b.snapshot()["calls"] == 0.0
    assert not b.try_acquire_retry()


def test_budget_long_idle_resets() -> None:
    clock = FakeClock(1000.0)
    b = budget(clock, ratio=1.0, min_per_second=0)
    for _ in range(10):
        b.record_call()
        assert b.try_acquire_retry()
    clock.advance(3600)
    assert b.snapshot() == {"calls": 0.0, "retries": 0.0, "allowed": 0.0}
    b.record_call()
    assert b.try_acquire_retry()
    assert not b.try_acquire_retry()


def test_budget_rejects_a_bad_window() -> None:
    with pytest.raises(ValueError):
        RetryBudget(BudgetOptions(), FakeClock(), window=0)
    with pytest.raises(ValueError):
        RetryBudget(BudgetOptions(), FakeClock(), buckets=0)


def test_budget_defaults() -> None:
    b = RetryBudget(BudgetOptions(), FakeClock())
    for _ in range(100):
        b.record_call()
    assert b.snapshot()["allowed"] == pytest.approx(0.2 * 100 + 10 * 10)
    assert "RetryBudget(" in repr(b)


def _simulate(
    ratio: float, floor: float, seed: int, steps: int, max_attempts: int = 4
) -> tuple[int, int]:
    """100% failures: every call retries while the budget allows. Checks the limit at every grant
    against an exact log of event times; returns (calls, retries)."""
    rng = random.Random(seed)
    clock = FakeClock(500.0)
    b = budget(clock, ratio=ratio, min_per_second=floor)
    calls: deque[float] = deque()
    retries: deque[float] = deque()
    n_calls = n_retries = 0
    for _ in range(steps):
        clock.advance(rng.choice([0.0, 0.001, 0.01, 0.05, 0.3, 1.0, 2.7]))
        b.record_call()
        n_calls += 1
        calls.append(clock.now())
        for _ in range(max_attempts - 1):
            if not b.try_acquire_retry():
                break
            now = clock.now()
            n_retries += 1
            retries.append(now)
            while calls and calls[0] <= now - 10.0:
                calls.popleft()
            while retries and retries[0] <= now - 10.0:
                retries.popleft()
            # retries in (now - 10, now] <= ratio * calls in (now - 10, now] + floor * 10
            assert len(retries) <= ratio * len(calls) + floor * 10 + 1e-9
    return n_calls, n_retries


@settings(max_examples=60, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    seed=st.integers(0, 10_000),
)
def test_budget_holds_over_every_trailing_window(ratio: float, floor: float, seed: int) -> None:
    _simulate(ratio, floor, seed, steps=1500)


def test_budget_under_total_failure_bounds_the_load() -> None:
    """100 calls/s for 60 s, all failing, 4 attempts each: ~1.2x the calls, not 4x."""
    clock = FakeClock(0.0)
    b = budget(clock, ratio=0.2, min_per_second=1)
    attempts = calls = 0
    for _ in range(6000):
        clock.advance(0.01)
        b.record_call()
        calls += 1
        attempts += 1
        for _ in range(3):
            if not b.try_acquire_retry():
                break
            attempts += 1
    assert attempts <= calls * 1.2 + 1 * 60 + 10  # calls x (1 + ratio) + the floor
    assert attempts >= calls * 1.15  # and the budget is not needlessly stingy


def test_budget_is_thread_safe() -> None:
    b = budget(FakeClock(), ratio=0.2, min_per_second=0)
    for _ in range(1000):
        b.record_call()
    granted: list[int] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        granted.append(sum(b.try_acquire_retry() for _ in range(100)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 200


def test_budget_from_retry_options() -> None:
    o = options(budget={"ratio": "50%", "min_per_second": 2}, max_delay="1s")
    assert o.budget is not None
    b = RetryBudget(o.budget, FakeClock())
    for _ in range(10):
        b.record_call()
    assert b.snapshot()["allowed"] == pytest.approx(0.5 * 10 + 2 * 10)


def test_add_budget_note() -> None:
    exc = ConnectionError("down")
    add_budget_note(exc, "payments")
    assert exc.__notes__ == [
        "policyengine: retry denied by the retry budget of guard 'payments' "
        "(too many retries among recent calls; see retry.budget)"
    ]


def test_repr_names_the_policy() -> None:
    assert "exponential" in repr(strategy(max_delay="1s"))
