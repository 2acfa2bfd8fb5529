"""Hedged requests: the race driver and the hedge runtime, on a virtual-time event loop.

Every attempt here is a "full attempt" as the lifecycle runs one: it takes a bulkhead slot (a
real `Bulkhead`; full -> `BulkheadFullError`), runs, and returns the slot however it ends,
recording its outcome. Virtual time (`tests/helpers/virtual_loop.py`) makes latencies exact and
free.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from policyengine._config.hedge_models import HedgeOptions
from policyengine._patterns.bulkhead import Bulkhead
from policyengine._patterns.hedge import Hedge
from policyengine._patterns.quantiles import min_samples
from policyengine._runtime.race import race
from policyengine._telemetry.events import Event, Listeners
from policyengine.exceptions import BulkheadFullError
from policyengine.testing import FakeClock
from tests.helpers.virtual_loop import run


class LoopClock:
    """The engine clock read from the (virtual) loop, so budget windows follow virtual time."""

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # built before the loop runs: virtual time starts at 0
            return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def sleep_sync(self, seconds: float) -> None:  # pragma: no cover - not used here
        raise NotImplementedError


@dataclass
class Dependency:
    """Attempts with scripted latencies (seconds) or errors; counts what each came to."""

    latency: Callable[[int], float | BaseException]
    bulkhead: Bulkhead = field(default_factory=lambda: Bulkhead("dep", 100))
    outcomes: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    seen: list[object] = field(default_factory=list)

    async def attempt(self) -> str:
        if not self.bulkhead.try_acquire():
            raise BulkheadFullError("dep", self.bulkhead.max_concurrent, 0)
        n = len(self.starts)
        self.starts.append(asyncio.get_running_loop().time())
        self.seen.append(VAR.get())
        try:
            planned = self.latency(n)
            if isinstance(planned, BaseException):
                await asyncio.sleep(0.03)
                raise planned
            await asyncio.sleep(planned)
        except asyncio.CancelledError:
            self.outcomes.append("cancelled")
            raise
        except Exception:
            self.outcomes.append("failure")
            raise
        finally:
            self.bulkhead.release()
        self.outcomes.append("success")
        return f"attempt {n}"


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def hedge_of(events: list[tuple[float, Event]] | None = None, **options: object) -> Hedge:
    listeners = Listeners()
    if events is not None:
        listeners.add(lambda e: events.append((asyncio.get_running_loop().time(), e)))
    return Hedge("dep", HedgeOptions.model_validate(options), LoopClock(), listeners)  # type: ignore[arg-type]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed_calls(dep: Dependency, hedge: Hedge | None, calls: int, batch: int) -> list[float]:
    loop = asyncio.get_running_loop()

    async def one() -> float:
        t0 = loop.time()
        if hedge is None:
            await dep.attempt()
        else:
            await race(dep.attempt, hedge)
        return loop.time() - t0

    out: list[float] = []
    for _ in range(calls // batch):
        out += await asyncio.gather(*(one() for _ in range(batch)))
    return out


# -- the tail --------------------------------------------------------------------------------


def test_hedging_cuts_the_tail_to_delay_plus_fast_latency() -> None:
    """1% of attempts take 1 s, the rest 8-12 ms; a 15 ms hedge makes p99 and p99.9 fast."""

    def script(seed: int) -> Callable[[int], float]:
        rng = random.Random(seed)
        return lambda n: 1.0 if rng.random() < 0.01 else rng.uniform(0.008, 0.012)

    plain = run(timed_calls(Dependency(script(1)), None, 4000, 100))
    dep = Dependency(script(1))
    hedge = hedge_of(delay="15ms")
    hedged = run(timed_calls(dep, hedge, 4000, 100))
    assert pct(plain, 0.995) >= 1.0  # without: the slow 1% is the tail
    bound = 0.015 + 0.012 + 1e-9  # delay + the slowest fast attempt
    assert pct(hedged, 0.99) <= bound and pct(hedged, 0.999) <= bound
    assert pct(hedged, 0.5) == pytest.approx(pct(plain, 0.5), abs=0.001)  # the body unchanged
    extra = hedge.snapshot()["hedges"]
    assert 20 <= extra <= 0.05 * 4000 + 1  # about the 1% that were slow; within the budget
    wins = hedge.snapshot()["hedge_wins"]
    assert extra - 2 <= wins <= extra  # an extra that drew a slow attempt too lost
    assert dep.bulkhead.active == 0


def test_extra_load_never_exceeds_max_extra_load_plus_one() -> None:
    """Every attempt is slow: hedging wants 100% extra; over every trailing 10 s window the
    extras stay <= 5% of calls + 1."""
    events: list[tuple[float, Event]] = []
    hedge = hedge_of(events, delay="10ms", max_extra=3, max_extra_load=0.05)
    dep = Dependency(lambda n: 0.05)
    calls: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(600):  # 30 s of virtual time, with a burst in the middle
            burst = 40 if i == 300 else 1
            for _ in range(burst):
                calls.append(loop.time())
            await asyncio.gather(*(race(dep.attempt, hedge) for _ in range(burst)))

    run(main())
    hedges = [t for t, e in events if e.name == "hedge"]
    assert hedges and len(hedges) == hedge.snapshot()["hedges"]
    for t in hedges:
        in_window = sum(1 for h in hedges if t - 10 < h <= t)
        window_calls = sum(1 for c in calls if t - 10 < c <= t)
        assert in_window <= 0.05 * window_calls + 1 + 1e-9, (t, in_window, window_calls)


# -- winners and losers ----------------------------------------------------------------------


def test_an_extra_win_cancels_the_first_attempt_and_frees_its_slot() -> None:
    dep = Dependency(lambda n: 1.0 if n == 0 else 0.01)
    hedge = hedge_of(delay="20ms")

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await race(dep.attempt, hedge)
        return result, loop.time() - t0

    result, took = run(main())
    assert result == "attempt 1" and took == pytest.approx(0.03)
    assert dep.outcomes == ["success", "cancelled"]  # the hedge won, then the first unwound
    assert dep.bulkhead.active == 0
    assert hedge.snapshot() == {"hedges": 1, "hedge_wins": 1}


def test_a_first_attempt_win_cancels_the_extras() -> None:
    dep = Dependency(lambda n: 0.03 if n == 0 else 1.0)
    hedge = hedge_of(delay="10ms", max_extra=2, max_extra_load=1.0)

    async def main() -> str:
        result = await race(dep.attempt, hedge)
        await asyncio.sleep(0)  # the cancelled extras unwind on the next turns
        await asyncio.sleep(0)
        return result

    assert run(main()) == "attempt 0"
    assert sorted(dep.outcomes) == ["cancelled", "cancelled", "success"]
    assert dep.bulkhead.active == 0
    assert dep.starts == pytest.approx([0.0, 0.01, 0.02])  # one extra per delay, up to 2
    assert hedge.snapshot() == {"hedges": 2, "hedge_wins": 0}


def test_no_hedge_when_the_first_attempt_is_fast() -> None:
    dep = Dependency(lambda n: 0.005)
    hedge = hedge_of(delay="10ms")
    assert run(race(dep.attempt, hedge)) == "attempt 0"
    assert dep.outcomes == ["success"] and hedge.snapshot()["hedges"] == 0


def test_a_refused_extra_stops_hedging_not_the_call() -> None:
    """The bulkhead has one slot: the extra is refused, the call goes on with the first."""
    dep = Dependency(lambda n: 0.1, bulkhead=Bulkhead("dep", 1))
    hedge = hedge_of(delay="10ms", max_extra=3)
    assert run(race(dep.attempt, hedge)) == "attempt 0"
    assert dep.outcomes == ["success"] and len(dep.starts) == 1
    assert hedge.snapshot() == {"hedges": 1, "hedge_wins": 0}  # tried once, refused, no more
    assert dep.bulkhead.active == 0


def test_a_refused_first_attempt_is_the_call_refused() -> None:
    dep = Dependency(lambda n: 0.1, bulkhead=Bulkhead("dep", 0))
    with pytest.raises(BulkheadFullError):
        run(race(dep.attempt, hedge_of(delay="10ms")))


def test_after_a_failure_the_extra_in_flight_may_still_win() -> None:
    dep = Dependency(lambda n: ConnectionError("reset") if n == 0 else 0.05)
    hedge = hedge_of(delay="10ms", max_extra=3, max_extra_load=1.0)  # the first fails at 30 ms

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        result = await race(dep.attempt, hedge)
        return result, loop.time()

    result, at = run(main())
    assert result == "attempt 1" and at == pytest.approx(0.06)
    assert len(dep.starts) == 3  # extras at 10 and 20 ms; none after the failure at 30 ms
    assert hedge.snapshot()["hedge_wins"] == 1


def test_all_failed_raises_the_last_failure_with_a_note() -> None:
    errors = [ConnectionError("first"), TimeoutError("second")]
    dep = Dependency(lambda n: errors[n])
    hedge = hedge_of(delay="10ms")
    with pytest.raises(TimeoutError) as info:
        run(race(dep.attempt, hedge))
    assert "ConnectionError" in "".join(info.value.__notes__)
    assert dep.outcomes == ["failure", "failure"] and dep.bulkhead.active == 0


def test_a_failure_before_the_delay_is_raised_at_once() -> None:
    dep = Dependency(lambda n: ValueError("bad"))
    hedge = hedge_of(delay="50ms")
    with pytest.raises(ValueError):
        run(race(dep.attempt, hedge))
    assert len(dep.starts) == 1 and hedge.snapshot()["hedges"] == 0


def test_hedges_share_the_total_deadline() -> None:
    """Each attempt is bounded by the call's deadline (as the lifecycle bounds it): the race
    ends at the deadline with the last attempt's timeout."""
    dep = Dependency(lambda n: 1.0)
    hedge = hedge_of(delay="20ms")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.1

        async def attempt() -> str:
            async with asyncio.timeout_at(deadline):
                return await dep.attempt()

        with pytest.raises(TimeoutError):
            await race(attempt, hedge)
        return loop.time()

    assert run(main()) == pytest.approx(0.1)
    assert dep.outcomes == ["cancelled", "cancelled"] and dep.bulkhead.active == 0


def test_an_outer_cancel_cancels_every_attempt() -> None:
    dep = Dependency(lambda n: 1.0)
    hedge = hedge_of(delay="10ms")

    async def main() -> None:
        task = asyncio.ensure_future(race(dep.attempt, hedge))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    run(main())
    assert dep.outcomes == ["cancelled", "cancelled"] and dep.bulkhead.active == 0


def test_an_outer_cancel_as_an_extra_wins_still_propagates() -> None:
    dep = Dependency(lambda n: 1.0 if n == 0 else 0.01)
    hedge = hedge_of(delay="10ms")

    async def main() -> None:
        task = asyncio.ensure_future(race(dep.attempt, hedge))
        loop = asyncio.get_running_loop()
        loop.call_at(0.02, task.cancel)  # the same instant the extra wins
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert dep.bulkhead.active == 0


def test_extra_attempts_run_in_the_callers_context() -> None:
    dep = Dependency(lambda n: 1.0 if n == 0 else 0.01)

    async def main() -> None:
        VAR.set("caller")
        await race(dep.attempt, hedge_of(delay="10ms"))

    run(main())
    assert dep.seen == ["caller", "caller"]


# -- the delay -------------------------------------------------------------------------------


def test_a_percentile_delay_hedges_only_after_the_warm_up() -> None:
    hedge = hedge_of(delay="p95", min_delay="1ms")
    needed = min_samples(0.95)
    assert needed == 100 and hedge.delay is None
    rng = random.Random(3)
    samples = [rng.uniform(0.01, 0.02) for _ in range(needed)]
    for s in samples[:-1]:
        hedge.sample(s)
    assert hedge.delay is None  # 99 samples: no percentile yet
    hedge.sample(samples[-1])
    assert hedge.delay == pytest.approx(pct(samples, 0.95), rel=0.04)


def test_a_percentile_below_min_delay_is_floored() -> None:
    hedge = hedge_of(delay="p50", min_delay="5ms")
    for _ in range(100):
        hedge.sample(0.001)
    assert hedge.delay == pytest.approx(0.005)


def test_warming_up_runs_unhedged_and_learns() -> None:
    dep = Dependency(lambda n: 0.01 if n < 100 else (1.0 if n == 100 else 0.01))
    hedge = hedge_of(delay="p99", min_delay="1ms")

    async def main() -> None:
        for _ in range(min_samples(0.99)):
            await race(dep.attempt, hedge)

    run(main())
    assert hedge.snapshot()["hedges"] == 0  # 200 samples needed for p99; the slow 101st waited
    assert hedge.delay is not None and hedge.delay == pytest.approx(0.01, rel=0.04)


def test_retune_keeps_the_estimator() -> None:
    clock = FakeClock()
    hedge = Hedge("dep", HedgeOptions(delay="p90"), clock)
    for _ in range(200):
        hedge.sample(0.02)
    hedge.retune(HedgeOptions(delay="p50", max_extra=2))
    assert hedge.delay == pytest.approx(0.02, rel=0.04) and hedge.max_extra == 2


def test_a_first_attempt_that_turns_the_cancel_into_an_error_still_loses_cleanly() -> None:
    """The inline attempt catches the race's cancel and raises something else: the extra's
    result is returned and the caller's task carries no cancel request afterwards."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None
        return "slow"

    async def fast() -> str:
        await asyncio.sleep(0.005)
        return "fast"

    calls = iter([stubborn, fast])

    async def main() -> tuple[str, int]:
        result = await race(lambda: next(calls)(), hedge_of(delay="10ms"))
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0.001)  # no stray CancelledError arrives later
        return result, task.cancelling()

    assert run(main()) == ("fast", 0)


def test_decided_rounds_do_not_pile_up_behind_a_long_delay() -> None:
    """A 1 h delay and one round that never ends: the timer queue keeps that round, not the
    thousands decided after it."""
    hedge = hedge_of(delay="1h")
    dep = Dependency(lambda n: 7200.0 if n == 0 else 0.0001)

    async def main() -> int:
        slow = asyncio.ensure_future(race(dep.attempt, hedge))
        await asyncio.sleep(0)
        for _ in range(10_000):
            await race(dep.attempt, hedge)
        size = len(hedge.timers(asyncio.get_running_loop())._entries)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return size

    assert run(main()) <= 4096 + 1
