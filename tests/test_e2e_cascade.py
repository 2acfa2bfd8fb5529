"""The promise, end to end: with one downstream hanging, the endpoint of the healthy one keeps
its throughput, and the hanging one fails fast once its breaker opens.

A real Starlette service served by uvicorn, two real downstreams on loopback, one shared httpx
connection pool, bounded request loops (`cascade.py`; `bench/bench_cascade.py` runs the same
scenario without a guard and with tenacity + circuitbreaker). About 6 s.
"""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install '.[dev]'")
pytest.importorskip("starlette", reason="starlette is not installed: pip install '.[dev]'")

from tests.helpers import cascade

ATTEMPT_TIMEOUT = 0.5  # seconds: timeout.attempt of cascade.POLICIES


def test_the_healthy_endpoint_keeps_its_throughput_and_the_hung_one_fails_fast() -> None:
    result = cascade.measure("policyengine", seconds=1.5)
    healthy, degraded, opened = result.healthy, result.degraded, result.open
    assert healthy["a"].statuses.get(200, 0) > 20, healthy["a"].statuses  # a real baseline
    assert ok_share(healthy["b"]) >= 0.9, healthy["b"].statuses

    # A keeps at least 80% of its healthy throughput while B hangs, and (nearly) never fails:
    # on a loaded machine an attempt timeout can fire on a healthy call (loop lag counts).
    assert result.kept >= 0.8, (
        f"A: {healthy['a'].ok_per_s:.0f}/s healthy, {degraded['a'].ok_per_s:.0f}/s with B hanging"
    )
    assert ok_share(degraded["a"]) >= 0.95, degraded["a"].statuses
    assert ok_share(opened["a"]) >= 0.95, opened["a"].statuses

    # B's breaker opened; from then on every call of B is a fast 503 with Retry-After.
    assert result.status is not None
    assert result.status["guards"]["b"]["state"] == "open"
    assert result.status["guards"]["a"]["state"] == "closed"
    assert any(e["name"] == "state_change" and e["guard"] == "b" for e in result.status["events"])
    b = opened["b"]
    assert set(b.statuses) == {503} and b.retry_after == b.statuses[503], b.statuses
    # Fast: each was refused at the door (no attempt, so no timeout waited for); in time, well
    # under the attempt timeout a hung call would wait (the rest is this machine's queueing).
    before, after = result.status["before_open_phase"]["guards"]["b"], result.status["guards"]["b"]
    refused = after["rejections"]["circuit_open"] - before["rejections"]["circuit_open"]
    assert refused >= b.statuses[503] and after["timeouts"] == before["timeouts"], (before, after)
    assert after["calls"] - before["calls"] == refused  # every call of B in the phase, refused
    assert b.p50 < ATTEMPT_TIMEOUT / 2, (b.p50, opened["a"].p50)
    # While the breaker was still closed, the hung calls ended at their timeouts (504), and
    # the bulkhead turned the surplus away at once (503): nothing waited for httpx's 5 s.
    assert set(degraded["b"].statuses) <= {503, 504}, degraded["b"].statuses
    assert max(degraded["b"].latencies) < 3.0  # timeout.total (2 s) plus scheduling


def ok_share(phase: cascade.Phase) -> float:
    return phase.statuses.get(200, 0) / max(1, sum(phase.statuses.values()))
