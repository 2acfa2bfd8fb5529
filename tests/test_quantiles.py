"""The streaming percentile estimator: accuracy, warm-up, decay, bounds, threads."""

from __future__ import annotations

import random
import threading

import pytest

from policyengine._patterns.quantiles import GAMMA, HALF_LIFE, LatencyQuantiles, min_samples


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_within_the_documented_relative_error(q: float) -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(-4.0, 1.2) for _ in range(HALF_LIFE - 1)]  # before any decay
    est = LatencyQuantiles()
    for v in values:
        est.add(v)
    got = est.quantile(q)
    assert got is not None
    # the bucket holding the true rank: its middle is within sqrt(GAMMA) of every member
    assert exact(values, q) / GAMMA**0.5 <= got <= exact(values, q) * GAMMA**0.5


def test_no_answer_before_the_warm_up() -> None:
    assert [min_samples(q) for q in (0.5, 0.95, 0.98, 0.99, 0.999)] == [100, 100, 100, 200, 2000]
    est = LatencyQuantiles()
    for _ in range(199):
        est.add(0.01)
    assert est.quantile(0.95) is not None and est.quantile(0.99) is None
    est.add(0.01)
    assert est.quantile(0.99) == pytest.approx(0.01, rel=0.021)


def test_follows_a_shift_in_latency() -> None:
    est = LatencyQuantiles()
    for _ in range(10 * HALF_LIFE):
        est.add(0.010)
    for _ in range(3 * HALF_LIFE):  # the dependency became five times slower
        est.add(0.050)
    assert est.quantile(0.5) == pytest.approx(0.050, rel=0.021)


def test_values_out_of_range_are_clamped() -> None:
    est = LatencyQuantiles()
    for _ in range(100):
        est.add(0.0)
        est.add(1e9)
    low, high = est.quantile(0.25), est.quantile(0.75)
    assert low is not None and high is not None and low <= 1.1e-5 and 95 <= high <= 105


def test_threads_lose_no_sample() -> None:
    est = LatencyQuantiles()

    def work() -> None:
        for _ in range(1000):
            est.add(0.02)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert est.seen == 4000
