"""Hot-path cost of a guarded call with the exporters installed, against the same guard without.

    .venv/bin/python bench/bench_exporters.py [--quick]

Two engines from the same policies: one bare, one with a `PolicyEngineCollector` registered on a
prometheus_client registry and `policyengine.otel.instrument` on an OpenTelemetry MeterProvider
(scraped and collected between rounds). Rounds alternate which engine goes first; the ratio of
medians is what to read (these machines are noisy; one run, ratios only). For scale, the same call
instrumented the usual way (a prometheus_client Counter and Histogram updated per call) is timed
too, and so is one scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import POLICIES, Body, ok, timed
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import policyengine
from policyengine import CircuitOpenError
from policyengine.otel import instrument
from policyengine.prometheus import PolicyEngineCollector


async def bad() -> int:
    raise ValueError("business error")


def bodies(engine: policyengine.Engine) -> dict[str, Body]:
    full, tripped, failing = (engine.guard(n) for n in ("full", "tripped", "failing"))

    async def rejected() -> None:
        try:
            await tripped.call(ok)
        except CircuitOpenError:
            pass

    async def failure() -> None:
        try:
            await failing.call(bad)
        except ValueError:
            pass

    return {
        "success, full guard": lambda: full.call(ok),
        "open-circuit rejection": rejected,
        "failure (not retried)": failure,
    }


async def trip(engine: policyengine.Engine) -> None:
    try:
        await engine.guard("tripped").call(bad)
    except ValueError:
        pass
    assert engine.guard("tripped").state == "open"


def per_call_instrumented(engine: policyengine.Engine) -> Body:
    """The usual alternative: a Counter and a Histogram updated around every call."""
    registry = CollectorRegistry()
    calls = Counter("app_calls", "calls", ["guard", "outcome"], registry=registry)
    seconds = Histogram("app_call_seconds", "duration", ["guard"], registry=registry)
    full = engine.guard("full")
    success, hist = calls.labels("full", "success"), seconds.labels("full")

    async def body() -> object:
        t0 = time.perf_counter()
        result = await full.call(ok)
        hist.observe(time.perf_counter() - t0)
        success.inc()
        return result

    return body


async def main(quick: bool) -> None:
    n, rounds = (5_000, 5) if quick else (20_000, 15)
    bare = policyengine.loads(POLICIES, default=False)
    exported = policyengine.loads(POLICIES, default=False)
    registry = CollectorRegistry()
    registry.register(PolicyEngineCollector(exported))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrument(exported, meter_provider=provider)
    for engine in (bare, exported):
        await trip(engine)
    cases = {"bare": bodies(bare), "exported": bodies(exported)}
    usual = per_call_instrumented(bare)
    samples: dict[tuple[str, str], list[float]] = {}
    for body in [*cases["bare"].values(), *cases["exported"].values(), usual]:
        await timed(body, 2_000)  # warm up
    for r in range(rounds):
        order = ("bare", "exported") if r % 2 == 0 else ("exported", "bare")
        for case in cases["bare"]:
            for which in order:
                us = await timed(cases[which][case], n)
                samples.setdefault((case, which), []).append(us)
        samples.setdefault(("success, full guard", "per-call Counter+Histogram"), []).append(
            await timed(usual, n)
        )
        generate_latest(registry)  # a scrape and a collection between rounds
        reader.get_metrics_data()

    print(f"{n} calls x {rounds} rounds, median us/call\n")
    print(f"{'case':28} {'bare':>8} {'exported':>9} {'ratio':>7}")
    for case in cases["bare"]:
        b = statistics.median(samples[(case, "bare")])
        e = statistics.median(samples[(case, "exported")])
        print(f"{case:28} {b:8.2f} {e:9.2f} {e / b:7.3f}")
    b = statistics.median(samples[("success, full guard", "bare")])
    u = statistics.median(samples[("success, full guard", "per-call Counter+Histogram")])
    print(f"\nper-call Counter+Histogram around the full guard: {u:.2f} us ({u / b:.2f}x bare)")

    scrape, collect = [], []
    for _ in range(50 if quick else 200):
        t0 = time.perf_counter()
        generate_latest(registry)
        t1 = time.perf_counter()
        reader.get_metrics_data()
        t2 = time.perf_counter()
        scrape.append((t1 - t0) * 1e6)
        collect.append((t2 - t1) * 1e6)
    guards = len(exported.guards)
    print(
        f"one Prometheus scrape ({guards} guards): {statistics.median(scrape):.0f} us; "
        f"one OpenTelemetry collection: {statistics.median(collect):.0f} us"
    )
    provider.shutdown()
    bare.close()
    exported.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    asyncio.run(main(parser.parse_args().quick))
