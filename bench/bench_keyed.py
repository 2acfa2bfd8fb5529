"""Keyed guards: what a call through a key's lane costs against an unkeyed call of the same policy,
and what an idle closed key costs in memory (tracemalloc).

    .venv/bin/python bench/bench_keyed.py [--quick]

Timing: interleaved rounds (unkeyed, keyed, unkeyed, ...), the median of each; the ratio is the
figure (these machines are noisy). A keyed call here is `lane(key)` (the registry lookup, the LRU
touch) plus the lane's runner, a guard over the key's own breaker: what `guard(x).key(k).call`
does once wired. Keys rotate over 100 hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ok, timed

import policyengine
from policyengine._guard import Guard
from policyengine._keyed import policy_factories
from policyengine._partition import KeyRegistry, Lane
from policyengine.testing import FakeClock

POLICIES = """
[policies.full]
timeout = { total = "10s", attempt = "2s" }
[policies.full.retry]
max_attempts = 3
backoff = "exponential"
initial_delay = "100ms"
max_delay = "1s"
[policies.full.breaker]
consecutive_failures = 5
failure_rate = 0.5
window_size = 100
minimum_calls = 20
[policies.full.bulkhead]
max_concurrent = 100
max_queue = 100000
[policies.full.partition]
max_keys = 1000

[policies.breaker_only.breaker]
consecutive_failures = 5
[policies.breaker_only.partition]
max_keys = 1000
"""

MEMORY = {
    "consecutive (default breaker)": {"breaker": {}},
    "count window of 100": {"breaker": {"failure_rate": 0.5}},
    "time window of 60s": {"breaker": {"failure_rate": 0.5, "window": "time"}},
    "count window of 20": {
        "breaker": {"failure_rate": 0.5, "window_size": 20, "minimum_calls": 10}
    },
    "default breaker + own bulkhead": {
        "breaker": {},
        "bulkhead": {"max_concurrent": 10},
        "partition": {"bulkhead": "per_key"},
    },
}


def keyed_registry(engine: policyengine.Engine, name: str) -> KeyRegistry:
    """The registry the compile step will build: lanes whose runner is a guard over the lane's
    breaker and bulkhead, sharing everything else with the policy's guard."""
    guard = engine._lookup(name)
    policy = guard.policy
    assert policy.partition is not None

    def runner(lane: Lane) -> Guard:
        return Guard(
            name,
            policy,
            engine.clock,
            guard._emit,
            guard.metrics,
            breaker=lane.breaker,
            bulkhead=lane.bulkhead,
            retry=guard.retry,
            budget=guard._budget,
            fallback=guard.fallback,
        )

    factories = policy_factories(
        name, policy, engine.clock, shared_bulkhead=guard.bulkhead, runner=runner
    )
    return KeyRegistry(name, policy.partition, engine.clock, guard._emit, factories)


async def timing(n: int, rounds: int) -> dict[str, tuple[float, float]]:
    engine = policyengine.loads(POLICIES, default=False)
    out: dict[str, tuple[float, float]] = {}
    hosts = [f"api-{i}.example.com" for i in range(100)]
    for name in ("breaker_only", "full"):
        guard = engine._lookup(name)
        registry = keyed_registry(engine, name)
        rotation = itertools.cycle(hosts)  # the caller's key, the same work in both

        async def unkeyed(guard: Guard = guard, rotation: Any = rotation) -> object:
            next(rotation)
            return await guard._first(ok, (), {})

        async def keyed(registry: KeyRegistry = registry, rotation: Any = rotation) -> object:
            return await registry.lane(next(rotation)).runner._first(ok, (), {})

        a: list[float] = []
        b: list[float] = []
        for _ in range(rounds):
            a.append(await timed(unkeyed, n))
            b.append(await timed(keyed, n))
        out[name] = (statistics.median(a), statistics.median(b))
    engine.close()
    return out


def bytes_per_key(sections: dict[str, Any], n: int = 5000) -> float:
    from policyengine._models import Policy

    sections = {**sections, "partition": {**sections.get("partition", {}), "max_keys": 100_000}}
    policy = Policy.model_validate(sections)
    assert policy.partition is not None
    clock = FakeClock()
    registry = KeyRegistry(
        "up", policy.partition, clock, lambda e: None, policy_factories("up", policy, clock)
    )
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        lane = registry.lane(f"host-{i:06d}.example.com")
        breaker = lane.breaker
        assert breaker is not None
        breaker.on_success(breaker.acquire(), 0.0)  # called once, successfully: idle, closed
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (2000, 5) if args.quick else (20000, 15)
    print(f"keyed vs unkeyed call, median of {rounds} interleaved rounds of {n} calls")
    for name, (plain, keyed) in asyncio.run(timing(n, rounds)).items():
        print(f"  {name:13s} unkeyed {plain:6.2f} us  keyed {keyed:6.2f} us  x{keyed / plain:.3f}")
    print("memory per idle closed key (tracemalloc, 5000 keys, each called once)")
    for label, sections in MEMORY.items():
        print(f"  {label:32s} {bytes_per_key(sections):7.0f} B")


if __name__ == "__main__":
    main()
