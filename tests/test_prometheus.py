"""PolicyEngineCollector against a real prometheus_client registry, after a scripted sequence."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import policyengine
from policyengine import BulkheadFullError, Engine
from policyengine._telemetry.metrics import DURATION_BUCKETS
from policyengine.prometheus import PolicyEngineCollector
from policyengine.testing import FakeClock
from tests.helpers.scripted import API, ok, script

MakeEngine = Callable[[str], Engine]

POLICIES = (
    API
    + """
[policies.pool.bulkhead]
max_concurrent = 1
max_queue = 0

[policies.idle]
mode = "disabled"

[policies.forced.breaker]
force = "open"
"""
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def test_counters_after_a_scripted_sequence(
    make_engine: MakeEngine, clock: FakeClock, registry: CollectorRegistry
) -> None:
    engine = make_engine(POLICIES)
    registry.register(PolicyEngineCollector(engine))
    await script(engine)

    def v(name: str, **labels: str) -> float | None:
        return value(registry, name, guard="api", **labels)

    assert v("policyengine_calls_started_total") == 6
    assert v("policyengine_calls_total", outcome="success") == 2
    assert v("policyengine_calls_total", outcome="failure") == 3
    assert v("policyengine_calls_total", outcome="ignored") == 1
    assert v("policyengine_rejections_total", reason="circuit_open") == 1
    assert v("policyengine_rejections_total", reason="bulkhead_full") == 0
    assert v("policyengine_rejections_total", reason="budget_exhausted") == 0
    assert v("policyengine_retries_total") == 2
    assert v("policyengine_timeouts_total") == 0
    assert v("policyengine_fallbacks_total") == 1
    assert v("policyengine_observed_total", event="would_reject") == 0
    assert v("policyengine_in_flight") == 0
    assert v("policyengine_queued") == 0
    assert v("policyengine_breaker_state") == 1
    # The five calls that ran are timed; the one an open circuit turned away at once is not.
    assert v("policyengine_call_duration_seconds_count") == 5
    assert v("policyengine_call_duration_seconds_bucket", le="+Inf") == 5
    assert v("policyengine_call_duration_seconds_bucket", le="10.0") == 5  # well under 10 s
    total = v("policyengine_call_duration_seconds_sum")
    assert total is not None and 0 <= total < 1
    assert clock.sleeps == [0.1, 0.1]

    clock.advance(30)  # open_duration elapsed: half-open, read without a call
    assert v("policyengine_breaker_state") == 2
    assert await engine.guard("api").call(ok) == "ok"  # the probe closes it
    assert v("policyengine_breaker_state") == 0
    assert v("policyengine_calls_total", outcome="success") == 3


async def test_gauges_and_bulkhead_rejections(
    make_engine: MakeEngine, registry: CollectorRegistry
) -> None:
    engine = make_engine(POLICIES)
    registry.register(PolicyEngineCollector(engine))
    pool = engine.guard("pool")
    release = asyncio.Event()

    async def hold() -> str:
        await release.wait()
        return "held"

    holder = asyncio.create_task(pool.call(hold))
    await asyncio.sleep(0)
    assert value(registry, "policyengine_in_flight", guard="pool") == 1
    with pytest.raises(BulkheadFullError):
        await pool.call(ok)
    release.set()
    assert await holder == "held"

    def v(name: str, **labels: str) -> float | None:
        return value(registry, name, guard="pool", **labels)

    assert v("policyengine_in_flight") == 0
    assert v("policyengine_calls_started_total") == 2
    assert v("policyengine_calls_total", outcome="success") == 1
    assert v("policyengine_calls_total", outcome="ignored") == 1
    assert v("policyengine_rejections_total", reason="bulkhead_full") == 1
    assert v("policyengine_breaker_state") == 0  # no breaker: closed


def test_every_guard_is_present_from_the_start(
    make_engine: MakeEngine, registry: CollectorRegistry
) -> None:
    engine = make_engine(POLICIES)
    registry.register(PolicyEngineCollector(engine))
    states = {
        g: value(registry, "policyengine_breaker_state", guard=g)
        for g in ("api", "pool", "idle", "forced")
    }
    assert states == {"api": 0, "pool": 0, "idle": 4, "forced": 3}
    for g in ("api", "pool", "idle", "forced"):
        assert value(registry, "policyengine_calls_started_total", guard=g) == 0
        assert value(registry, "policyengine_call_duration_seconds_count", guard=g) == 0
    version = engine.status()["version"]
    assert value(registry, "policyengine_policy_version_info", version=version) == 1
    assert value(registry, "policyengine_reloads_total", result="success") == 0
    assert value(registry, "policyengine_reloads_total", result="failure") == 0
    text = generate_latest(registry).decode()
    assert 'policyengine_breaker_state{guard="forced"} 3.0' in text
    assert "# TYPE policyengine_call_duration_seconds histogram" in text


async def test_reload_counters_and_version(
    tmp_path: Path, clock: FakeClock, registry: CollectorRegistry
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES)
    engine = policyengine.load(path, clock=clock, default=False)
    try:
        registry.register(PolicyEngineCollector(engine))
        await engine.guard("api").call(ok)
        first = engine.status()["version"]
        path.write_text(POLICIES + "\n[policies.api.breaker]\nbogus = 1\n")
        assert engine.reload() is False
        path.write_text(POLICIES + "\n[policies.extra.retry]\nmax_attempts = 1\n")
        assert engine.reload() is True
        second = engine.status()["version"]
        assert second != first
        assert value(registry, "policyengine_reloads_total", result="success") == 1
        assert value(registry, "policyengine_reloads_total", result="failure") == 1
        assert value(registry, "policyengine_policy_version_info", version=second) == 1
        assert value(registry, "policyengine_policy_version_info", version=first) is None
        # The unchanged policy kept its counters; the new one is there from the start.
        assert value(registry, "policyengine_calls_started_total", guard="api") == 1
        assert value(registry, "policyengine_breaker_state", guard="extra") == 0
    finally:
        engine.close()


def test_registration_detects_clashes_and_prefix_separates_engines(
    make_engine: MakeEngine, registry: CollectorRegistry
) -> None:
    a, b = make_engine(POLICIES), make_engine(POLICIES)
    registry.register(PolicyEngineCollector(a))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PolicyEngineCollector(b))
    registry.register(PolicyEngineCollector(b, prefix="other"))
    assert value(registry, "other_breaker_state", guard="forced") == 3


async def test_the_default_engine_is_read_at_each_scrape(
    clock: FakeClock, registry: CollectorRegistry
) -> None:
    engine = policyengine.loads(POLICIES, clock=clock)  # becomes the default engine
    try:
        registry.register(PolicyEngineCollector())
        await policyengine.guard("api").call(ok)
        assert value(registry, "policyengine_calls_started_total", guard="api") == 1
    finally:
        engine.close()


def test_the_histogram_has_one_inf_bucket_and_cumulative_counts(
    make_engine: MakeEngine, registry: CollectorRegistry
) -> None:
    """Regression: the last snapshot bucket (+Inf) was exported a second time as ``le="inf"``,
    which Prometheus merges with ``le="+Inf"``: the count doubled and p99 read 10 s."""
    engine = make_engine(POLICIES)
    registry.register(PolicyEngineCollector(engine))
    metrics = engine.guards["api"].metrics
    durations = [0.02] * 97 + [0.3, 4.0, 12.0]  # one call past the last bound (10 s)
    for d in durations:
        metrics.start()
        metrics.finish(1, d)
    text = generate_latest(registry).decode()
    les = re.findall(r'policyengine_call_duration_seconds_bucket\{guard="api",le="([^"]+)"\}', text)
    assert les == [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]
    counts = [value(registry, "policyengine_call_duration_seconds_bucket", guard="api", le=le)
              for le in les]  # fmt: skip
    expected = [sum(d <= b for d in durations) for b in (*DURATION_BUCKETS, float("inf"))]
    assert counts == expected  # cumulative, non-decreasing, the last one is the count
    assert counts[-1] == value(registry, "policyengine_call_duration_seconds_count", guard="api")
    assert counts[-1] == 100
