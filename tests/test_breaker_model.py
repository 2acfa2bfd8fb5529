"""Model-based tests of the circuit breaker: the real `Breaker` (and a guard around it) against
the plain-Python rules of `breaker_model`, on random sequences of calls, outcomes, clock moves,
forced states and reloads. After every step the state, the admissions, the counts, the
`retry_after` hint and the `state_change` events must agree.

CI runs a short budget; ``pytest -m fuzz`` runs a long one (see docs-reliability.md).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import policyengine
from policyengine._config.loader import load_text
from policyengine._config.models import BreakerOptions
from policyengine._patterns.breaker import Breaker
from policyengine._telemetry.events import Event
from policyengine.exceptions import CircuitOpenError
from policyengine.testing import FakeClock
from tests.helpers.breaker_model import BreakerModel, Rejection, Token, make_exception

STEPS: Counter[str] = Counter()
"""Steps checked against the model, by machine (printed by the long runs)."""

# -- random breaker options (durations in whole seconds, ratios exact in binary) -------------

DURATION_KEYS = ("open_duration", "half_open_max_wait", "slow_call_duration")


@st.composite
def breaker_options(draw: st.DrawFn) -> dict[str, Any]:
    """A valid breaker table, as a dict of plain values (durations in seconds)."""
    raw: dict[str, Any] = {}
    if draw(st.booleans()):
        raw["consecutive_failures"] = draw(st.integers(1, 5))
    if draw(st.booleans()):
        raw["failure_rate"] = draw(st.sampled_from([0.25, 0.5, 0.75, 1.0]))
    if draw(st.integers(0, 3)) == 0:
        raw["slow_call_duration"] = draw(st.sampled_from([1, 3]))
        raw["slow_call_rate"] = draw(st.sampled_from([0.5, 1.0]))
    size = draw(st.integers(1, 8))
    raw["window_size"] = size
    raw["minimum_calls"] = draw(st.integers(1, size))
    raw["open_duration"] = draw(st.sampled_from([1, 5, 10, 30]))
    if draw(st.booleans()):
        raw["open_backoff"] = {
            "multiplier": draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
            "max": raw["open_duration"] * draw(st.sampled_from([1, 2, 4, 10])),
        }
    raw["half_open_calls"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        raw["half_open_max_wait"] = draw(st.sampled_from([2, 5, 20]))
    if draw(st.booleans()):
        raw["ignore"] = ["LookupError"]
    if draw(st.integers(0, 3)) == 0:
        raw["record"] = ["OSError"]
    if draw(st.integers(0, 9)) == 0:
        raw["force"] = draw(st.sampled_from(["open", "closed"]))
    return raw


def to_table(raw: dict[str, Any]) -> dict[str, Any]:
    """The TOML form of `raw`: durations as strings with a unit."""
    table = dict(raw)
    for key in DURATION_KEYS:
        if key in table:
            table[key] = f"{table[key]}s"
    if "open_backoff" in table:
        table["open_backoff"] = {**table["open_backoff"], "max": f"{table['open_backoff']['max']}s"}
    return table


def to_options(raw: dict[str, Any]) -> BreakerOptions:
    return BreakerOptions.model_validate(to_table(raw))


ADVANCES = st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0])
DURATIONS = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
KINDS = st.sampled_from(["failure", "failure", "ignored", "other", "timeout", "base"])
PICK = st.integers(0, 1_000_000)


def real_transitions(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.data["from"], e.data["to"]) for e in events if e.name == "state_change"]


def test_model_transitions_list_every_state_change() -> None:
    # The model lists each transition as it makes it (not by comparing states between steps,
    # which would merge half_open -> open -> half_open in one refresh into no change at all).
    raw = {"consecutive_failures": 1, "open_duration": 1, "half_open_max_wait": 2}
    model = BreakerModel(raw, 0.0)
    token = model.acquire(0.0)
    assert isinstance(token, Token)
    model.failure(token, "failure", 0.0, 0.0)
    model.refresh(1.0)
    probe = model.acquire(1.0)
    assert isinstance(probe, Token)
    model.failure(probe, "failure", 0.0, 1.0)
    assert model.transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]
    hung = model.acquire(2.0)  # a probe at 2 that hangs: re-open due at 4, over at 5
    assert isinstance(hung, Token) and hung.kind == "probe"
    assert model.public_state(9.0) == "half_open"
    assert model.transitions[3:] == [
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
    ]
    assert model.open_until == 5.0


def test_model_builds_forced_without_a_transition() -> None:
    model = BreakerModel({"force": "closed"}, 0.0)
    assert model.transitions == []
    model.reconfigure({}, 1.0)  # forced closed -> closed: the public name stays "closed"
    model.reconfigure({"force": "open"}, 2.0)
    assert model.transitions == [("closed", "forced_open")]


# -- the breaker on its own ----------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Drives one `Breaker` and one `BreakerModel` with the same calls and the same clock."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.events: list[Event] = []
        self.calls: list[tuple[int, Token]] = []  # in flight: (real permit, model token)
        self.raw: dict[str, Any] = {}

    @initialize(raw=breaker_options(), observe=st.integers(0, 4))
    def setup(self, raw: dict[str, Any], observe: int) -> None:
        self.raw = raw
        self.observe = observe == 0
        now = self.clock.now()
        self.real = Breaker(
            "svc", to_options(raw), self.clock, self.events.append, observe=self.observe
        )
        self.model = BreakerModel(raw, now, observe=self.observe)

    def now(self) -> float:
        return self.clock.now()

    @rule()
    def start(self) -> None:
        expected = self.model.acquire(self.now())
        try:
            permit = self.real.acquire()
        except CircuitOpenError as exc:
            assert isinstance(expected, Rejection), f"rejected, the model admits {expected}"
            assert exc.state == expected.state
            assert exc.retry_after == pytest.approx(expected.retry_after)
            return
        assert isinstance(expected, Token), f"admitted, the model rejects {expected}"
        if expected.kind == "closed":
            assert permit >= 0 and permit % 2 == 0, permit
        elif expected.kind == "probe":
            assert permit > 0 and permit % 2 == 1, permit
        else:
            assert permit == -1, permit
        self.calls.append((permit, expected))

    @rule()
    def start_another(self) -> None:
        self.start()

    def take(self, pick: int) -> tuple[int, Token]:
        return self.calls.pop(pick % len(self.calls))

    @precondition(lambda self: self.calls)
    @rule(pick=PICK, duration=DURATIONS)
    def succeed(self, pick: int, duration: float) -> None:
        permit, token = self.take(pick)
        self.model.success(token, duration, self.now())
        self.real.on_success(permit, duration)

    @precondition(lambda self: self.calls)
    @rule(pick=PICK, kind=KINDS, duration=DURATIONS)
    def fail(self, pick: int, kind: str, duration: float) -> None:
        permit, token = self.take(pick)
        self.model.failure(token, kind, duration, self.now())
        self.real.on_failure(permit, make_exception(kind), duration)

    @precondition(lambda self: self.calls)
    @rule(pick=PICK, kind=KINDS, duration=DURATIONS)
    def fail_another(self, pick: int, kind: str, duration: float) -> None:
        self.fail(pick, kind, duration)

    @precondition(lambda self: self.calls)
    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        permit, token = self.take(pick)
        self.model.release(token, self.now())
        self.real.on_release(permit)

    @rule(seconds=ADVANCES)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model.retry_after(self.now()) > 0)
    @rule(early=st.sampled_from([0.0, 0.0, 0.25]))
    def advance_to_deadline(self, early: float) -> None:
        """Exactly to (or just before) the next lazy transition: the boundaries matter."""
        self.clock.advance(max(self.model.retry_after(self.now()) - early, 0.0))

    @rule(raw=breaker_options(), keep_force=st.integers(0, 3))
    def reload(self, raw: dict[str, Any], keep_force: int) -> None:
        if keep_force:  # most reloads change thresholds, not the operator override
            raw = {k: v for k, v in raw.items() if k != "force"}
            if "force" in self.raw:
                raw["force"] = self.raw["force"]
        self.raw = raw
        expected = self.model.reconfigure(raw, self.now())
        assert self.real.reconfigure(to_options(raw)) == expected

    @invariant()
    def agree(self) -> None:
        if not hasattr(self, "model"):
            return
        STEPS["breaker"] += 1
        now = self.now()
        real = self.real.snapshot()
        expected = self.model.snapshot(now)
        assert {k: real[k] for k in expected} == expected
        assert self.real.retry_after() == pytest.approx(self.model.retry_after(now))
        assert self.real.failure_rate == self.model.failure_rate()
        assert real_transitions(self.events) == self.model.transitions


def run(machine: type[RuleBasedStateMachine], examples: int, steps: int) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_breaker_agrees_with_the_model() -> None:
    run(BreakerMachine, examples=300, steps=50)


@pytest.mark.fuzz
def test_breaker_agrees_with_the_model_long() -> None:
    before = STEPS["breaker"]
    run(BreakerMachine, examples=5000, steps=100)
    print(f"\nbreaker model: {STEPS['breaker'] - before} steps checked")


# -- the same through a guard: engine, FakeClock, real awaits --------------------------------


def policy_text(raw: dict[str, Any]) -> str:
    return tomli_w.dumps({"policies": {"api": {"breaker": to_table(raw)}}})


class GuardMachine(RuleBasedStateMachine):
    """Drives `engine.guard("api").call(...)` and the model; durations come from the clock.

    Each call awaits a future the machine resolves later, so calls overlap; cancellation is a
    real `task.cancel()`. The guard's metrics are checked too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.loop = asyncio.new_event_loop()
        self.events: list[Event] = []
        # in flight: (task, future the call awaits, model token, start time, timed at start)
        self.calls: list[
            tuple[asyncio.Task[Any], asyncio.Future[Any], Token, float, tuple[bool, bool]]
        ] = []
        self.metrics = Counter[str]()

    @initialize(raw=breaker_options())
    def setup(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.engine = policyengine.loads(policy_text(raw), clock=self.clock, default=False)
        self.engine.add_listener(self.events.append)
        self.handle = self.engine.guard("api")
        self.model = BreakerModel(raw, self.clock.now())

    def teardown(self) -> None:
        for task, *_ in self.calls:
            task.cancel()
        if self.calls:
            tasks = [task for task, *_ in self.calls]
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        if hasattr(self, "engine"):
            self.engine.close()
        self.loop.close()

    def spin(self) -> None:
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))

    @property
    def breaker(self) -> Breaker:
        breaker = self.handle.current().breaker
        assert breaker is not None
        return breaker

    @rule()
    def start(self) -> None:
        now = self.clock.now()
        expected = self.model.acquire(now)
        future: asyncio.Future[Any] = self.loop.create_future()
        running = False

        async def fn() -> Any:
            nonlocal running
            running = True
            return await future

        timed = self.breaker.timed
        task = self.loop.create_task(self.handle.call(fn))
        self.spin()
        self.metrics["calls"] += 1
        if isinstance(expected, Rejection):
            assert task.done() and not running, "admitted, the model rejects"
            exc = task.exception()
            assert isinstance(exc, CircuitOpenError), exc
            assert exc.state == expected.state
            assert exc.retry_after == pytest.approx(expected.retry_after)
            self.metrics["circuit_open"] += 1
            self.metrics["ignored"] += 1  # a rejection is neither a success nor a failure
            return
        assert running and not task.done(), f"rejected, the model admits: {task}"
        self.metrics["in_flight"] += 1
        # metrics count an error the breaker ignores as ignored (the policy at the call's start)
        ignores = self.model.cfg.ignore_lookup
        self.calls.append((task, future, expected, now, (timed, ignores)))

    def finish(self, pick: int, how: str) -> None:
        task, future, token, started, (timed, ignores) = self.calls.pop(pick % len(self.calls))
        now = self.clock.now()
        # The guard times a call only if the breaker had a slow rule when the call started.
        duration = now - started if timed else 0.0
        self.metrics["in_flight"] -= 1
        if how == "success":
            future.set_result("ok")
            self.model.success(token, duration, now)
            self.metrics["successes"] += 1
        elif how == "cancel":
            task.cancel()
            self.model.release(token, now)
            self.metrics["ignored"] += 1
        else:
            future.set_exception(make_exception(how))
            self.model.failure(token, how, duration, now)
            self.metrics["ignored" if how == "ignored" and ignores else "failures"] += 1
        self.loop.run_until_complete(asyncio.wait([task]))
        if how == "success":
            assert task.result() == "ok"
        elif how == "cancel":
            assert task.cancelled()
        else:
            assert isinstance(task.exception(), type(make_exception(how)))

    @precondition(lambda self: self.calls)
    @rule(pick=PICK, how=st.sampled_from(["success", "failure", "ignored", "other", "timeout"]))
    def complete(self, pick: int, how: str) -> None:
        self.finish(pick, how)

    @precondition(lambda self: self.calls)
    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        self.finish(pick, "cancel")

    @precondition(lambda self: self.calls)
    @rule(pick=PICK, how=st.sampled_from(["failure", "failure", "other", "timeout"]))
    def complete_with_error(self, pick: int, how: str) -> None:
        self.finish(pick, how)

    @rule()
    def start_another(self) -> None:
        self.start()

    @rule(seconds=ADVANCES)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model.retry_after(self.clock.now()) > 0)
    @rule(early=st.sampled_from([0.0, 0.0, 0.25]))
    def advance_to_deadline(self, early: float) -> None:
        self.clock.advance(max(self.model.retry_after(self.clock.now()) - early, 0.0))

    @rule(raw=breaker_options(), keep_force=st.integers(0, 3))
    def reload(self, raw: dict[str, Any], keep_force: int) -> None:
        if keep_force:
            raw = {k: v for k, v in raw.items() if k != "force"}
            if "force" in self.raw:
                raw["force"] = self.raw["force"]
        self.raw = raw
        self.engine.apply(load_text(policy_text(raw)))
        self.model.reconfigure(raw, self.clock.now())

    @invariant()
    def agree(self) -> None:
        if not hasattr(self, "model"):
            return
        STEPS["guard"] += 1
        now = self.clock.now()
        assert self.handle.state == self.model.public_state(now)
        real = self.breaker.snapshot()
        expected = self.model.snapshot(now)
        assert {k: real[k] for k in expected} == expected
        metrics = self.handle.metrics()
        for key in ("calls", "successes", "failures", "ignored", "in_flight"):
            assert metrics[key] == self.metrics[key], key
        assert metrics["rejections"]["circuit_open"] == self.metrics["circuit_open"]
        assert metrics["retries"] == 0
        assert real_transitions(self.events) == self.model.transitions


def test_guard_agrees_with_the_model() -> None:
    run(GuardMachine, examples=100, steps=40)


@pytest.mark.fuzz
def test_guard_agrees_with_the_model_long() -> None:
    before = STEPS["guard"]
    run(GuardMachine, examples=1500, steps=80)
    print(f"\nguard model: {STEPS['guard'] - before} steps checked")


# -- regression and edge tests found by the model ------------------------------------------


class ReadsMachine(RuleBasedStateMachine):
    """Two real breakers on one clock, fed the same operations; `watched` has its state read
    (as a metrics scrape or a dashboard may) just before every operation that consults the
    clock: an admission, a probe's outcome or release, a reload, and at random moments between
    clock moves (`peek`). `quiet` is never read. Every admission (with its `retry_after`), every
    state change event and the final counts (`opened_at` included) must be the same.

    A read between two clock moves matters most for a hung half-open breaker: each lazy
    transition is timed from when it fell due, not from when it is noticed, so a read that
    re-opens it early and a call that finds it much later agree on when it re-opened, and so
    on when its open period ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.calls: list[tuple[int, int]] = []  # (quiet permit, watched permit)
        self.quiet_events: list[Event] = []
        self.watched_events: list[Event] = []

    @initialize(raw=breaker_options())
    def setup(self, raw: dict[str, Any]) -> None:
        options = to_options(raw)
        self.quiet = Breaker("svc", options, self.clock, self.quiet_events.append)
        self.watched = Breaker("svc", options, self.clock, self.watched_events.append)

    def look(self) -> None:
        self.watched.state  # noqa: B018  (the read is the point)

    @rule()
    def start(self) -> None:
        self.look()
        outcomes: list[int | tuple[str, float]] = []
        for b in (self.quiet, self.watched):
            try:
                outcomes.append(b.acquire())
            except CircuitOpenError as exc:
                outcomes.append((exc.state, exc.retry_after))
        assert outcomes[0] == outcomes[1]
        self.caught_up()
        if isinstance(outcomes[0], int):
            self.calls.append((outcomes[0], outcomes[0]))

    def caught_up(self) -> None:
        """Both consulted the clock at this moment: no lag left."""
        assert real_transitions(self.quiet_events) == real_transitions(self.watched_events)

    @rule()
    def start_another(self) -> None:
        self.start()

    @precondition(lambda self: self.calls)
    @rule(pick=PICK, how=st.sampled_from(["success", "success", "failure", "ignored", "cancel"]))
    def finish(self, pick: int, how: str) -> None:
        permit, _ = self.calls.pop(pick % len(self.calls))
        if permit > 0 and permit & 1:  # a probe's outcome is judged at the time it arrives
            self.look()
        for b in (self.quiet, self.watched):
            if how == "success":
                b.on_success(permit, 0.0)
            elif how == "cancel":
                b.on_release(permit)
            else:
                b.on_failure(permit, make_exception(how), 0.0)

    @rule(seconds=ADVANCES)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(how=st.sampled_from(["state", "retry_after"]))
    def peek(self, how: str) -> None:
        """A read of `watched` only, at any moment (a scrape between two clock moves)."""
        if how == "state":
            self.look()
        else:
            self.watched.retry_after()

    @rule(early=st.sampled_from([0.0, -0.25, 0.25]))
    def advance_to_deadline(self, early: float) -> None:
        """To the next lazy deadline of `quiet`, read from its fields (a read would refresh)."""
        b = self.quiet
        now = self.clock.now()
        due = None
        if b._state == 1:  # open
            due = b._open_until
        elif b._state == 2 and b._max_wait is not None and b._probes:  # half_open
            due = max(min(b._probes.values()) + b._max_wait, b._options_since)
        if due is not None:
            self.clock.advance(max(due - now - early, 0.0))

    @rule(raw=breaker_options())
    def reload(self, raw: dict[str, Any]) -> None:
        self.look()
        options = to_options(raw)
        assert self.quiet.reconfigure(options) == self.watched.reconfigure(options)
        self.caught_up()

    @invariant()
    def same_transitions(self) -> None:
        """`watched` may be ahead by the lazy transitions a `peek` applied and `quiet` has not
        noticed yet; both agree again when `quiet` next consults the clock."""
        STEPS["reads"] += 1
        quiet, watched = (real_transitions(e) for e in (self.quiet_events, self.watched_events))
        assert quiet == watched[: len(quiet)]
        if self.quiet._state not in (1, 2):  # quiet is neither open nor half_open: no lag
            assert quiet == watched

    def teardown(self) -> None:
        if hasattr(self, "quiet"):
            assert self.quiet.snapshot() == self.watched.snapshot()  # (both read their state)
            assert real_transitions(self.quiet_events) == real_transitions(self.watched_events)


def test_reading_the_state_changes_nothing() -> None:
    """Regression: a probe that hung past `half_open_max_wait` and then succeeded closed the
    breaker if nobody had read the state meanwhile, and was stale (re-opened) if anybody had,
    e.g. a metrics scrape; a reload right after `open_duration` skipped the half_open event
    unless someone had looked. Probe outcomes and releases, and reloads, now apply the due
    transition first, exactly as a read just before them would. And a hung probe's re-open was
    stamped when someone noticed it: a scrape soon after it fell due re-opened the breaker (and
    ended its open period) earlier than the next call would; it is now timed from when it fell
    due, so a read at any moment changes nothing (`peek`).
    """
    run(ReadsMachine, examples=200, steps=40)


@pytest.mark.fuzz
def test_reading_the_state_changes_nothing_long() -> None:
    before = STEPS["reads"]
    run(ReadsMachine, examples=5000, steps=80)
    print(f"\nobservation independence: {STEPS['reads'] - before} steps checked")


def test_a_late_probe_is_judged_the_same_whether_or_not_anyone_looked() -> None:
    """Regression (found by the model): a scrape of `.state` decided a late probe's outcome."""
    results = []
    for scraped in (False, True):
        clock = FakeClock()
        raw = {"consecutive_failures": 1, "open_duration": 10, "half_open_max_wait": 5}
        b = Breaker("svc", to_options(raw), clock, lambda e: None)
        b.on_failure(b.acquire(), ConnectionError(), 0.0)
        clock.advance(10)
        probe = b.acquire()
        clock.advance(6)  # the probe hangs past half_open_max_wait ...
        if scraped:
            assert b.state == "open"  # ... which re-opens the breaker when anyone looks
        b.on_success(probe, 6.0)  # ... so its late success is stale
        results.append((b.state, b.snapshot()["reopens"]))
    assert results == [("open", 1), ("open", 1)]


def test_model_open_backoff_matches_the_contract_formula() -> None:
    raw = {
        "consecutive_failures": 1,
        "open_duration": 10,
        "open_backoff": {"multiplier": 2.0, "max": 35},
    }
    model = BreakerModel(raw, 0.0)
    waits = []
    now = 0.0
    token = model.acquire(now)
    assert isinstance(token, Token)
    model.failure(token, "failure", 0.0, now)
    for _ in range(4):
        waits.append(model.retry_after(now))
        now += waits[-1]
        probe = model.acquire(now)
        assert isinstance(probe, Token) and probe.kind == "probe"
        model.failure(probe, "failure", 0.0, now)
    assert waits == [10, 20, 35, 35]
    assert not math.isinf(model.retry_after(now))
