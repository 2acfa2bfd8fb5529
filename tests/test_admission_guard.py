"""Rate limits and throttling end to end, through `guard(...).call` / `call_sync` on a FakeClock."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

import policyengine
from policyengine import Engine, RateLimitedError, ThrottledError
from policyengine._patterns.ratelimit import RateLimiter
from policyengine._patterns.throttle import Throttle
from policyengine.testing import FakeClock


class Overloaded(Exception):
    def __init__(self, code: int = 503, retry_after: float | None = None) -> None:
        super().__init__(code)
        self.response = SimpleNamespace(status_code=code, headers={})
        if retry_after is not None:
            self.retry_after = retry_after


async def ok() -> str:
    return "ok"


def rejections(engine: Engine, name: str = "svc") -> dict[str, int]:
    counts: dict[str, int] = engine.guard(name).metrics()["rejections"]
    return counts


def test_a_policy_without_the_sections_has_no_admission_layer(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine("[policies.svc.breaker]\nconsecutive_failures = 3\n")
    assert engine.guards["svc"].layers == ()


async def test_the_rate_limit_refuses_past_the_rate_and_counts_the_reason(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    engine = make_engine('[policies.svc.rate_limit]\nrates = ["2/s"]\nburst = 1\n')
    g = engine.guard("svc")
    assert [await g.call(ok), await g.call(ok)] == ["ok", "ok"]
    with pytest.raises(RateLimitedError) as info:
        await g.call(ok)
    assert info.value.guard == "svc"
    assert info.value.retry_after == pytest.approx(1.0)  # 2 in any second, burst or not
    assert rejections(engine)["rate_limited"] == 1
    clock.advance(1.0)
    assert [g.call_sync(lambda: "sync") for _ in range(2)] == ["sync"] * 2
    with pytest.raises(RateLimitedError):
        g.call_sync(lambda: "sync")
    assert rejections(engine)["rate_limited"] == 2


async def test_max_wait_sleeps_on_the_engine_clock_with_the_token_held(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    engine = make_engine('[policies.svc.rate_limit]\nrates = ["10/s"]\nmax_wait = "1s"\n')
    g = engine.guard("svc")
    for _ in range(3):
        assert await g.call(ok) == "ok"
    assert clock.sleeps == pytest.approx([0.1, 0.1])  # each waited its turn
    g.call_sync(lambda: None)
    assert clock.sleeps[-1] == pytest.approx(0.1)


async def test_a_wait_past_the_total_deadline_is_refused_at_once(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    engine = make_engine(
        '[policies.svc]\ntimeout = { total = "50ms" }\n'
        '[policies.svc.rate_limit]\nrates = ["1/s"]\nmax_wait = "5s"\n'
    )
    g = engine.guard("svc")
    await g.call(ok)
    with pytest.raises(RateLimitedError):
        await g.call(ok)  # refused at admission: the wait cannot fit in the deadline
    with pytest.raises(RateLimitedError):
        g.call_sync(lambda: None)
    assert clock.sleeps == []  # it did not sleep into a certain timeout
    clock.advance(1.0)
    assert await g.call(ok) == "ok"  # the refused calls took no token
    assert clock.sleeps == []


async def test_async_with_waits_for_its_token(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    """A block is one attempt: it waits its turn like a call (it started early before)."""
    engine = make_engine('[policies.svc.rate_limit]\nrates = ["10/s"]\nmax_wait = "1s"\n')
    g = engine.guard("svc")
    started = []
    for _ in range(3):
        async with g:
            started.append(clock.now())
    assert clock.sleeps == pytest.approx([0.1, 0.1])
    assert [b - a for a, b in itertools.pairwise(started)] == pytest.approx([0.1, 0.1])
    with g:
        pass
    assert clock.sleeps[-1] == pytest.approx(0.1)


async def test_every_attempt_takes_a_token_and_a_refused_retry_ends_the_call(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(
        '[policies.svc.retry]\nmax_attempts = 5\nbackoff = "constant"\ninitial_delay = "1ms"\n'
        '[policies.svc.rate_limit]\nrates = ["2/s"]\nburst = 1\n'
    )
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    with pytest.raises(RateLimitedError):
        await engine.guard("svc").call(flaky)
    assert calls == 2  # two tokens, two attempts; the third attempt was refused, not retried


async def test_a_429_with_retry_after_pauses_the_guard(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    engine = make_engine('[policies.svc.rate_limit]\nrates = ["100/s"]\n')
    g = engine.guard("svc")

    async def slow_down() -> None:
        raise Overloaded(429, retry_after=3)

    with pytest.raises(Overloaded):
        await g.call(slow_down)
    with pytest.raises(RateLimitedError) as info:
        await g.call(ok)
    assert info.value.retry_after == pytest.approx(3, abs=0.01)
    clock.advance(3)
    assert await g.call(ok) == "ok"


async def test_a_fallback_covers_the_new_kinds(make_engine: Callable[[str], Engine]) -> None:
    engine = make_engine(
        '[policies.svc.rate_limit]\nrates = ["1/s"]\n'
        '[policies.svc.fallback]\nvalue = "cached"\non = ["rate_limited"]\n'
    )
    g = engine.guard("svc")
    assert await g.call(ok) == "ok"
    assert await g.call(ok) == "cached"


async def test_the_throttle_sheds_attempts_against_an_overloaded_dependency(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    engine = make_engine('[policies.svc.throttle]\nk = 1.5\nwindow = "1m"\nmax_reject = 0.5\n')
    g = engine.guard("svc")

    async def refuse() -> None:
        raise Overloaded(503)

    outcomes = {"sent": 0, "throttled": 0}
    for _ in range(400):
        clock.advance(0.01)
        try:
            await g.call(refuse)
        except Overloaded:
            outcomes["sent"] += 1
        except ThrottledError:
            outcomes["throttled"] += 1
    assert 150 <= outcomes["throttled"] <= 250  # about max_reject of them
    assert rejections(engine)["throttled"] == outcomes["throttled"]
    clock.advance(61)  # the window forgot; a healthy dependency is not throttled
    assert [await g.call(ok) for _ in range(50)] == ["ok"] * 50


async def test_observe_mode_counts_what_it_would_refuse_and_runs_the_call(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(
        '[policies.svc]\nmode = "observe"\n[policies.svc.rate_limit]\nrates = ["1/s"]\n'
    )
    g = engine.guard("svc")
    assert [await g.call(ok) for _ in range(3)] == ["ok"] * 3
    assert g.metrics()["observed"]["would_reject"] == 2


def test_a_reload_keeps_the_runtimes_and_rescales_instead_of_refilling(
    tmp_path: Any, clock: FakeClock
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(
        '[policies.svc.rate_limit]\nrates = ["10/s"]\nburst = 9\n[policies.svc.throttle]\n'
    )
    engine = policyengine.load(path, clock=clock, default=False)
    try:
        g = engine.guard("svc")
        for _ in range(10):
            g.call_sync(lambda: None)
        limiter = engine.guards["svc"].layers[1]
        throttle = engine.guards["svc"].layers[0]
        assert isinstance(limiter, RateLimiter) and isinstance(throttle, Throttle)
        path.write_text(
            '[policies.svc.rate_limit]\nrates = ["100/s"]\nburst = 99\n'
            "[policies.svc.throttle]\nk = 1.5\n"
        )
        assert engine.reload() is True
        assert engine.guards["svc"].layers == (throttle, limiter)  # the same objects
        with pytest.raises(RateLimitedError):
            g.call_sync(lambda: None)  # drained before, drained after: not refilled to 100
        assert throttle.counts(clock.now()) == (10, 10)
    finally:
        engine.close()


def test_shared_scope_on_the_memory_backend_is_per_process(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine('[policies.svc.rate_limit]\nrates = ["1/s"]\nscope = "shared"\n')
    assert type(engine.guards["svc"].layers[0]) is RateLimiter
