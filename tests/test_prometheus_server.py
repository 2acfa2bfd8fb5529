"""The exported histogram as a real Prometheus server reads it: scraped over HTTP, then
`histogram_quantile` (the README's query) through Prometheus's own HTTP API.

Skips, saying so, without the `prometheus` binary (Debian package `prometheus`; CI installs it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from policyengine import Engine
from policyengine.prometheus import PolicyEngineCollector
from tests.helpers.polling import wait_until
from tests.helpers.prometheus_server import PrometheusServer
from tests.helpers.redis_server import free_port

POLICIES = """
schema_version = 1
[policies.fast.timeout]
total = "1s"
[policies.slow.timeout]
total = "30s"
"""

P99 = 'histogram_quantile(0.99, sum by (guard, le) (rate(policyengine_call_duration_seconds_bucket{{guard="{g}"}}[1m])))'  # noqa: E501


@pytest.fixture
def scraped(
    tmp_path: Path, make_engine: Callable[[str], Engine]
) -> Iterator[tuple[Engine, PrometheusServer]]:
    engine = make_engine(POLICIES)
    registry = CollectorRegistry()
    registry.register(PolicyEngineCollector(engine))
    port = free_port()
    http, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    server = PrometheusServer.start_new(tmp_path, target=f"127.0.0.1:{port}")
    if server is None:
        http.shutdown()
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus)")
    try:
        yield engine, server
    finally:
        server.stop()
        http.shutdown()
        thread.join(5)


def record(engine: Engine, name: str, durations: list[float]) -> None:
    """Calls of known durations, into the guard's own counters (what a timed call ends with)."""
    metrics = engine.guards[name].metrics
    for d in durations:
        metrics.start()
        metrics.finish(1, d)


def test_histogram_quantile_lands_in_the_right_bucket(
    scraped: tuple[Engine, PrometheusServer],
) -> None:
    """Regression: with ``le="inf"`` beside ``le="+Inf"``, a p99 of 20 ms read as 10 s."""
    engine, server = scraped
    count = 'policyengine_call_duration_seconds_count{{guard="{g}"}}'
    # Prometheus applies a new target list at most every 5 s: the first scrape takes that long.
    first = "a first scrape (all zero)"
    wait_until(lambda: server.scalar(count.format(g="fast")) == 0, first, timeout=30)
    record(engine, "fast", [0.02] * 99 + [12.0])  # p99: the (10ms, 25ms] bucket
    record(engine, "slow", [0.02] * 50 + [3.0] * 50)  # p99: the (2.5s, 5s] bucket
    wait_until(
        lambda: server.scalar(count.format(g="slow")) == 100,
        "a scrape of the recorded calls",
        timeout=30,
    )
    # One +Inf bucket, read by Prometheus as the float +Inf, holding every call.
    infinite = '{guard="fast",le=~"(?i)\\\\+?inf"}'
    inf = server.query(f"policyengine_call_duration_seconds_bucket{infinite}")
    assert [s["metric"]["le"] for s in inf] == ["+Inf"]
    assert float(inf[0]["value"][1]) == 100
    fast = server.scalar(P99.format(g="fast"))
    slow = server.scalar(P99.format(g="slow"))
    assert fast is not None and 0.01 < fast <= 0.025, fast
    assert slow is not None and 2.5 < slow <= 5.0, slow
    p50 = server.scalar(P99.format(g="slow").replace("0.99", "0.5"))
    assert p50 is not None and 0.01 < p50 <= 0.025 and not math.isnan(p50)
