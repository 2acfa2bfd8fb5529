"""The guarded call end to end: layer order, retries, timeouts, bulkhead, fallback, modes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import policyengine
from policyengine import (
    BulkheadFullError,
    CircuitOpenError,
    Engine,
    Event,
    GuardTimeoutError,
    UnknownGuardError,
)
from policyengine.testing import FakeClock

MakeEngine = Callable[[str], Engine]


class Flaky:
    """Fails `failures` times with `error`, then returns `value`."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError, value: str = "ok"):
        self.failures = failures
        self.error = error
        self.value = value
        self.calls = 0
        self.raised: list[BaseException] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            exc = self.error(f"failure {self.calls}")
            self.raised.append(exc)
            raise exc
        return self.value


RETRY = """
[policies.api.retry]
max_attempts = 3
backoff = "constant"
initial_delay = "100ms"
jitter = "none"
"""


async def test_retries_until_success_and_sleeps_on_the_engine_clock(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    g = make_engine(RETRY).guard("api")
    flaky = Flaky(2)
    assert await g.call(flaky) == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.1, 0.1]
    m = g.metrics()
    assert (m["calls"], m["successes"], m["failures"], m["retries"]) == (1, 1, 0, 2)


async def test_the_original_exception_is_reraised_after_the_last_attempt(
    make_engine: MakeEngine,
) -> None:
    g = make_engine(RETRY).guard("api")
    flaky = Flaky(10)
    with pytest.raises(ConnectionError) as info:
        await g.call(flaky)
    assert info.value is flaky.raised[-1]
    assert flaky.calls == 3
    assert g.metrics()["failures"] == 1


async def test_never_retry_wins_over_retry_on(make_engine: MakeEngine) -> None:
    g = make_engine(RETRY + 'retry_on = ["Exception"]\nnever_retry = ["PermissionError"]\n').guard(
        "api"
    )
    flaky = Flaky(5, PermissionError)
    with pytest.raises(PermissionError):
        await g.call(flaky)
    assert flaky.calls == 1


BREAKER = """
[policies.api.retry]
max_attempts = 5
backoff = "constant"
initial_delay = "1s"
jitter = "none"

[policies.api.breaker]
consecutive_failures = 2
open_duration = "30s"
"""


async def test_retry_stops_when_the_breaker_opens_and_rejections_are_not_retried(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    g = make_engine(BREAKER).guard("api")
    flaky = Flaky(100)
    with pytest.raises(ConnectionError) as info:
        await g.call(flaky)
    assert flaky.calls == 2  # the second failure tripped it: no sleeping on an open circuit
    assert clock.sleeps == [1.0]
    assert any("circuit" in note for note in info.value.__notes__)
    assert g.state == "open"
    with pytest.raises(CircuitOpenError) as rejected:
        await g.call(flaky)
    assert rejected.value.guard == "api"
    assert rejected.value.retry_after == pytest.approx(30.0 - 0.0, abs=1.01)
    assert flaky.calls == 2
    assert clock.sleeps == [1.0]
    assert g.metrics()["rejections"]["circuit_open"] == 1
    clock.advance(30)
    assert g.state == "half_open"
    flaky.failures = 0
    assert await g.call(flaky) == "ok"
    assert g.state == "closed"


async def test_open_rejections_count_as_ignored_calls_and_say_when_to_come_back(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = make_engine(BREAKER)
    g = engine.guard("api")
    with pytest.raises(ConnectionError):
        await g.call(Flaky(100))
    assert g.state == "open"
    events: list[Event] = []
    engine.add_listener(events.append)
    before = g.metrics()
    clock.advance(10)
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as rejected:
            await g.call(Flaky(0))
    assert rejected.value.retry_after == pytest.approx(20.0)
    assert rejected.value.state == "open"
    after = g.metrics()
    assert after["calls"] - before["calls"] == 3
    assert after["ignored"] - before["ignored"] == 3
    assert after["rejections"]["circuit_open"] - before["rejections"]["circuit_open"] == 3
    assert (after["successes"], after["failures"]) == (before["successes"], before["failures"])
    assert after["in_flight"] == 0
    rejections = [e for e in events if e.name == "rejected"]
    assert [e.data for e in rejections] == [{"reason": "circuit_open"}] * 3
    clock.advance(20)  # the open period is over: the next call is a probe, not a rejection
    assert await g.call(Flaky(0)) == "ok"
    assert g.state == "closed"


async def test_attempt_timeout_is_a_retried_failure_and_total_timeout_ends_the_call(
    make_engine: MakeEngine,
) -> None:
    g = make_engine(
        """
[policies.api]
timeout = { total = "5s", attempt = "20ms" }
[policies.api.retry]
max_attempts = 3
backoff = "constant"
initial_delay = "1ms"
jitter = "none"
"""
    ).guard("api")
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    with pytest.raises(GuardTimeoutError) as info:
        await g.call(hang)
    assert isinstance(info.value, TimeoutError)
    assert info.value.kind == "attempt"
    assert calls == 3
    m = g.metrics()
    assert (m["timeouts"], m["failures"], m["retries"]) == (3, 1, 2)


async def test_total_timeout_is_not_retried(make_engine: MakeEngine) -> None:
    g = make_engine(
        """
[policies.api]
timeout = { total = "30ms" }
[policies.api.retry]
max_attempts = 5
backoff = "constant"
initial_delay = "1ms"
"""
    ).guard("api")
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    with pytest.raises(GuardTimeoutError) as info:
        await g.call(hang)
    assert info.value.kind == "total"
    assert calls == 1


async def test_a_swallowed_timeout_cancel_does_not_leak_into_the_caller(
    make_engine: MakeEngine,
) -> None:
    g = make_engine('[policies.api]\ntimeout = { attempt = "10ms" }\n').guard("api")

    async def stubborn() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "swallowed"
        return "never"

    assert await g.call(stubborn) == "swallowed"
    await asyncio.sleep(0)  # the task is not cancelled afterwards
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


FULL = """
[policies.api]
timeout = { total = "5s", attempt = "2s" }
[policies.api.retry]
max_attempts = 3
backoff = "constant"
initial_delay = "10ms"
[policies.api.breaker]
consecutive_failures = 3
[policies.api.bulkhead]
max_concurrent = 2
max_queue = 1
"""


async def test_cancellation_is_never_counted_and_releases_every_permit(
    make_engine: MakeEngine,
) -> None:
    g = make_engine(FULL).guard("api")
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(g.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    guard = g.current()
    assert guard.bulkhead is not None and guard.bulkhead.active == 0
    assert guard.breaker is not None and guard.breaker.snapshot()["consecutive_failures"] == 0
    m = g.metrics()
    assert (m["failures"], m["successes"], m["retries"], m["in_flight"]) == (0, 0, 0, 0)


async def test_bulkhead_queues_then_rejects_and_rejections_are_not_retried(
    make_engine: MakeEngine,
) -> None:
    g = make_engine(FULL).guard("api")
    gate = asyncio.Event()
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "done"

    running = [asyncio.create_task(g.call(work)) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert calls == 2
    assert g.metrics()["queued"] == 1
    with pytest.raises(BulkheadFullError):
        await g.call(work)
    gate.set()
    assert await asyncio.gather(*running) == ["done"] * 3
    assert calls == 3
    assert g.metrics()["rejections"]["bulkhead_full"] == 1
    assert g.current().bulkhead.active == 0  # type: ignore[union-attr]


async def test_bulkhead_wait_is_bounded_by_max_wait(make_engine: MakeEngine) -> None:
    g = make_engine(
        '[policies.api.bulkhead]\nmax_concurrent = 1\nmax_queue = 5\nmax_wait = "10ms"\n'
    ).guard("api")
    gate = asyncio.Event()
    first = asyncio.create_task(g.call(gate.wait))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError):
        await g.call(gate.wait)
    gate.set()
    await first
    assert g.current().bulkhead.active == 0  # type: ignore[union-attr]


async def test_hundred_concurrent_slow_calls_run_in_parallel(make_engine: MakeEngine) -> None:
    g = make_engine(FULL.replace("max_concurrent = 2", "max_concurrent = 100")).guard("api")
    t0 = time.perf_counter()
    results = await asyncio.gather(*(g.call(asyncio.sleep, 0.05, i) for i in range(100)))
    assert results == list(range(100))
    assert time.perf_counter() - t0 < 1.0  # 100 x 50 ms in series would be 5 s


FALLBACK = """
[policies.api.breaker]
consecutive_failures = 1
[policies.api.fallback]
value = { status = "queued" }
on = ["circuit_open"]
"""


async def test_fallback_value_serves_the_kinds_listed(make_engine: MakeEngine) -> None:
    g = make_engine(FALLBACK).guard("api")
    with pytest.raises(ConnectionError):  # retries_exhausted is not listed
        await g.call(Flaky(1))
    first = await g.call(Flaky(0))
    assert first == {"status": "queued"}
    first["status"] = "mutated"
    assert await g.call(Flaky(0)) == {"status": "queued"}  # each caller gets its own copy
    assert g.metrics()["fallbacks"] == 2


async def test_fallback_handler_gets_the_error(make_engine: MakeEngine) -> None:
    g = make_engine(
        '[policies.api.fallback]\nhandler = "policyengine._demo.errors:cached_quote"\n'
    ).guard("api")
    result = await g.call(Flaky(1))
    assert result is not None
    assert g.metrics()["fallbacks"] == 1


async def test_disabled_mode_passes_straight_through(make_engine: MakeEngine) -> None:
    g = make_engine(FULL + '\n[policies.off]\nextends = "api"\nmode = "disabled"\n').guard("off")
    flaky = Flaky(1)
    with pytest.raises(ConnectionError):
        await g.call(flaky)
    assert flaky.calls == 1
    assert g.state == "disabled"


async def test_observe_mode_never_rejects_but_reports_what_it_would_do(
    make_engine: MakeEngine,
) -> None:
    g = make_engine(
        BREAKER.replace(
            "[policies.api.retry]", '[policies.api]\nmode = "observe"\n[policies.api.retry]'
        )
    ).guard("api")
    flaky = Flaky(3)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await g.call(flaky)
    assert flaky.calls == 3  # no retries
    assert g.state == "open"  # what the breaker would say
    assert await g.call(flaky) == "ok"  # but it still lets calls through
    m = g.metrics()
    assert m["observed"]["would_reject"] >= 1
    assert m["observed"]["would_retry"] == 3
    assert m["rejections"]["circuit_open"] == 0


async def test_decorators_and_handles_follow_reloads(make_engine: MakeEngine) -> None:
    engine = make_engine(RETRY)
    g = engine.guard("api")
    assert engine.guard("api") is g

    @g
    async def fetch(x: int) -> int:
        """Doc."""
        return x * 2

    @g
    def fetch_sync(x: int) -> int:
        return x * 3

    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Doc."
    assert await fetch(2) == 4
    assert fetch_sync(2) == 6
    from policyengine._config.loader import load_text

    engine.apply(load_text(RETRY.replace("max_attempts = 3", "max_attempts = 1")))
    assert g.current().max_attempts == 1
    flaky = Flaky(1)
    with pytest.raises(ConnectionError):
        await g.call(flaky)
    assert flaky.calls == 1


async def test_unknown_guard_names_the_known_ones(make_engine: MakeEngine) -> None:
    engine = make_engine(RETRY)
    with pytest.raises(UnknownGuardError, match="api") as info:
        engine.guard("nope")
    assert isinstance(info.value, LookupError)


async def test_async_with_is_one_attempt(make_engine: MakeEngine) -> None:
    engine = make_engine(FULL.replace('attempt = "2s"', 'attempt = "10ms"') + "\n")
    g = engine.guard("api")
    async with g:
        pass
    with pytest.raises(GuardTimeoutError):
        async with g:
            await asyncio.Event().wait()
    with pytest.raises(KeyError):
        async with g:
            raise KeyError("x")
    m = g.metrics()
    assert (m["calls"], m["successes"], m["failures"], m["timeouts"]) == (3, 1, 2, 1)
    assert g.current().bulkhead.active == 0  # type: ignore[union-attr]


def test_call_sync_retries_on_the_engine_clock(make_engine: MakeEngine, clock: FakeClock) -> None:
    g = make_engine(RETRY).guard("api")
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "ok"

    assert g.call_sync(flaky) == "ok"
    assert clock.sleeps == [0.1, 0.1]
    with g:
        pass
    assert g.metrics()["calls"] == 2


async def test_threads_bulkhead_runs_blocking_functions_in_its_own_pool(
    make_engine: MakeEngine,
) -> None:
    g = make_engine('[policies.reports.bulkhead]\nkind = "threads"\nmax_concurrent = 2\n').guard(
        "reports"
    )

    def render(month: str) -> str:
        return f"{month} by {threading.current_thread().name}"

    result = await g.call(render, "may")  # type: ignore[arg-type]
    assert result.startswith("may by policyengine-reports")
    assert g.current().bulkhead.active == 0  # type: ignore[union-attr]


async def test_one_open_event_when_a_thousand_concurrent_calls_fail(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine("[policies.api.breaker]\nconsecutive_failures = 5\n")
    events: list[Event] = []
    engine.add_listener(events.append)
    g = engine.guard("api")
    gate = asyncio.Event()

    async def fail() -> None:
        await gate.wait()
        raise ConnectionError

    tasks = [asyncio.create_task(g.call(fail)) for _ in range(1000)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    opened = [e for e in events if e.name == "state_change" and e.data.get("to") == "open"]
    assert len(opened) == 1


async def test_half_open_admits_exactly_k_of_a_thousand(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = make_engine(
        "[policies.api.breaker]\nconsecutive_failures = 1\nhalf_open_calls = 3\n"
        'open_duration = "10s"\n'
    )
    g = engine.guard("api")
    with pytest.raises(ConnectionError):
        await g.call(Flaky(1))
    clock.advance(10)
    gate = asyncio.Event()
    admitted = 0

    async def probe() -> None:
        nonlocal admitted
        admitted += 1
        await gate.wait()

    tasks = [asyncio.create_task(g.call(probe)) for _ in range(1000)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert admitted == 3
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 997
    assert g.state == "closed"


async def test_retry_budget_bounds_attempts_under_total_failure(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    g = make_engine(
        RETRY.replace('initial_delay = "100ms"', 'initial_delay = "0ms"')
        + "budget = { ratio = 0.2, min_per_second = 1 }\n"
    ).guard("api")
    attempts = 0

    async def down() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError

    calls = 500
    for _ in range(calls):
        with pytest.raises(ConnectionError):
            await g.call(down)
    assert attempts <= calls * 1.2 + 1 * 10
    assert g.metrics()["rejections"]["budget_exhausted"] > 0


def test_module_level_guard_uses_the_default_engine(clock: FakeClock) -> None:
    engine = policyengine.loads(RETRY, clock=clock)
    try:
        assert policyengine.guard("api").current() is engine.guards["api"]
        with pytest.raises(UnknownGuardError):
            policyengine.guard("missing")
    finally:
        engine.close()


async def test_default_engine_loads_lazily_from_policyengine_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(RETRY)
    handle = policyengine.guard("api")  # at import time, before anything is loaded
    monkeypatch.setenv("POLICYENGINE_FILE", str(path))
    assert await handle.call(Flaky(0)) == "ok"
    engine = policyengine.default_engine()
    try:
        assert engine.status()["sources"] == [str(path)]
        with pytest.raises(UnknownGuardError):
            policyengine.guard("missing")
    finally:
        engine.close()


def test_events_reach_listeners_and_rejections_only_when_someone_listens(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(BREAKER.replace("consecutive_failures = 2", "consecutive_failures = 1"))
    g = engine.guard("api")

    def fail() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        g.call_sync(fail)
    events: list[Event] = []
    engine.add_listener(events.append)
    with pytest.raises(CircuitOpenError):
        g.call_sync(fail)
    assert [e.name for e in events] == ["rejected"]
    assert events[0].data == {"reason": "circuit_open"}


async def test_the_total_deadline_bounds_the_bulkhead_queue(make_engine: MakeEngine) -> None:
    g = make_engine(
        '[policies.api]\ntimeout = { total = "20ms" }\n'
        "[policies.api.bulkhead]\nmax_concurrent = 1\nmax_queue = 5\n"
    ).guard("api")
    gate = asyncio.Event()
    first = asyncio.create_task(g.call(gate.wait))
    await asyncio.sleep(0)
    with pytest.raises(GuardTimeoutError) as info:
        await g.call(gate.wait)  # queued behind `first` until the total deadline
    assert info.value.kind == "total"
    assert g.metrics()["queued"] == 0
    gate.set()
    with pytest.raises(GuardTimeoutError):
        await first  # its own 20 ms ran out too, while holding the slot
    assert g.current().bulkhead.active == 0  # type: ignore[union-attr]


async def test_a_cancelled_queued_caller_leaves_the_queue_and_passes_no_slot_on_twice(
    make_engine: MakeEngine,
) -> None:
    g = make_engine("[policies.api.bulkhead]\nmax_concurrent = 1\nmax_queue = 5\n").guard("api")
    gate = asyncio.Event()
    first = asyncio.create_task(g.call(gate.wait))
    await asyncio.sleep(0)
    queued = asyncio.create_task(g.call(gate.wait))
    await asyncio.sleep(0)
    assert g.metrics()["queued"] == 1
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert g.metrics()["queued"] == 0
    gate.set()
    await first
    bulkhead = g.current().bulkhead
    assert bulkhead is not None and bulkhead.active == 0


async def test_a_plain_function_given_to_call_is_a_clear_error_not_a_retried_failure(
    make_engine: MakeEngine,
) -> None:
    g = make_engine(BREAKER).guard("api")
    calls = 0

    def blocking() -> str:
        nonlocal calls
        calls += 1
        return "x"

    with pytest.raises(TypeError, match="use call_sync"):
        await g.call(blocking)  # type: ignore[arg-type]
    assert calls == 1  # not retried
    m = g.metrics()
    assert (m["failures"], m["retries"]) == (0, 0)
    assert g.current().breaker.snapshot()["consecutive_failures"] == 0  # type: ignore[union-attr]

    async def raises_type_error() -> None:
        raise TypeError("the dependency's own")

    with pytest.raises(TypeError, match="dependency's own"):
        await g.call(raises_type_error)
    assert g.metrics()["failures"] == 1


async def test_a_fallback_does_not_hide_a_plain_function_given_to_call(
    make_engine: MakeEngine,
) -> None:
    g = make_engine('[policies.api.fallback]\nvalue = "cached"\n').guard("api")
    with pytest.raises(TypeError, match="use call_sync"):
        await g.call(lambda: "x")  # type: ignore[arg-type,return-value]
    assert g.metrics()["fallbacks"] == 0
