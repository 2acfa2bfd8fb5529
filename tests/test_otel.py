"""policyengine.otel against a real OpenTelemetry SDK and its InMemoryMetricReader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import policyengine
from policyengine import Engine
from policyengine._telemetry.metrics import DURATION_BUCKETS
from policyengine.otel import EVENTS, instrument
from policyengine.testing import FakeClock
from tests.helpers.scripted import API, ok, script

MakeEngine = Callable[[str], Engine]

POLICIES = (
    API
    + """
[policies.idle]
mode = "disabled"

[policies.forced.breaker]
force = "open"
"""
)

P = "resilience.policyengine"


Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


def collect(reader: InMemoryMetricReader) -> Points:
    """{(instrument name, attributes): value} of one collection."""
    data = reader.get_metrics_data()
    out: Points = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "policyengine"
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    attrs = frozenset((point.attributes or {}).items())
                    out[(metric.name, attrs)] = point.value  # type: ignore[union-attr]
    return out


def at(points: Points, name: str, **attrs: Any) -> float | None:
    return points.get((f"{P}.{name}", frozenset(attrs.items())))


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


def event(points: Points, guard: str, name: str) -> float | None:
    severity = EVENTS[name][0]
    return at(
        points, "events", **{"guard.name": guard, "event.name": name, "event.severity": severity}
    )


async def test_values_after_a_scripted_sequence(
    make_engine: MakeEngine, clock: FakeClock, otel: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    reader, provider = otel
    engine = make_engine(POLICIES)
    instrument(engine, meter_provider=provider)
    await script(engine)
    points = collect(reader)
    api = {"guard.name": "api"}

    assert at(points, "calls.started", **api) == 6
    assert at(points, "calls", **api, **{"call.outcome": "success"}) == 2
    assert at(points, "calls", **api, **{"call.outcome": "failure"}) == 3
    assert at(points, "calls", **api, **{"call.outcome": "ignored"}) == 1
    assert event(points, "api", "OnRetry") == 2
    assert event(points, "api", "OnFallback") == 1
    assert event(points, "api", "OnCircuitRejected") == 1
    assert event(points, "api", "OnTimeout") == 0
    assert event(points, "api", "OnBulkheadRejected") == 0
    assert event(points, "api", "OnRetryBudgetExhausted") == 0
    assert at(points, "in_flight", **api) == 0
    assert at(points, "queued", **api) == 0
    assert at(points, "breaker.state", **api) == 1
    assert at(points, "call.duration.count", **api) == 5
    assert at(points, "call.duration.bucket", **api, le="+Inf") == 5
    assert at(points, "call.duration.bucket", **api, le="10.0") == 5
    assert 0 <= (at(points, "call.duration.sum", **api) or -1) < 1
    assert at(points, "breaker.state", **{"guard.name": "idle"}) == 4
    assert at(points, "breaker.state", **{"guard.name": "forced"}) == 3
    assert at(points, "reloads", **{"reload.result": "success"}) == 0
    assert at(points, "reloads", **{"reload.result": "failure"}) == 0
    version = engine.status()["version"]
    assert at(points, "policy.version", **{"policy.version": version}) == 1

    clock.advance(30)
    assert at(collect(reader), "breaker.state", **api) == 2
    await engine.guard("api").call(ok)
    points = collect(reader)
    assert at(points, "breaker.state", **api) == 0
    assert at(points, "calls", **api, **{"call.outcome": "success"}) == 3


def test_guards_are_present_from_the_start_and_close_stops_reporting(
    make_engine: MakeEngine, otel: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    reader, provider = otel
    engine = make_engine(POLICIES)
    inst = instrument(engine, meter_provider=provider)
    points = collect(reader)
    for g in ("api", "idle", "forced"):
        assert at(points, "calls.started", **{"guard.name": g}) == 0
        assert event(points, g, "OnRetry") == 0
    inst.close()
    assert at(collect(reader), "calls.started", **{"guard.name": "api"}) is None


async def test_the_default_engine_is_read_at_each_collection(
    clock: FakeClock, otel: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    reader, provider = otel
    engine = policyengine.loads(POLICIES, clock=clock)  # the default engine
    try:
        instrument(meter_provider=provider)
        await policyengine.guard("api").call(ok)
        assert at(collect(reader), "calls.started", **{"guard.name": "api"}) == 1
    finally:
        engine.close()


def test_duration_buckets_have_one_inf_and_cumulative_counts(
    make_engine: MakeEngine, otel: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    """Regression: the snapshot's last bucket (+Inf) was reported a second time as
    ``le="inf"`` beside ``le="+Inf"``."""
    reader, provider = otel
    engine = make_engine(POLICIES)
    instrument(engine, meter_provider=provider)
    metrics = engine.guards["api"].metrics
    durations = [0.02] * 97 + [0.3, 4.0, 12.0]
    for d in durations:
        metrics.start()
        metrics.finish(1, d)
    points = collect(reader)
    buckets = {
        dict(attrs)["le"]: v
        for (name, attrs), v in points.items()
        if name == f"{P}.call.duration.bucket" and dict(attrs)["guard.name"] == "api"
    }
    bounds = (*DURATION_BUCKETS, float("inf"))
    assert sorted(buckets, key=float) == [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]
    assert [buckets[le] for le in sorted(buckets, key=float)] == [
        sum(d <= b for d in durations) for b in bounds
    ]
    assert buckets["+Inf"] == at(points, "call.duration.count", **{"guard.name": "api"}) == 100
