"""Blocking calls: `call_sync` against pybreaker, and a `kind = "threads"` bulkhead against
`loop.run_in_executor` on a pool of the same size, in one run.

    .venv/bin/python bench/bench_sync.py [--quick]

Rounds are interleaved and the medians compared: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import policyengine

POLICIES = """
[policies.breaker.breaker]
consecutive_failures = 5

[policies.pool.bulkhead]
kind = "threads"
max_concurrent = 64
max_queue = 1000
"""


def work() -> int:
    return 1


def sync_us(call: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t0) / n * 1e6


async def pooled_us(submit: Callable[[], object], tasks: int, each: int) -> float:
    async def worker() -> None:
        for _ in range(each):
            await submit()  # type: ignore[misc]

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (time.perf_counter() - t0) / (tasks * each) * 1e6


def bench_call_sync(engine: policyengine.Engine, n: int, rounds: int) -> None:
    handle = engine.guard("breaker")
    guard = engine.guards["breaker"]
    cases: dict[str, Callable[[], object]] = {
        "bare call": work,
        "policyengine handle.call_sync": lambda: handle.call_sync(work),
        "policyengine Guard.call_sync": lambda: guard.call_sync(work),
    }
    try:
        import pybreaker

        breaker = pybreaker.CircuitBreaker(fail_max=5)
        cases["pybreaker.call"] = lambda: breaker.call(work)
    except ImportError:
        print("pybreaker is not installed (pip install pybreaker): no peer figure")
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, call in cases.items():
            runs[name].append(sync_us(call, n))
    med = {name: statistics.median(r) for name, r in runs.items()}
    peer = med.get("pybreaker.call")
    print(f"{'call_sync, breaker only':36} {'us/call':>8} {'x pybreaker':>12}")
    for name, us in med.items():
        ratio = f"{us / peer:12.2f}" if peer else ""
        print(f"{name:36} {us:8.2f} {ratio}")


async def bench_threads(engine: policyengine.Engine, tasks: int, each: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=64)
    handle = engine.guard("pool")
    cases = {
        "run_in_executor (64 threads)": lambda: loop.run_in_executor(pool, work),
        'kind = "threads" bulkhead (64)': lambda: handle.call(work),  # type: ignore[arg-type]
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, submit in cases.items():
            runs[name].append(await pooled_us(submit, tasks, each))
    base, ours = (statistics.median(runs[name]) for name in cases)
    print(f"\n{tasks} concurrent tasks x {each} blocking calls (us/call, median of rounds):")
    print(f"  run_in_executor, 64 threads        {base:7.2f}")
    print(f'  kind = "threads" bulkhead, 64      {ours:7.2f}  ({ours / base:.2f}x)')
    pool.shutdown()


def main(quick: bool) -> None:
    engine = policyengine.loads(POLICIES, default=False)
    rounds = 3 if quick else 7
    bench_call_sync(engine, 5000 if quick else 50000, rounds)
    asyncio.run(bench_threads(engine, 64, 20 if quick else 100, rounds))
    engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    main(parser.parse_args().quick)
