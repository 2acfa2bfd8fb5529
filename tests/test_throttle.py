"""Client-side adaptive throttling: the formula, what counts, and behaviour against a dependency
that accepts a share of the calls (simulated on a hand-moved clock, seeded randomness)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from policyengine import ThrottledError
from policyengine._config.admission_models import ThrottleOptions
from policyengine._patterns.throttle import Throttle, accepted
from policyengine._runtime.layer import Outcome
from policyengine._telemetry.events import Event

T0 = 1000.0


def throttle(seed: int = 7, **kw: Any) -> Throttle:
    return Throttle("svc", ThrottleOptions(**kw), rng=random.Random(seed).random)


class Status(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.response = SimpleNamespace(status_code=code)


def run(
    thr: Throttle, accept_share: float, now: float, calls: int, step: float, seed: int = 3
) -> tuple[float, list[float]]:
    """`calls` attempts `step` apart against a dependency that accepts `accept_share` of those
    it receives; returns the clock and, per attempt, 1.0 if throttled else 0.0."""
    dependency = random.Random(seed)
    shed = []
    for _ in range(calls):
        now += step
        try:
            thr.admit(now)
        except ThrottledError:
            shed.append(1.0)
            continue
        shed.append(0.0)
        if dependency.random() < accept_share:
            thr.settle("success", None, 0.01, now)
        else:
            thr.settle("failure", Status(503), 0.01, now)
    return now, shed


def test_the_probability_is_the_formula_capped_at_max_reject() -> None:
    thr = throttle(k=1.5, max_reject=0.6)
    for i in range(100):
        thr.settle("success" if i < 40 else "failure", None if i < 40 else Status(500), 0, T0)
    assert thr.counts(T0) == (100, 40)
    assert thr.probability(T0) == pytest.approx((100 - 1.5 * 40) / 101)
    for _ in range(100):
        thr.settle("failure", Status(503), 0, T0)
    assert thr.probability(T0) == 0.6


def test_against_half_accepted_calls_it_rejects_about_the_formulas_share() -> None:
    # k = 1.5 and half accepted: p = (R - 0.75 R) / (R + 1), about 0.25 of attempts
    thr = throttle(k=1.5, window="1m")
    now, _ = run(thr, 0.5, T0, 6000, 0.01)  # one window to fill the counts
    probabilities = []
    shed: list[float] = []
    for _ in range(20):
        probabilities.append(thr.probability(now))
        now, more = run(thr, 0.5, now, 500, 0.01, seed=int(now))
        shed += more
    expected = sum(probabilities) / len(probabilities)
    assert expected == pytest.approx(0.25, abs=0.02)
    assert sum(shed) / len(shed) == pytest.approx(expected, abs=0.03)


def test_with_k_2_half_accepted_calls_are_not_throttled() -> None:
    thr = throttle(k=2.0, window="1m")
    _, shed = run(thr, 0.5, T0, 12000, 0.01)
    assert sum(shed[6000:]) / 6000 < 0.02


def test_it_recovers_within_a_window_once_the_dependency_accepts_again() -> None:
    thr = throttle(k=2.0, window="1m", max_reject=0.9)
    now, shed = run(thr, 0.0, T0, 6000, 0.01)  # the dependency refuses everything
    assert sum(shed[3000:]) / 3000 == pytest.approx(0.9, abs=0.03)
    now, shed = run(thr, 1.0, now, 6000, 0.01)  # healthy again: one minute later, no shedding
    assert sum(shed[-1000:]) == 0
    assert thr.probability(now) == 0.0


def test_what_counts_as_a_request_and_as_an_accept() -> None:
    cases: list[tuple[Outcome, BaseException | None, bool]] = [
        ("success", None, True),
        ("failure", Status(404), True),  # an answer on purpose
        ("failure", Status(429), False),
        ("failure", Status(503), False),
        ("failure", ConnectionError("refused"), False),
        ("ignored", ValueError("business"), True),
        ("ignored", Status(502), False),
        ("timeout", None, False),
    ]
    for outcome, error, ok in cases:
        assert accepted(outcome, error) is ok, (outcome, error)
    thr = throttle()
    for outcome, error, _ in cases:
        thr.settle(outcome, error, 0, T0)
    thr.settle("rejected", None, 0, T0)  # refused by a later layer: not a request
    thr.settle("cancelled", None, 0, T0)
    assert thr.counts(T0) == (len(cases), 3)


def test_the_counts_slide_with_the_window() -> None:
    thr = throttle(window="20s")  # 1 s slots
    thr.settle("failure", Status(503), 0, T0)
    thr.settle("failure", Status(503), 0, T0 + 10)
    assert thr.counts(T0 + 19.5) == (2, 0)
    assert thr.counts(T0 + 20.5) == (1, 0)  # the first slot left whole
    assert thr.counts(T0 + 100) == (0, 0)


def test_a_reload_keeps_the_counts_unless_the_window_changes() -> None:
    thr = throttle(k=2.0, window="1m")
    for _ in range(10):
        thr.settle("failure", Status(503), 0, T0)
    thr.reconfigure(ThrottleOptions(k=1.1, window="1m", max_reject=0.5), T0)
    assert thr.probability(T0) == 0.5
    thr.reconfigure(ThrottleOptions(k=1.1, window="2m"), T0)
    assert thr.counts(T0) == (0, 0)


def test_events_say_when_throttling_starts_and_stops() -> None:
    events: list[Event] = []
    thr = Throttle("svc", ThrottleOptions(), rng=lambda: 0.99, emit=events.append)
    thr.settle("failure", Status(503), 0, T0)
    thr.admit(T0)
    thr.settle("success", None, 0, T0)
    thr.settle("success", None, 0, T0)
    thr.admit(T0)
    assert [e.name for e in events] == ["throttling", "throttling_stopped"]
    assert events[0].data["probability"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_the_window_counts_match_a_brute_force_model(seed: int) -> None:
    # the model: an attempt settled at t counts at `now` while its slot is one of the last 20
    rng = random.Random(seed)
    thr = throttle(window="20s")  # 1 s slots
    events: list[tuple[int, bool]] = []
    now = T0
    for _ in range(3000):
        now += rng.choice([0.0, 0.01, 0.3, 1.0, 2.5, 7.0, 25.0]) * rng.random()
        ok = rng.random() < 0.4
        thr.settle("success" if ok else "failure", None if ok else Status(503), 0, now)
        events.append((int(now // 1.0), ok))
        current = int(now // 1.0)
        live = [o for slot, o in events if current - 20 < slot <= current]
        assert thr.counts(now) == (len(live), sum(live))
