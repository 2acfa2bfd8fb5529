"""The per-process rate limiter: rates over every window, burst, max_wait, 429 pause, reload.

Time is a float the tests move by hand (the engine clock's `now()`); a window is half-open,
``[s, s + period)``, and windows are checked at every admission time (where the worst ones
start), with a 1 ns allowance for float rounding of the summed intervals.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

import policyengine
from policyengine import PolicyValidationError, RateLimitedError, RejectedError
from policyengine._config.admission_models import RateLimitOptions, parse_rate
from policyengine._patterns.ratelimit import MAX_PAUSE, RateLimiter

EPS = 1e-9
T0 = 1000.0


def limiter(**kw: Any) -> RateLimiter:
    return RateLimiter("svc", RateLimitOptions(**kw))


def most_in_window(times: Sequence[float], period: float) -> int:
    """The largest number of `times` in any half-open window [s, s + period)."""
    ts = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(ts):
        j = max(j, i)
        while j < len(ts) and ts[j] < start + period - EPS:
            j += 1
        best = max(best, j - i)
    return best


def drive(lim: RateLimiter, arrivals: Sequence[float]) -> list[float]:
    """Offer an attempt at each arrival time; the start times of the admitted ones."""
    starts = []
    for now in arrivals:
        try:
            wait = lim.admit(now)
        except RateLimitedError as exc:
            assert exc.retry_after > 0
            continue
        starts.append(now + wait)
    return starts


def bursty_arrivals(seed: int, span: float, mean_gap: float) -> list[float]:
    """Clumps and lulls: exponential gaps, with one arrival in five starting a clump of 1-30."""
    rng = random.Random(seed)
    out, now = [], T0
    while now < T0 + span:
        now += rng.expovariate(1 / mean_gap)
        out += [now] * (rng.randint(1, 30) if rng.random() < 0.2 else 1)
    return out


# -- the format ----------------------------------------------------------------------------------


def test_rates_parse_per_second_minute_and_hour() -> None:
    assert (parse_rate("50/s").count, parse_rate("50/s").period) == (50, 1.0)
    assert parse_rate("3000/min").period == 60.0
    assert parse_rate(" 100 / h ").period == 3600.0
    assert parse_rate("50/s").interval == pytest.approx(0.02)


@pytest.mark.parametrize("bad", ["50", "50/d", "0/s", "1.5/s", "-3/s", "fifty/s"])
def test_a_bad_rate_names_file_key_line_and_the_fix(bad: str) -> None:
    text = f'[policies.svc.rate_limit]\nrates = ["10/s", "{bad}"]\n'
    with pytest.raises(PolicyValidationError) as info:
        policyengine.loads(text, default=False)
    (issue,) = info.value.errors
    assert issue.path.startswith("policies.svc.rate_limit.rates")
    assert issue.line == 2
    assert "50/s" in issue.message or "at least 1" in issue.message


def test_unknown_keys_and_bad_values_are_all_reported_at_once() -> None:
    with pytest.raises(PolicyValidationError) as info:
        policyengine.loads(
            '[policies.svc.rate_limit]\nrates = ["1/s"]\nburts = 3\n'
            "[policies.svc.throttle]\nk = 0.5\n"
            '[policies.other.throttle]\nwindow = "0s"\n',
            default=False,
        )
    paths = sorted(e.path for e in info.value.errors)
    assert paths == [
        "policies.other.throttle.window",
        "policies.svc.rate_limit.burts",
        "policies.svc.throttle.k",
    ]


def test_a_huge_windowed_rate_is_refused_with_a_shorter_period_suggested() -> None:
    with pytest.raises(ValueError, match=r"\"1000/s\""):
        RateLimitOptions(rates=["10/s", "3600000/h"])
    RateLimitOptions(rates=["3600000/h"])  # the first rate without burst keeps no log


def test_errors_are_rejections_with_reasons() -> None:
    exc = RateLimitedError("svc", 0.25)
    assert isinstance(exc, RejectedError)
    assert (exc.guard, exc.retry_after, exc.reason) == ("svc", 0.25, "rate_limited")
    assert "0.250s" in str(exc)
    assert policyengine.ThrottledError("svc", 0.5).reason == "throttled"


# -- every rate holds over every window ----------------------------------------------------------

CASES = [
    {"rates": ["50/s"]},
    {"rates": ["50/s"], "burst": 10},
    {"rates": ["50/s", "3000/min"], "burst": 10},
    {"rates": ["10/s", "100/min"], "burst": 9},
    {"rates": ["20/s", "200/min", "1000/h"], "burst": 5, "max_wait": "300ms"},
    {"rates": ["7/s", "30/min"], "max_wait": "2s"},
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("seed", [1, 2])
def test_each_rate_holds_exactly_over_every_window(case: dict[str, Any], seed: int) -> None:
    lim = limiter(**case)
    opts = lim.options
    span = 3 * max(r.period for r in opts.rates)
    first = opts.rates[0]
    starts = drive(lim, bursty_arrivals(seed, span, max(first.interval / 4, span / 20_000)))
    for rate in opts.rates:
        assert most_in_window(starts, rate.period) <= rate.count, rate


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_saturating_demand_gets_every_rate_it_is_allowed(case: dict[str, Any]) -> None:
    lim = limiter(**case)
    opts = lim.options
    span = 3 * max(r.period for r in opts.rates)
    step = max(opts.rates[0].interval / 4, span / 50_000)
    starts = drive(lim, [T0 + i * step for i in range(round(span / step))])
    # the tightest rate is reached in some window, and over the whole run
    tightest = min(opts.rates, key=lambda r: r.count / r.period)
    assert most_in_window(starts, tightest.period) == tightest.count
    periods = span / tightest.period
    assert len(starts) >= tightest.count * periods


def test_without_burst_the_flow_is_steady() -> None:
    lim = limiter(rates=["50/s"])
    starts = drive(lim, [T0 + i * 0.001 for i in range(2000)])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.02 - EPS
    assert len(starts) == 100  # 2 s at 50/s


def test_threads_never_exceed_the_rate() -> None:
    lim = limiter(rates=["2000/s"], burst=20)
    out: list[list[float]] = [[] for _ in range(4)]
    stop = time.monotonic() + 0.3

    def run(mine: list[float]) -> None:
        while (now := time.monotonic()) < stop:
            try:
                mine.append(now + lim.admit(now))
            except RateLimitedError:
                pass

    threads = [threading.Thread(target=run, args=(o,)) for o in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts = [s for o in out for s in o]
    assert most_in_window(starts, 1.0) <= 2000
    assert most_in_window(starts, 0.01) <= 20 + 20 + 1  # burst, then the steady flow


# -- burst ---------------------------------------------------------------------------------------


def test_burst_saves_b_tokens_above_the_steady_flow() -> None:
    lim = limiter(rates=["10/s"], burst=4)
    now = T0
    assert [lim.admit(now) for _ in range(5)] == [0.0] * 5  # B + 1 at once when rested
    with pytest.raises(RateLimitedError) as info:
        lim.admit(now)
    assert info.value.retry_after == pytest.approx(0.1)  # then one per interval
    now += 0.1
    lim.admit(now)
    with pytest.raises(RateLimitedError):
        lim.admit(now)
    now += 0.25  # 2.5 intervals idle: two tokens saved (and a half)
    lim.admit(now)
    lim.admit(now)
    with pytest.raises(RateLimitedError) as info:
        lim.admit(now)
    assert info.value.retry_after == pytest.approx(0.05)


def test_a_burst_never_breaks_the_first_rate_over_its_window() -> None:
    lim = limiter(rates=["10/s"], burst=9)  # a burst of the whole rate: a plain quota
    starts = drive(lim, [T0 + i * 0.01 for i in range(1000)])
    assert most_in_window(starts, 1.0) == 10
    assert len(starts) == 100  # 10 s


# -- max_wait and the deadline -------------------------------------------------------------------


def test_max_wait_reserves_in_order_then_refuses_without_taking() -> None:
    lim = limiter(rates=["10/s"], max_wait="250ms")
    assert lim.admit(T0) == 0.0
    assert lim.admit(T0) == pytest.approx(0.1)
    assert lim.admit(T0) == pytest.approx(0.2)
    with pytest.raises(RateLimitedError) as info:
        lim.admit(T0)
    assert info.value.retry_after == pytest.approx(0.3)
    with pytest.raises(RateLimitedError):  # the refusal took nothing
        lim.admit(T0 + 0.01)
    assert lim.admit(T0 + 0.06) == pytest.approx(0.24)  # FIFO behind the reservations


def test_the_deadline_refuses_a_wait_that_cannot_end_in_time() -> None:
    lim = limiter(rates=["10/s"], max_wait="1s")
    lim.admit(T0)
    with pytest.raises(RateLimitedError):
        lim.admit(T0, limit=0.1)  # the wait (0.1 s) is not shorter than the time left
    assert lim.admit(T0, limit=0.15) == pytest.approx(0.1)
    assert lim.max_wait == 1.0
    assert lim.admit(T0 + 10, limit=0.0) == 0.0  # no wait needed: the deadline is not asked


# -- 429 / 503 pause -----------------------------------------------------------------------------


class Status(Exception):
    def __init__(self, code: int, retry_after: object = None, headers: Any = None) -> None:
        super().__init__(code)
        self.status_code = code
        if retry_after is not None:
            self.retry_after = retry_after
        if headers is not None:
            self.response = SimpleNamespace(status_code=code, headers=headers)


def test_a_429_with_retry_after_pauses_until_the_hint_then_flows_steadily() -> None:
    lim = limiter(rates=["10/s"], burst=5)
    lim.admit(T0)
    lim.settle("failure", Status(429, retry_after=2), 0.01, T0 + 0.01)
    with pytest.raises(RateLimitedError) as info:
        lim.admit(T0 + 1)
    assert info.value.retry_after == pytest.approx(1.01)
    now = T0 + 2.01
    assert lim.admit(now) == 0.0
    with pytest.raises(RateLimitedError):  # no burst saved up across the pause
        lim.admit(now)
    assert lim.retry_after(now) == pytest.approx(0.1)


def test_a_503_header_pauses_and_a_wait_within_max_wait_queues_for_the_end() -> None:
    lim = limiter(rates=["10/s"], max_wait="5s")
    lim.settle("failure", Status(503, headers={"retry-after": "3"}), 0.0, T0)
    assert lim.admit(T0 + 1) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("error", "options"),
    [
        (Status(429, retry_after=2), {"pause_on_429": False}),
        (Status(500, retry_after=2), {}),
        (Status(429), {}),  # no hint
        (ConnectionError("down"), {}),
    ],
)
def test_no_pause_without_a_429_or_503_and_a_hint(error: Exception, options: Any) -> None:
    lim = limiter(rates=["10/s"], **options)
    lim.settle("failure", error, 0.0, T0)
    assert lim.admit(T0) == 0.0


def test_a_pause_is_capped() -> None:
    lim = limiter(rates=["10/s"])
    lim.settle("failure", Status(429, retry_after=86400), 0.0, T0)
    assert lim.retry_after(T0) == pytest.approx(MAX_PAUSE)


# -- reload --------------------------------------------------------------------------------------


def test_a_reload_rescales_a_drained_bucket_instead_of_refilling_it() -> None:
    lim = limiter(rates=["10/s"], burst=9)
    drive(lim, [T0] * 10)  # the whole burst spent
    lim.reconfigure(RateLimitOptions(rates=["100/s"], burst=99), T0)
    with pytest.raises(RateLimitedError) as info:
        lim.admit(T0)  # still empty: a refill would admit 100 here
    assert info.value.retry_after == pytest.approx(0.01)
    assert len(drive(lim, [T0 + 0.01] * 200)) == 1


def test_a_reload_keeps_the_share_of_the_burst_used() -> None:
    lim = limiter(rates=["10/s"], burst=9)
    drive(lim, [T0] * 5)  # half the capacity of 10 used
    lim.reconfigure(RateLimitOptions(rates=["100/s"], burst=99), T0)
    assert len(drive(lim, [T0] * 200)) == 50  # half of the new 100


def test_a_reload_keeps_each_rates_window_so_the_rate_holds_across_it() -> None:
    lim = limiter(rates=["100/s", "20/min"])
    drive(lim, [T0 + i for i in range(15)])
    lim.reconfigure(RateLimitOptions(rates=["200/s", "25/min"]), T0 + 15)
    starts = drive(lim, [T0 + 15 + i * 0.1 for i in range(100)])
    assert len(starts) == 10  # 25 in any minute, 15 of them already used


def test_reservations_survive_a_reload() -> None:
    lim = limiter(rates=["10/s"], max_wait="1s")
    lim.admit(T0)
    lim.admit(T0)  # reserved for T0 + 0.1
    lim.reconfigure(RateLimitOptions(rates=["10/s"], max_wait="1s"), T0)
    assert lim.admit(T0) == pytest.approx(0.2)


# -- keys ----------------------------------------------------------------------------------------


def test_each_key_has_a_budget_of_its_own_and_idle_keys_are_forgotten() -> None:
    lim = limiter(rates=["1/s"])
    assert lim.admit(T0, key="a") == 0.0
    assert lim.admit(T0, key="b") == 0.0
    with pytest.raises(RateLimitedError):
        lim.admit(T0, key="a")
    assert lim.admit(T0) == 0.0  # the unkeyed budget is another one
    for i in range(3000):
        lim.admit(T0 + 10 + i, key=f"k{i}")
    assert lim.keys() < 2100  # keys idle for a whole period were dropped
    with pytest.raises(RateLimitedError):
        lim.admit(T0 + 10 + 2999, key="k2999")  # a busy key is kept


# -- fork ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_is_not_stuck_on_a_lock_held_at_the_fork() -> None:
    from policyengine._config.admission_models import ThrottleOptions
    from policyengine._patterns.throttle import Throttle
    from tests.helpers.forking import run_in_child

    lim = limiter(rates=["10/s"])
    thr = Throttle("svc", ThrottleOptions())

    def child() -> dict[str, Any]:
        thr.settle("success", None, 0.0, T0)
        return {"wait": lim.admit(T0), "throttle": thr.admit(T0)}

    with lim._lock, thr._lock:  # as if another thread was inside at the fork
        report = run_in_child(child, timeout=10)
    assert report == {"wait": 0.0, "throttle": 0.0}
