"""Properties of retry, for random policies: the sleeps respect `max_delay`, the jitter bounds,
Retry-After and the deadline; a guard never makes more than `max_attempts` attempts; the retry
budget bounds the load over every 10 s window. Everything runs on a FakeClock.

`test_retry` checks `RetryStrategy.delay` and `RetryBudget` on their own; these go through
`wait_before` (hints and deadlines) and through real guards, async and sync.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyengine
from policyengine._config.models import RetryOptions
from policyengine._patterns.backoff import Backoff
from policyengine._patterns.retry import DEFAULT_MAX_RETRY_AFTER, RetryStrategy
from policyengine.testing import FakeClock

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def retry_tables(draw: st.DrawFn, *, attempts: tuple[int, int] = (1, 8)) -> dict[str, Any]:
    """A valid `[retry]` table (durations as strings, in whole milliseconds)."""
    backoff = draw(st.sampled_from(["constant", "linear", "exponential"]))
    initial = draw(st.integers(0, 2000))
    table: dict[str, Any] = {
        "max_attempts": draw(st.integers(*attempts)),
        "backoff": backoff,
        "initial_delay": f"{initial}ms",
        "jitter": draw(st.sampled_from(["none", "full", "equal", "decorrelated"])),
        "multiplier": draw(st.sampled_from([1.0, 1.5, 2.0, 3.0, 10.0])),
    }
    if backoff == "exponential" or draw(st.booleans()):
        table["max_delay"] = f"{initial + draw(st.integers(0, 10_000))}ms"
    return table


def undithered(o: RetryOptions, n: int) -> float:
    """The contract's formula for retry n, capped at max_delay."""
    if o.backoff == "constant":
        d = o.initial_delay
    elif o.backoff == "linear":
        d = o.initial_delay * n
    else:
        d = o.initial_delay * o.multiplier ** (n - 1)
    return d if o.max_delay is None else min(d, o.max_delay)


def jitter_range(o: RetryOptions, n: int, previous: float) -> tuple[float, float]:
    """Where the contract says the sleep before retry n may fall."""
    d = undithered(o, n)
    if o.jitter == "none":
        return d, d
    if o.jitter == "full":
        return 0.0, d
    if o.jitter == "equal":
        return d / 2, d
    top = math.inf if o.max_delay is None else o.max_delay
    base = max(previous, o.initial_delay)
    return min(o.initial_delay, top), min(3 * base, top)


class Hinted(ConnectionError):
    """A retryable error carrying a server's Retry-After hint (seconds)."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# -- wait_before: jitter, hints, max_retry_after, the deadline ---------------------------------


HINTS = st.one_of(
    st.none(),
    st.floats(0, 120, allow_nan=False),
    st.floats(120, 1e300, allow_nan=False),  # past the default cap: clamped, never overflowing
    st.sampled_from([-5.0, math.nan, math.inf, 0.0, 1e300]),
)


@SETTINGS
@given(
    table=retry_tables(attempts=(2, 10)),
    respect=st.booleans(),
    cap_ms=st.one_of(st.none(), st.integers(0, 60_000)),
    total=st.one_of(st.none(), st.floats(0.001, 60)),
    hints=st.lists(HINTS, min_size=10, max_size=10),
    attempt_times=st.lists(st.floats(0, 5), min_size=10, max_size=10),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_sleep_respects_jitter_hints_caps_and_the_deadline(
    table: dict[str, Any],
    respect: bool,
    cap_ms: int | None,
    total: float | None,
    hints: list[float | None],
    attempt_times: list[float],
    seed: int,
) -> None:
    """One simulated call: attempts take `attempt_times`, and before each retry the sleep is
    ``max(min(hint, max_retry_after or DEFAULT_MAX_RETRY_AFTER), delay)`` exactly, and strictly
    less than the time left."""
    table["respect_retry_after"] = respect
    if cap_ms is not None:
        table["max_retry_after"] = f"{cap_ms}ms"
    o = RetryOptions.model_validate(table)
    clock = FakeClock()
    # Two strategies with the same seed draw the same jitter: one gives the plain delay, the
    # other the wait with hints and deadline, so the wait has an exact expected value.
    plain = RetryStrategy(o, clock, rng=random.Random(seed))
    hinted = RetryStrategy(o, clock, rng=random.Random(seed))
    elapsed = 0.0
    previous = 0.0
    for n in range(1, o.max_attempts):
        elapsed += attempt_times[n - 1]
        if total is not None and elapsed >= total:
            break  # the attempt itself ran out of time: no retry is asked for
        remaining = None if total is None else total - elapsed
        delay = plain.delay(n, previous)
        lo, hi = jitter_range(o, n, previous)
        assert lo - 1e-9 <= delay <= hi + 1e-9
        if o.max_delay is not None:
            assert delay <= o.max_delay + 1e-9
        hint = hints[n - 1]
        wait = hinted.wait_before(n, Hinted(hint), previous, remaining)
        expected = delay
        if respect and hint is not None and math.isfinite(hint):
            honoured = max(hint, 0.0)
            cap = DEFAULT_MAX_RETRY_AFTER if o.max_retry_after is None else o.max_retry_after
            honoured = min(honoured, cap)
            expected = max(honoured, delay)
        if remaining is not None and expected >= remaining:
            assert wait is None, (wait, expected, remaining)
            break
        assert wait is not None and close(wait, expected), (wait, expected)
        assert remaining is None or wait < remaining
        elapsed += wait
        previous = wait
    if total is not None:
        assert elapsed < total + max(attempt_times)  # every sleep ended before the deadline


# -- through a guard: attempts, retries, sleeps, the original exception ------------------------


def engine_for(retry: dict[str, Any], clock: FakeClock, **sections: Any) -> policyengine.Engine:
    policy = {"retry": retry, **sections}
    return policyengine.loads(
        tomli_w.dumps({"policies": {"api": policy}}), clock=clock, default=False
    )


class Flaky:
    """Fails its first `failures` attempts with `error()`, then returns "ok"."""

    def __init__(self, failures: int, error: type[Exception]) -> None:
        self.failures = failures
        self.error = error
        self.attempts = 0
        self.raised: list[BaseException] = []

    def attempt(self) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            exc = self.error(self.attempts)
            self.raised.append(exc)
            raise exc
        return "ok"

    async def __call__(self) -> str:
        return self.attempt()


@SETTINGS
@given(
    table=retry_tables(),
    failures=st.integers(0, 12),
    retryable=st.booleans(),
    sync=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_guard_never_exceeds_max_attempts(
    table: dict[str, Any], failures: int, retryable: bool, sync: bool, seed: int
) -> None:
    table["retry_on"] = ["ConnectionError"]
    clock = FakeClock()
    engine = engine_for(table, clock)
    try:
        handle = engine.guard("api")
        strategy = handle.current().retry
        assert strategy is not None
        strategy._jitter = type(strategy)(  # a seeded jitter, same kind
            strategy.options, clock, rng=random.Random(seed)
        )._jitter
        o = strategy.options
        flaky = Flaky(failures, ConnectionError if retryable else ValueError)
        outcome: object
        try:
            outcome = handle.call_sync(flaky.attempt) if sync else asyncio.run(handle.call(flaky))
        except Exception as exc:
            outcome = exc
        attempts = flaky.attempts
        assert 1 <= attempts <= o.max_attempts
        expected = min(failures + 1, o.max_attempts) if retryable else 1
        assert attempts == expected
        if attempts > failures:
            assert outcome == "ok"
        else:
            assert outcome is flaky.raised[-1]  # the original exception, not a wrapper
        m = handle.metrics()
        assert m["calls"] == 1
        assert m["retries"] == attempts - 1 == len(clock.sleeps)
        assert (m["successes"], m["failures"]) == ((1, 0) if outcome == "ok" else (0, 1))
        previous = 0.0
        for n, slept in enumerate(clock.sleeps, start=1):
            lo, hi = jitter_range(o, n, previous)
            assert lo - 1e-9 <= slept <= hi + 1e-9
            if o.max_delay is not None:
                assert slept <= o.max_delay + 1e-9
            previous = slept
    finally:
        engine.close()


@SETTINGS
@given(table=retry_tables(attempts=(2, 8)), total_ms=st.integers(1, 5000), sync=st.booleans())
def test_no_backoff_sleep_reaches_the_total_deadline(
    table: dict[str, Any], total_ms: int, sync: bool
) -> None:
    """Sleeps run on the FakeClock (no real time passes), so each must fit in what is left of
    the real-time deadline on its own: none may be as long as `total`."""
    clock = FakeClock()
    engine = engine_for(table, clock, timeout={"total": f"{total_ms}ms"})
    try:
        handle = engine.guard("api")
        flaky = Flaky(100, ConnectionError)
        with pytest.raises(ConnectionError):
            if sync:
                handle.call_sync(flaky.attempt)
            else:
                asyncio.run(handle.call(flaky))
        max_attempts = table["max_attempts"]
        assert 1 <= flaky.attempts <= max_attempts
        assert all(s < total_ms / 1000 for s in clock.sleeps)
        assert len(clock.sleeps) == flaky.attempts - 1
    finally:
        engine.close()


# -- the budget through a guard ----------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0, 0.5, 1, 5]),
    max_attempts=st.integers(2, 6),
    gaps=st.lists(st.sampled_from([0.0, 0.0625, 0.25, 1.0, 3.0]), min_size=50, max_size=400),
    sync=st.booleans(),
)
def test_the_budget_bounds_attempts_over_every_window(
    ratio: float, floor: float, max_attempts: int, gaps: list[float], sync: bool
) -> None:
    """A dependency that always fails: at each retry, the retries of the last 10 s are at most
    ratio x the calls of those 10 s plus min_per_second x 10; so the attempts of any 10 s are
    at most calls x (1 + ratio) + min_per_second x 10."""
    clock = FakeClock(0.0)
    table = {
        "max_attempts": max_attempts,
        "backoff": "constant",
        "initial_delay": "0ms",
        "jitter": "none",
        "budget": {"ratio": ratio, "min_per_second": floor},
    }
    engine = engine_for(table, clock)
    calls: deque[float] = deque()
    retries: deque[float] = deque()
    total_calls = total_retries = 0
    try:
        handle = engine.guard("api")

        def down() -> None:
            nonlocal total_retries
            now = clock.now()
            if attempt[0] > 0:  # a retry: check the window ending now
                total_retries += 1
                retries.append(now)
                while calls and calls[0] <= now - 10:
                    calls.popleft()
                while retries and retries[0] <= now - 10:
                    retries.popleft()
                assert len(retries) <= ratio * len(calls) + floor * 10 + 1e-9
            attempt[0] += 1
            raise ConnectionError

        async def down_async() -> None:
            down()

        async def drive() -> None:
            nonlocal total_calls
            for gap in gaps:
                clock.advance(gap)
                attempt[0] = 0
                calls.append(clock.now())
                total_calls += 1
                with pytest.raises(ConnectionError):
                    if sync:
                        handle.call_sync(down)
                    else:
                        await handle.call(down_async)
                assert 1 <= attempt[0] <= max_attempts

        attempt = [0]
        asyncio.run(drive())
        m = handle.metrics()
        assert m["calls"] == total_calls
        assert m["retries"] == total_retries
        span = clock.now() - 0.0
        windows = math.floor(span / 10) + 1
        assert total_calls + total_retries <= total_calls * (1 + ratio) + floor * 10 * windows + 1
        if total_retries < total_calls * (max_attempts - 1):
            assert m["rejections"]["budget_exhausted"] > 0
    finally:
        engine.close()


@pytest.mark.fuzz
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=retry_tables(), failures=st.integers(0, 12), retryable=st.booleans())
def test_a_guard_never_exceeds_max_attempts_long(
    table: dict[str, Any], failures: int, retryable: bool
) -> None:
    test_a_guard_never_exceeds_max_attempts.hypothesis.inner_test(  # type: ignore[attr-defined]
        table, failures, retryable, sync=failures % 2 == 0, seed=failures
    )


def test_undithered_matches_the_backoff_table() -> None:
    """The test's own formula agrees with `Backoff` on a few hand-picked policies."""
    for kind, initial, cap, mult in (
        ("constant", 0.1, None, 2.0),
        ("linear", 0.1, 0.25, 2.0),
        ("exponential", 0.1, 1.0, 3.0),
    ):
        table: dict[str, Any] = {"backoff": kind, "initial_delay": f"{int(initial * 1000)}ms"}
        table["multiplier"] = mult
        if cap is not None:
            table["max_delay"] = f"{int(cap * 1000)}ms"
        o = RetryOptions.model_validate(table)
        backoff = Backoff(kind, initial, cap, mult, 10)  # type: ignore[arg-type]
        for n in range(1, 8):
            assert close(undithered(o, n), backoff(n))
