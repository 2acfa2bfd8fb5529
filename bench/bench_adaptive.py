"""Adaptive concurrency: what an adaptive bulkhead costs, and what it buys against a dependency
of capacity C offered 4 C concurrent callers (real timers).

1. Cost: a call that returns at once through a fixed bulkhead and through an adaptive one
   (gradient2), interleaved rounds, the ratio of medians (the issue's bar: at most 1.3x). Samples
   shorter than 100 µs are skipped by design; the bench lowers that floor to 0 so every call
   pays the full sample path (the worst case).
2. Capacity: a server with C = 8 workers, 20 ms of work per request, that keeps working on a
   request its caller gave up on (as a real one does); callers time out an attempt at 60 ms and
   retry a refused call after 5 ms. 32 callers (4 C) for 6 s; the first 2 s are warm-up. Fixed
   limit 4 C, fixed limit C, and each adaptive algorithm: goodput (successful calls/s), p99 of
   successful calls, timeouts/s, the limit at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import policyengine
from policyengine._patterns.adaptive import AdaptiveLimit
from policyengine.exceptions import BulkheadFullError, GuardTimeoutError

C = 8
WORK = 0.020
CALLERS = 4 * C

COST = """
[policies.fixed.bulkhead]
max_concurrent = 1000
[policies.adaptive.bulkhead]
kind = "adaptive"
algorithm = "gradient2"
initial_limit = 1000
min_limit = 1000
max_limit = 1000
"""

CAPACITY = "".join(
    f"""
[policies.{name}.timeout]
attempt = "60ms"
[policies.{name}.bulkhead]
{body}
"""
    for name, body in (
        ("fixed_4c", f"max_concurrent = {4 * C}"),
        ("fixed_c", f"max_concurrent = {C}"),
        *(
            (algo, f'kind = "adaptive"\nalgorithm = "{algo}"\ninitial_limit = 16\nmax_limit = 64')
            for algo in ("gradient2", "vegas", "aimd")
        ),
    )
)


async def ok() -> int:
    return 1


async def per_call_us(call, n: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - t0) / n * 1e6


async def cost(n: int, rounds: int) -> None:
    AdaptiveLimit.MIN_RTT = 0.0  # every call feeds the window: the worst case
    engine = policyengine.loads(COST, default=False)
    fixed, adaptive = engine.guard("fixed"), engine.guard("adaptive")
    cases = {"fixed": lambda: fixed.call(ok), "adaptive": lambda: adaptive.call(ok)}
    runs: dict[str, list[float]] = {k: [] for k in cases}
    for call in cases.values():
        await per_call_us(call, 500)
    for _ in range(rounds):
        for name, call in cases.items():
            runs[name].append(await per_call_us(call, n))
    f, a = (statistics.median(runs[k]) for k in cases)
    print(f"cost, a call that returns at once (median of {rounds} interleaved rounds):")
    print(f"  fixed bulkhead      {f:6.2f} us")
    print(f"  adaptive bulkhead   {a:6.2f} us   ({a / f:.2f}x; the bar is 1.3x)")
    engine.close()
    AdaptiveLimit.MIN_RTT = 1e-4


class Server:
    """C workers; a request keeps its worker busy for WORK even if its caller left."""

    def __init__(self) -> None:
        self.workers = asyncio.Semaphore(C)
        self.tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, done: asyncio.Future[None]) -> None:
        async with self.workers:
            await asyncio.sleep(WORK)
        if not done.done():
            done.set_result(None)

    async def request(self) -> None:
        done = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._serve(done))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await done


class Run:
    """One configuration's callers: call, and after a refusal wait 5 ms and call again."""

    def __init__(self, g, server: Server, start: float, seconds: float, warmup: float) -> None:  # type: ignore[no-untyped-def]
        self.g, self.server, self.start = g, server, start
        self.seconds, self.warmup = seconds, warmup

    async def caller(self, latencies: list[float], counts: dict[str, int]) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() - self.start < self.seconds:
            t0 = loop.time()
            measured = t0 - self.start >= self.warmup
            try:
                await self.g.call(self.server.request)
            except GuardTimeoutError:
                counts["timeouts"] += measured
                continue
            except BulkheadFullError:
                counts["refused"] += measured
                await asyncio.sleep(0.005)
                continue
            if measured:
                latencies.append(loop.time() - t0)


async def capacity(seconds: float, warmup: float) -> None:
    engine = policyengine.loads(CAPACITY, default=False)
    print(
        f"\ncapacity C = {C} ({WORK * 1e3:.0f} ms each: at most {C / WORK:.0f}/s), {CALLERS}"
        f" callers, attempt timeout 60 ms, {seconds - warmup:.0f} s measured after {warmup:.0f} s"
    )
    print(
        f"  {'':12} {'goodput/s':>10} {'p99 ms':>8} {'timeouts/s':>11} {'refused/s':>10}"
        f" {'limit':>6}"
    )
    for name in ("fixed_4c", "fixed_c", "gradient2", "vegas", "aimd"):
        g = engine.guard(name)
        server = Server()
        latencies: list[float] = []
        counts = {"timeouts": 0, "refused": 0}
        run = Run(g, server, asyncio.get_running_loop().time(), seconds, warmup)
        await asyncio.gather(*(run.caller(latencies, counts) for _ in range(CALLERS)))
        for task in list(server.tasks):
            task.cancel()
        span = seconds - warmup
        p99 = sorted(latencies)[int(0.99 * len(latencies))] * 1e3 if latencies else float("nan")
        print(
            f"  {name:12} {len(latencies) / span:10.0f} {p99:8.1f} "
            f"{counts['timeouts'] / span:11.0f} {counts['refused'] / span:10.0f} "
            f"{g.metrics()['limit']:6}"
        )
    engine.close()


async def main(quick: bool) -> None:
    await cost(2000 if quick else 20000, 3 if quick else 9)
    await capacity(3.0 if quick else 6.0, 1.0 if quick else 2.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    asyncio.run(main(parser.parse_args().quick))
