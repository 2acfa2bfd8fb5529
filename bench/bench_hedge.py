"""Hedged requests: what a hedge section costs when it does not fire, and what it buys against
a long-tail dependency (real timers).

1. Overhead: the same policy (total timeout + bulkhead) with and without a `hedge` section
   (delay "1s": armed on every call, never fires), calls that return at once; interleaved rounds,
   the ratio of medians. The issue's bar: at most 1.2x.
2. The tail: a dependency answering in 2-4 ms, and in 100 ms for 1% of attempts; 3,000 calls,
   20 at a time, real `asyncio.sleep`. Without hedging, with `delay = "10ms"` and with
   `delay = "p95"`: p50 / p99 / p99.9 of the call, and the extra load (extra attempts / calls).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import policyengine

BASE = """
[policies.{name}]
timeout = {{ total = "10s" }}
[policies.{name}.bulkhead]
max_concurrent = 1000
"""

POLICIES = (
    BASE.format(name="plain")
    + BASE.format(name="hedged_fixed")
    + '[policies.hedged_fixed.hedge]\ndelay = "1s"\n'
    + BASE.format(name="tail_plain")
    + BASE.format(name="tail_10ms")
    + '[policies.tail_10ms.hedge]\ndelay = "10ms"\n'
    + BASE.format(name="tail_p95")
    + '[policies.tail_p95.hedge]\ndelay = "p95"\nmin_delay = "1ms"\n'
)


async def ok() -> int:
    return 1


async def per_call_us(call, n: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - t0) / n * 1e6


async def overhead(engine: policyengine.Engine, n: int, rounds: int) -> None:
    plain, hedged = engine.guard("plain"), engine.guard("hedged_fixed")
    cases = {"plain": lambda: plain.call(ok), "hedge section": lambda: hedged.call(ok)}
    runs: dict[str, list[float]] = {k: [] for k in cases}
    for call in cases.values():
        await per_call_us(call, 500)
    for _ in range(rounds):
        for name, call in cases.items():
            runs[name].append(await per_call_us(call, n))
    p, h = (statistics.median(runs[k]) for k in cases)
    print(f"overhead, a call that returns at once (median of {rounds} interleaved rounds):")
    print(f"  no hedge section    {p:6.2f} us")
    print(f"  hedge, not fired    {h:6.2f} us   ({h / p:.2f}x; the bar is 1.2x)")


def dependency(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)

    async def call() -> None:
        await asyncio.sleep(0.1 if rng.random() < 0.01 else rng.uniform(0.002, 0.004))

    return call


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def worker(g, fn, queue, latencies: list[float]) -> None:  # type: ignore[no-untyped-def]
    for _ in queue:
        t0 = time.perf_counter()
        await g.call(fn)
        latencies.append(time.perf_counter() - t0)


async def tail(engine: policyengine.Engine, calls: int, concurrency: int) -> None:
    print(
        f"\nlong tail: 1% of attempts 100 ms, the rest 2-4 ms; {calls} calls, {concurrency} at once"
    )
    print(f"  {'':18} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'extra load':>11}")
    for name, label in (
        ("tail_plain", "no hedging"),
        ("tail_10ms", 'delay "10ms"'),
        ("tail_p95", 'delay "p95"'),
    ):
        g = engine.guard(name)
        fn = dependency(7)
        latencies: list[float] = []
        queue = iter(range(calls))
        await asyncio.gather(*(worker(g, fn, queue, latencies) for _ in range(concurrency)))
        m = g.metrics()
        extra = m["hedges"] / m["calls"]
        print(
            f"  {label:18} {pct(latencies, 0.5) * 1e3:8.1f} {pct(latencies, 0.99) * 1e3:8.1f} "
            f"{pct(latencies, 0.999) * 1e3:9.1f} {extra:10.1%}"
        )


async def main(quick: bool) -> None:
    engine = policyengine.loads(POLICIES, default=False)
    await overhead(engine, 2000 if quick else 20000, 3 if quick else 9)
    await tail(engine, 1000 if quick else 3000, 20)
    engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    asyncio.run(main(parser.parse_args().quick))
