"""The circuit breaker state machine, driven by a FakeClock (no sleeps for timing)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyengine._config.models import BreakerOptions
from policyengine._patterns.breaker import Breaker
from policyengine._patterns.windows import CountWindow, TimeWindow
from policyengine._telemetry.events import Event
from policyengine.exceptions import CircuitOpenError, GuardTimeoutError
from policyengine.testing import FakeClock


class Boom(Exception):
    pass


class Declined(Exception):
    pass


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status_code = status


HERE = __name__


def opts(**values: Any) -> BreakerOptions:
    return BreakerOptions.model_validate(values)


def make(
    clock: FakeClock | None = None, *, observe: bool = False, **values: Any
) -> tuple[Breaker, list[Event], FakeClock]:
    clock = clock or FakeClock()
    events: list[Event] = []
    breaker = Breaker("svc", opts(**values), clock, events.append, observe=observe)
    return breaker, events, clock


def fail(b: Breaker, n: int = 1, duration: float = 0.0) -> None:
    for _ in range(n):
        b.on_failure(b.acquire(), Boom(), duration)


def succeed(b: Breaker, n: int = 1, duration: float = 0.0) -> None:
    for _ in range(n):
        b.on_success(b.acquire(), duration)


def changes(events: list[Event]) -> list[tuple[str, str, str]]:
    return [
        (e.data["from"], e.data["to"], e.data["reason"]) for e in events if e.name == "state_change"
    ]


def trip(b: Breaker) -> None:
    while b.state == "closed":
        fail(b)


# -- closed: consecutive failures ------------------------------------------------------------


def test_consecutive_failures_n_minus_one_keeps_closed_n_opens() -> None:
    b, events, _ = make(consecutive_failures=3)
    fail(b, 2)
    assert b.state == "closed"
    assert b.snapshot()["consecutive_failures"] == 2
    fail(b)
    assert b.state == "open"
    assert changes(events) == [("closed", "open", "consecutive_failures")]
    assert events[0].data["open_for"] == 30.0


def test_default_consecutive_rule_is_five_without_rate_rules() -> None:
    b, _, _ = make()
    fail(b, 4)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"


def test_success_resets_consecutive_count() -> None:
    b, _, _ = make(consecutive_failures=3)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"


def test_no_consecutive_rule_when_only_a_rate_rule_is_set() -> None:
    b, _, _ = make(failure_rate=0.5, minimum_calls=20, window_size=100)
    fail(b, 19)  # 19 in a row, but under minimum_calls and no consecutive rule
    assert b.state == "closed"
    assert b.failure_rate is None
    fail(b)
    assert b.state == "open"


def test_consecutive_and_rate_rules_together() -> None:
    b, events, _ = make(consecutive_failures=3, failure_rate=0.9, minimum_calls=10)
    fail(b, 3)
    assert changes(events) == [("closed", "open", "consecutive_failures")]


# -- closed: rate rules ----------------------------------------------------------------------


def test_failure_rate_respects_minimum_calls_and_threshold() -> None:
    b, events, _ = make(failure_rate="50%", minimum_calls=10, window_size=10)
    succeed(b, 6)
    fail(b, 3)
    assert b.state == "closed"
    assert b.failure_rate is None  # 9 calls < minimum_calls
    fail(b)  # 4 of 10
    assert b.failure_rate == pytest.approx(0.4)
    assert b.state == "closed"
    fail(b)  # the oldest success falls out: 5 of 10 -> trips at >= 50%
    assert b.state == "open"
    assert changes(events) == [("closed", "open", "failure_rate")]


def test_count_window_slides() -> None:
    b, _, _ = make(failure_rate=0.5, minimum_calls=4, window_size=4)
    fail(b)
    succeed(b, 3)  # 1 of 4
    succeed(b)  # the failure falls out
    assert b.failure_rate == 0.0
    snap = b.snapshot()
    assert (snap["window_calls"], snap["window_failures"]) == (4, 0)


def test_success_reaching_minimum_calls_judges_the_rate() -> None:
    b, _, _ = make(failure_rate=0.5, minimum_calls=4, window_size=10)
    fail(b, 3)
    assert b.state == "closed"
    succeed(b)  # 3 of 4 >= 0.5
    assert b.state == "open"


def test_slow_call_rate_respects_minimum_calls() -> None:
    b, events, _ = make(
        slow_call_duration="1s", slow_call_rate=0.75, minimum_calls=4, window_size=4
    )
    assert b.timed
    succeed(b, 3, duration=1.0)  # exactly the threshold counts as slow
    assert b.state == "closed"
    succeed(b, duration=0.999)  # 3 of 4 slow
    assert b.state == "open"
    assert changes(events) == [("closed", "open", "slow_call_rate")]


def test_slow_failures_count_as_slow_and_as_failures() -> None:
    b, _, _ = make(
        slow_call_duration="100ms",
        slow_call_rate=1.0,
        failure_rate=1.0,
        minimum_calls=2,
        window_size=5,
    )
    fail(b, duration=0.2)
    snap = b.snapshot()
    assert (snap["window_failures"], snap["window_slow"]) == (1, 1)
    succeed(b, duration=0.01)
    assert b.state == "closed"


def test_not_timed_without_slow_rule() -> None:
    b, _, _ = make()
    assert not b.timed


def test_time_window_expires_old_buckets() -> None:
    b, _, clock = make(window="time", window_duration="10s", failure_rate=0.5, minimum_calls=4)
    fail(b, 3)
    clock.advance(5)
    assert b.snapshot()["window_calls"] == 3
    clock.advance(6)  # the first failures are now older than 10 s
    assert b.snapshot()["window_calls"] == 0
    fail(b, 3)
    assert b.state == "closed"
    assert b.failure_rate is None
    fail(b)
    assert b.state == "open"


def test_time_window_keeps_recent_buckets() -> None:
    b, _, clock = make(window="time", window_duration="60s", failure_rate=0.5, minimum_calls=4)
    for _ in range(3):
        succeed(b)
        clock.advance(10)
    fail(b, 2)  # 2 of 5 within the last minute
    assert b.failure_rate == pytest.approx(0.4)
    clock.advance(35)  # the first success is now 65 s old and expires
    assert b.snapshot()["window_calls"] == 4
    fail(b)  # 3 of 5
    assert b.state == "open"


def test_time_window_long_idle_clears_everything() -> None:
    b, _, clock = make(window="time", window_duration="2s", failure_rate=0.5, minimum_calls=1)
    succeed(b, 5)
    clock.advance(3600)
    assert b.snapshot()["window_calls"] == 0
    fail(b)
    assert b.state == "open"


def test_failure_rate_is_none_without_rate_rule() -> None:
    b, _, _ = make(consecutive_failures=3)
    fail(b)
    assert b.failure_rate is None


outcomes = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=300)


@given(st.integers(min_value=1, max_value=20), outcomes)
def test_count_window_matches_a_naive_model(size: int, calls: list[tuple[bool, bool]]) -> None:
    window = CountWindow(size)
    for i, (failed, slow) in enumerate(calls):
        window.record(failed, slow)
        last = calls[max(0, i + 1 - size) : i + 1]
        assert window.calls == len(last)
        assert window.failures == sum(f for f, _ in last)
        assert window.slow == sum(s for _, s in last)


@given(
    st.sampled_from([0.5, 5.0, 10.0, 60.0, 3600.0]),
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=30), st.booleans(), st.booleans()), max_size=200
    ),
)
def test_time_window_matches_a_naive_bucket_model(
    duration: float, calls: list[tuple[float, bool, bool]]
) -> None:
    clock = FakeClock()
    window = TimeWindow(duration, clock.now)
    width, n = duration / window._n, window._n
    seen: list[tuple[int, bool, bool]] = []
    for gap, failed, slow in calls:
        clock.advance(gap)
        window.record(failed, slow)
        seen.append((int(clock.now() // width), failed, slow))
        window.refresh()
        live = [s for s in seen if s[0] > int(clock.now() // width) - n]
        assert window.calls == len(live)
        assert window.failures == sum(f for _, f, _ in live)
        assert window.slow == sum(s for _, _, s in live)


# -- open and half-open --------------------------------------------------------------------


def test_open_rejects_until_open_duration_then_reads_half_open_without_a_call() -> None:
    b, events, clock = make(consecutive_failures=1, open_duration="30s")
    fail(b)
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.guard == "svc"
    assert info.value.state == "open"
    assert info.value.retry_after == pytest.approx(20)
    assert b.retry_after() == pytest.approx(20)
    clock.advance(20)
    assert b.state == "half_open"
    assert changes(events)[-1] == ("open", "half_open", "open_duration_elapsed")
    assert b.retry_after() == 0.0


def test_half_open_probe_success_closes_and_resets_window() -> None:
    b, events, clock = make(failure_rate=0.5, minimum_calls=2, window_size=10)
    fail(b, 2)
    clock.advance(30)
    succeed(b)
    assert b.state == "closed"
    assert b.snapshot()["window_calls"] == 0
    assert b.retry_after() == 0.0
    assert changes(events)[-1] == ("half_open", "closed", "probes_succeeded")


def test_half_open_needs_all_k_probes_to_succeed() -> None:
    b, _, clock = make(consecutive_failures=1, half_open_calls=3)
    fail(b)
    clock.advance(30)
    permits = [b.acquire() for _ in range(3)]
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.state == "half_open"
    b.on_success(permits[0], 0.0)
    b.on_success(permits[1], 0.0)
    assert b.state == "half_open"
    with pytest.raises(CircuitOpenError):  # used permits stay used
        b.acquire()
    b.on_success(permits[2], 0.0)
    assert b.state == "closed"


def test_a_probe_failure_reopens() -> None:
    b, events, clock = make(consecutive_failures=1, half_open_calls=2)
    fail(b)
    clock.advance(30)
    first, second = b.acquire(), b.acquire()
    b.on_success(first, 0.0)
    b.on_failure(second, Boom(), 0.0)
    assert b.state == "open"
    assert changes(events)[-1] == ("half_open", "open", "probe_failed")


def test_slow_probes_reopen() -> None:
    b, events, clock = make(
        slow_call_duration="1s", slow_call_rate=0.5, minimum_calls=1, window_size=1
    )
    succeed(b, duration=2.0)
    assert b.state == "open"
    clock.advance(30)
    succeed(b, duration=2.0)
    assert b.state == "open"
    assert changes(events)[-1] == ("half_open", "open", "slow_call_rate")
    clock.advance(60)
    succeed(b, duration=0.1)
    assert b.state == "closed"


def test_released_probe_frees_its_permit() -> None:
    b, _, clock = make(consecutive_failures=1)
    fail(b)
    clock.advance(30)
    probe = b.acquire()
    with pytest.raises(CircuitOpenError):
        b.acquire()
    b.on_release(probe)
    assert b.state == "half_open"
    b.on_success(b.acquire(), 0.0)
    assert b.state == "closed"


def test_ignored_probe_frees_its_permit_and_cancellation_counts_nothing() -> None:
    b, _, clock = make(consecutive_failures=1, ignore=[f"{HERE}.Declined"])
    fail(b)
    clock.advance(30)
    b.on_failure(b.acquire(), Declined(), 0.0)
    b.on_failure(b.acquire(), asyncio.CancelledError(), 0.0)
    assert b.state == "half_open"
    assert b.snapshot()["probes_in_flight"] == 0
    succeed(b)
    assert b.state == "closed"


def test_half_open_max_wait_reopens_and_late_result_is_stale() -> None:
    b, events, clock = make(consecutive_failures=1, half_open_max_wait="10s", open_duration="30s")
    fail(b)
    clock.advance(30)
    hung = b.acquire()
    clock.advance(5)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.state == "half_open"
    assert info.value.retry_after == pytest.approx(5)
    clock.advance(5)
    assert b.state == "open"
    assert changes(events)[-1] == ("half_open", "open", "probe_timeout")
    gen = b.snapshot()["generation"]
    b.on_success(hung, 0.0)  # the hung probe finally returns: stale
    assert b.state == "open"
    assert b.snapshot()["generation"] == gen


def test_open_backoff_grows_caps_and_resets() -> None:
    b, events, clock = make(
        consecutive_failures=1,
        open_duration="10s",
        open_backoff={"multiplier": 2.0, "max": "35s"},
    )
    fail(b)
    waits = []
    for _ in range(4):
        waits.append(b.retry_after())
        clock.advance(b.retry_after())
        fail(b)  # the probe fails
    assert waits == [10, 20, 35, 35]
    assert b.snapshot()["reopens"] == 4
    clock.advance(35)
    succeed(b)
    assert b.snapshot()["reopens"] == 0
    fail(b)
    assert b.retry_after() == 10
    opens = [e.data["open_for"] for e in events if e.data.get("to") == "open"]
    assert opens == [10, 20, 35, 35, 35, 10]


# -- concurrency ---------------------------------------------------------------------------


async def test_half_open_admits_exactly_k_of_1000_tasks() -> None:
    b, events, clock = make(consecutive_failures=1, half_open_calls=3)
    fail(b)
    clock.advance(30)
    go = asyncio.Event()
    admitted = 0
    rejected: list[str] = []

    async def caller() -> None:
        nonlocal admitted
        try:
            permit = b.acquire()
        except CircuitOpenError as e:
            rejected.append(e.state)
            return
        admitted += 1
        await go.wait()
        b.on_success(permit, 0.0)

    tasks = [asyncio.create_task(caller()) for _ in range(1000)]
    await asyncio.sleep(0)
    go.set()
    await asyncio.gather(*tasks)
    assert admitted == 3
    assert len(rejected) == 997 and set(rejected) == {"half_open"}
    assert b.state == "closed"
    assert changes(events)[-1] == ("half_open", "closed", "probes_succeeded")


def test_half_open_admits_exactly_k_of_1000_threads() -> None:
    b, _, clock = make(consecutive_failures=1, half_open_calls=3)
    fail(b)
    clock.advance(30)
    n = 1000
    barrier = threading.Barrier(n)
    admitted: list[int] = []
    lock = threading.Lock()

    def caller() -> None:
        try:
            permit: int | None = b.acquire()
        except CircuitOpenError:
            permit = None
        if permit is not None:
            with lock:
                admitted.append(permit)
        barrier.wait()
        if permit is not None:
            b.on_success(permit, 0.0)

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3
    assert b.state == "closed"


async def test_exactly_one_open_event_when_1000_concurrent_calls_fail() -> None:
    b, events, _ = make(consecutive_failures=5)
    go = asyncio.Event()

    async def caller() -> None:
        permit = b.acquire()
        await go.wait()
        b.on_failure(permit, Boom(), 0.0)

    tasks = [asyncio.create_task(caller()) for _ in range(1000)]
    await asyncio.sleep(0)
    go.set()
    await asyncio.gather(*tasks)
    assert changes(events) == [("closed", "open", "consecutive_failures")]
    assert b.snapshot()["generation"] == 1


def test_exactly_one_open_event_when_1000_threads_fail() -> None:
    b, events, _ = make(failure_rate=0.5, minimum_calls=10, window_size=100)
    n = 1000
    barrier = threading.Barrier(n)

    def caller() -> None:
        permit = b.acquire()
        barrier.wait()
        b.on_failure(permit, Boom(), 0.0)

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert changes(events) == [("closed", "open", "failure_rate")]


# -- generations: stale outcomes -----------------------------------------------------------


def test_stale_success_after_a_trip_changes_nothing() -> None:
    b, _, clock = make(consecutive_failures=2, half_open_calls=1)
    early = b.acquire()
    fail(b, 2)
    assert b.state == "open"
    before = b.snapshot()
    b.on_success(early, 0.0)
    assert b.snapshot() == before
    clock.advance(30)
    assert b.state == "half_open"
    b.on_success(early, 0.0)  # still stale in half-open: does not close
    assert b.state == "half_open"
    assert b.snapshot()["probe_successes"] == 0


def test_stale_failure_after_reopen_does_not_double_trip() -> None:
    b, events, clock = make(consecutive_failures=1, half_open_calls=2)
    fail(b)
    clock.advance(30)
    first, second = b.acquire(), b.acquire()
    b.on_failure(first, Boom(), 0.0)
    assert b.state == "open"
    until = b.snapshot()["open_until"]
    b.on_failure(second, Boom(), 0.0)  # the other probe of the same half-open period
    assert b.snapshot()["open_until"] == until
    assert b.snapshot()["reopens"] == 1
    assert len(changes(events)) == 3


def test_every_transition_bumps_the_generation() -> None:
    b, _, clock = make(consecutive_failures=1)
    assert b.snapshot()["generation"] == 0
    fail(b)
    clock.advance(30)
    assert b.state == "half_open"
    succeed(b)
    assert b.snapshot()["generation"] == 3


# -- classification ------------------------------------------------------------------------


def test_ignored_errors_count_nothing_and_keep_the_consecutive_count() -> None:
    b, _, _ = make(
        consecutive_failures=3,
        ignore=[f"{HERE}.Declined", {"type": f"{HERE}.HTTPError", "status": ["4xx"]}],
    )
    fail(b, 2)
    b.on_failure(b.acquire(), Declined(), 0.0)
    b.on_failure(b.acquire(), HTTPError(404), 0.0)
    assert b.snapshot()["consecutive_failures"] == 2
    b.on_failure(b.acquire(), HTTPError(503), 0.0)  # not ignored: a failure
    assert b.state == "open"


def test_record_counts_other_errors_as_successes() -> None:
    b, _, _ = make(consecutive_failures=2, record=["ConnectionError"])
    fail(b)  # Boom is not recorded: a success
    assert b.snapshot()["consecutive_failures"] == 0
    b.on_failure(b.acquire(), ConnectionError(), 0.0)
    b.on_failure(b.acquire(), GuardTimeoutError("svc", "attempt", 1.0), 0.0)  # always a failure
    assert b.state == "open"


def test_ignore_wins_over_record() -> None:
    b, _, _ = make(consecutive_failures=1, record=["OSError"], ignore=["ConnectionError"])
    b.on_failure(b.acquire(), ConnectionError(), 0.0)
    assert b.state == "closed"
    b.on_failure(b.acquire(), OSError(), 0.0)
    assert b.state == "open"


def test_release_and_base_exceptions_count_nothing() -> None:
    b, _, _ = make(consecutive_failures=1, failure_rate=0.5, minimum_calls=1)
    b.on_release(b.acquire())
    b.on_failure(b.acquire(), KeyboardInterrupt(), 0.0)
    assert b.state == "closed"
    assert b.snapshot()["window_calls"] == 0


# -- force ---------------------------------------------------------------------------------


def test_force_open_rejects_and_removal_starts_closed() -> None:
    b, events, clock = make(force="open", open_duration="20s")
    assert b.state == "forced_open"
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.state == "forced_open"
    assert info.value.retry_after == 20
    assert b.retry_after() == 20
    clock.advance(3600)
    assert b.state == "forced_open"
    assert b.reconfigure(opts(open_duration="20s")) == "kept"
    assert b.state == "closed"
    assert changes(events) == [("forced_open", "closed", "force_removed")]
    succeed(b)


def test_force_closed_admits_counts_and_never_trips() -> None:
    b, events, _ = make(consecutive_failures=1, failure_rate=0.5, minimum_calls=1)
    fail(b)
    assert b.state == "open"
    b.reconfigure(opts(consecutive_failures=1, failure_rate=0.5, minimum_calls=1, force="closed"))
    assert b.state == "closed"
    assert b.retry_after() == 0.0
    fail(b, 10)
    assert b.state == "closed"
    assert b.snapshot()["consecutive_failures"] == 10
    assert b.failure_rate == 1.0
    b.reconfigure(opts(consecutive_failures=1, failure_rate=0.5, minimum_calls=1))
    assert b.snapshot()["consecutive_failures"] == 0  # fresh
    assert changes(events) == [
        ("closed", "open", "consecutive_failures"),
        ("open", "closed", "forced"),
    ]
    fail(b)
    assert b.state == "open"


def test_force_open_added_by_reload_and_in_flight_results_are_stale() -> None:
    b, events, _ = make()
    permit = b.acquire()
    b.reconfigure(opts(force="open"))
    assert b.state == "forced_open"
    b.on_failure(permit, Boom(), 0.0)
    b.reconfigure(opts(force="closed"))
    assert b.state == "closed"
    assert changes(events) == [
        ("closed", "forced_open", "forced"),
        ("forced_open", "closed", "forced"),
    ]


# -- reconfigure ---------------------------------------------------------------------------


def test_reconfigure_keeps_state_and_applies_new_thresholds() -> None:
    b, _, clock = make(consecutive_failures=5)
    fail(b, 2)
    assert b.reconfigure(opts(consecutive_failures=3)) == "kept"
    assert b.snapshot()["consecutive_failures"] == 2
    fail(b)
    assert b.state == "open"
    until = b.snapshot()["open_until"]
    assert b.reconfigure(opts(consecutive_failures=3, open_duration="1s")) == "kept"
    assert b.state == "open"
    assert b.snapshot()["open_until"] == until  # the current deadline is kept
    clock.advance(30)
    fail(b)  # probe fails: the new open_duration applies
    assert b.retry_after() == 1


def test_reconfigure_window_shape_change_resets_window_only() -> None:
    b, _, clock = make(failure_rate=0.5, minimum_calls=4, window_size=10)
    fail(b, 3)
    assert b.reconfigure(opts(failure_rate=0.5, minimum_calls=4, window_size=20)) == "window_reset"
    assert b.snapshot()["window_calls"] == 0
    fail(b, 3)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"
    until = b.snapshot()["open_until"]
    new = opts(failure_rate=0.5, minimum_calls=4, window="time", window_duration="30s")
    assert b.reconfigure(new) == "window_reset"
    assert b.state == "open"
    assert b.snapshot()["open_until"] == until
    assert b.reconfigure(opts(failure_rate=0.5, minimum_calls=4, window="time")) == "window_reset"
    assert b.reconfigure(opts(failure_rate=0.6, minimum_calls=4, window="time")) == "kept"
    clock.advance(30)
    succeed(b)
    assert b.state == "closed"


def test_reconfigure_lowering_half_open_calls_settles_the_probes() -> None:
    b, events, clock = make(consecutive_failures=1, half_open_calls=3)
    fail(b)
    clock.advance(30)
    succeed(b)
    assert b.state == "half_open"
    b.reconfigure(opts(consecutive_failures=1, half_open_calls=1))
    assert b.state == "closed"
    assert changes(events)[-1] == ("half_open", "closed", "probes_succeeded")


def test_reconfigure_half_open_max_wait_applies_to_running_probes() -> None:
    b, _, clock = make(consecutive_failures=1)
    fail(b)
    clock.advance(30)
    b.acquire()
    clock.advance(100)
    assert b.state == "half_open"  # no max wait: the probe may hang forever
    b.reconfigure(opts(consecutive_failures=1, half_open_max_wait="10s"))
    assert b.state == "open"


def test_shared_key_is_accepted() -> None:
    b, _, _ = make(shared=True)
    succeed(b)
    assert b.state == "closed"


# -- observe mode --------------------------------------------------------------------------


def test_observe_mode_counts_and_transitions_but_never_rejects() -> None:
    b, events, clock = make(consecutive_failures=2, observe=True)
    fail(b, 2)
    assert b.state == "open"
    assert changes(events) == [("closed", "open", "consecutive_failures")]
    permit = b.acquire()  # admitted anyway
    b.on_success(permit, 0.0)  # would not have run: counts nothing
    assert b.state == "open"
    would = [e for e in events if e.name == "would_reject"]
    assert len(would) == 1
    assert would[0].data == {"state": "open", "retry_after": 30.0}
    clock.advance(30)
    probe, extra = b.acquire(), b.acquire()
    assert [e.data["state"] for e in events if e.name == "would_reject"][-1] == "half_open"
    b.on_failure(extra, Boom(), 0.0)
    assert b.state == "half_open"
    b.on_success(probe, 0.0)
    assert b.state == "closed"


def test_observe_mode_forced_open() -> None:
    b, events, _ = make(force="open", observe=True)
    b.on_success(b.acquire(), 0.0)
    assert b.state == "forced_open"
    assert events[-1].name == "would_reject"


def test_snapshot_keys() -> None:
    b, _, _ = make()
    assert set(b.snapshot()) == {
        "state",
        "generation",
        "consecutive_failures",
        "window_calls",
        "window_failures",
        "window_slow",
        "opened_at",
        "open_until",
        "reopens",
        "probes_in_flight",
        "probe_successes",
    }


def test_retry_after_in_half_open_and_its_lazy_transitions() -> None:
    b, events, clock = make(consecutive_failures=1, half_open_max_wait="10s")
    fail(b)
    clock.advance(30)
    assert b.retry_after() == 0.0  # the open period ended: a probe may go now
    assert changes(events)[-1][1] == "half_open"
    b.acquire()
    clock.advance(4)
    assert b.retry_after() == pytest.approx(6)  # until the probe counts as hung
    clock.advance(6)
    assert b.retry_after() == 30  # the hung probe re-opened it
    assert changes(events)[-1] == ("half_open", "open", "probe_timeout")


def test_a_half_open_rejection_says_when_the_probes_can_be_judged() -> None:
    """Regression (issue 14): with every probe permit taken the call cannot go, so the hint is
    never 0: the time until the oldest probe has run one open_duration (without
    half_open_max_wait), then one open_duration again; with it, until the probe counts as hung."""
    b, _, clock = make(consecutive_failures=1, open_duration="30s")
    fail(b)
    clock.advance(30)
    b.acquire()
    clock.advance(5)
    assert b.retry_after() == pytest.approx(25)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(25)
    clock.advance(40)  # a probe with no deadline, running for 45 s
    assert b.retry_after() == pytest.approx(30)
    b, _, clock = make(consecutive_failures=1, half_open_max_wait="4s")
    fail(b)
    clock.advance(30)
    b.acquire()
    clock.advance(1)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(3)  # at most half_open_max_wait


def test_open_backoff_never_overflows() -> None:
    b, _, clock = make(
        consecutive_failures=1, open_duration="1s", open_backoff={"multiplier": 1e200, "max": "1h"}
    )
    fail(b)
    for _ in range(3):
        clock.advance(b.retry_after())
        fail(b)
    assert b.retry_after() == 3600


# -- a hung probe noticed late: every lazy transition is timed from when it fell due -----------


def hung_probe_breaker(**values: Any) -> tuple[Breaker, list[Event], FakeClock, int, float]:
    """Tripped at `start`, half-open at +30 where a probe starts and hangs (max wait 10s)."""
    options = {"consecutive_failures": 1, "open_duration": "30s", "half_open_max_wait": "10s"}
    b, events, clock = make(**{**options, **values})
    start = clock.now()
    fail(b)
    clock.advance(b.retry_after())
    hung = b.acquire()
    return b, events, clock, hung, start


def test_a_hung_probe_noticed_late_reopens_when_due_and_its_open_period_runs_from_then() -> None:
    """Regression: the re-open was stamped when somebody looked, so after a quiet spell the
    breaker re-opened late and recovery waited up to one more `open_duration`."""
    b, events, clock, hung, start = hung_probe_breaker()
    probe_start = start + 30
    clock.advance(100)  # nobody calls: the probe hung at +10, that open period ended at +40
    probe = b.acquire()  # so a caller gets a probe now, not a rejection until +130
    assert probe & 1
    assert b.state == "half_open"
    assert b.snapshot()["opened_at"] == probe_start + 10
    assert changes(events) == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "open", "probe_timeout"),
        ("open", "half_open", "open_duration_elapsed"),
    ]
    assert events[2].data["open_for"] == 30
    b.on_success(hung, 110.0)  # the hung probe finally returns: stale
    assert b.state == "half_open"
    b.on_success(probe, 0.0)
    assert b.state == "closed"
    assert len(changes(events)) == 5


@pytest.mark.parametrize(
    "notice", ["state", "retry_after", "success", "failure", "release", "reconfigure"]
)
def test_whatever_notices_a_hung_probe_late_applies_both_transitions(notice: str) -> None:
    b, events, clock, hung, start = hung_probe_breaker()
    clock.advance(100)
    if notice == "state":
        assert b.state == "half_open"
    elif notice == "retry_after":
        assert b.retry_after() == 0.0
    elif notice == "success":
        b.on_success(hung, 100.0)  # stale: its half-open period ended at +10
    elif notice == "failure":
        b.on_failure(hung, Boom(), 100.0)  # stale too: no second re-open
    elif notice == "release":
        b.on_release(hung)
    else:
        b.reconfigure(opts(consecutive_failures=1, open_duration="30s", half_open_max_wait="10s"))
    assert changes(events)[1:] == [
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "open", "probe_timeout"),
        ("open", "half_open", "open_duration_elapsed"),
    ]
    snap = b.snapshot()
    assert (snap["state"], snap["opened_at"], snap["reopens"]) == ("half_open", start + 40, 1)
    assert snap["probes_in_flight"] == 0
    assert len(changes(events)) == 4  # and each exactly once


@pytest.mark.parametrize("looks", [(), (12,), (10,), (10, 12, 20, 34.5), (34.75,)])
def test_when_anyone_looked_at_a_hung_probe_does_not_change_when_it_recovers(
    looks: tuple[float, ...],
) -> None:
    """Reading the state during the quiet spell (at `looks`, seconds after the probe started)
    or never: the same re-open time, the same open_until, the same state at +35 and +40."""
    b, events, clock, _, start = hung_probe_breaker()
    probe_start = start + 30
    for at in looks:
        clock.advance(probe_start + at - clock.now())
        assert b.state == ("open" if at >= 10 else "half_open")
    clock.advance(probe_start + 35 - clock.now())
    assert b.retry_after() == pytest.approx(5)  # re-opened at +10, for 30s
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(5)
    snap = b.snapshot()
    assert snap["state"] == "open"
    assert snap["opened_at"] == probe_start + 10
    assert snap["open_until"] == probe_start + 40
    clock.advance(5)
    assert b.state == "half_open"
    assert [to for _, to, _ in changes(events)] == ["open", "half_open", "open", "half_open"]


def test_a_hung_probe_reopens_with_the_grown_backoff_duration_from_when_it_fell_due() -> None:
    b, events, clock = make(
        consecutive_failures=1,
        open_duration="10s",
        half_open_max_wait="5s",
        open_backoff={"multiplier": 2.0, "max": "2m"},
    )
    start = clock.now()
    fail(b)  # open for 10s
    clock.advance(10)
    b.acquire()  # a probe at +10 hangs: due at +15, re-open for 20s (one re-open), to +35
    clock.advance(20)
    assert b.state == "open"
    assert b.retry_after() == pytest.approx(5)
    snap = b.snapshot()
    assert (snap["opened_at"], snap["open_until"], snap["reopens"]) == (start + 15, start + 35, 1)
    clock.advance(5)
    b.acquire()  # a probe at +35 hangs: due at +40, re-open for 40s (two re-opens), to +80
    clock.advance(65)  # nobody looks until +100: open since +40, half-open since +80
    assert b.state == "half_open"
    assert b.snapshot()["opened_at"] == start + 40
    opens = [e.data["open_for"] for e in events if e.data.get("to") == "open"]
    assert opens == [10, 20, 40]
    assert [to for _, to, _ in changes(events)] == ["open", "half_open"] * 3


def test_a_reload_shortening_the_max_wait_does_not_reopen_before_the_reload() -> None:
    """A probe already past the new `half_open_max_wait` counts as hung from the reload on,
    not retroactively (so its open period runs from the reload)."""
    b, events, clock = make(consecutive_failures=1, open_duration="30s")
    fail(b)
    clock.advance(30)
    b.acquire()
    clock.advance(100)
    reloaded_at = clock.now()
    b.reconfigure(opts(consecutive_failures=1, open_duration="30s", half_open_max_wait="10s"))
    clock.advance(50)  # nobody looks until well after: re-opened at the reload, for 30s
    assert b.state == "half_open"
    assert b.snapshot()["opened_at"] == reloaded_at
    assert changes(events)[-2:] == [
        ("half_open", "open", "probe_timeout"),
        ("open", "half_open", "open_duration_elapsed"),
    ]
