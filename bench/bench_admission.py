"""Admission control: the rate limiter's and throttle's cost, accuracy against aiolimiter and
limits, and the fleet-wide limiter's added latency, in one run.

    .venv/bin/python bench/bench_admission.py [--quick]

1. Cost: nanoseconds per admitted attempt (admit + settle), interleaved rounds, median; the peers
   doing the same job (aiolimiter's ``async with``, limits' ``hit``), each with a rate too high
   to refuse anything. With the guard: a rate-limit-only and a throttle-only guard's call against
   a bulkhead-only guard's (the promise: at most 1.3x), and a guard without layers.
2. Accuracy: 100/s offered 1,000 attempts a second for `ACCURACY_SECS` of real time, without
   waiting: how many each admits, and the most in any one-second window (the promise: 100).
3. Shared (needs redis-server): admit latency p50/p99 of the fleet-wide limiter next to the
   per-process one, and the store round trip the lease thread pays instead of the caller.

Machines here are noisy: read the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import policyengine
from policyengine import RateLimitedError
from policyengine._config.admission_models import RateLimitOptions, ThrottleOptions
from policyengine._patterns.ratelimit import RateLimiter
from policyengine._patterns.throttle import Throttle

ACCURACY_SECS = 3.0
HUGE = ["1000000/s"]


def _window_max(times: list[float], period: float) -> int:
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + period:
            j += 1
        best = max(best, j - i)
    return best


# -- 1. cost -------------------------------------------------------------------------------------


def sync_bodies() -> dict[str, Callable[[], object]]:
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    # ours are handed a clock that moves 1 ms a call (read the real one too, for a fair cost),
    # so the 2 rates + burst case keeps real logs and never refuses
    fake = [1000.0]

    def clock() -> float:
        time.monotonic()
        fake[0] += 0.001
        return fake[0]

    one = RateLimiter("b", RateLimitOptions(rates=HUGE))
    multi = RateLimiter("b", RateLimitOptions(rates=["2000/s", "100000/min"], burst=10))
    thr = Throttle("b", ThrottleOptions())
    moving = MovingWindowRateLimiter(MemoryStorage())
    fixed = FixedWindowRateLimiter(MemoryStorage())
    item = parse("1000000/second")

    def ours_one() -> object:
        now = clock()
        one.admit(now)
        one.settle("success", None, 0.0, now)
        return None

    def ours_multi() -> object:
        now = clock()
        multi.admit(now)
        multi.settle("success", None, 0.0, now)
        return None

    def ours_throttle() -> object:
        now = clock()
        thr.admit(now)
        thr.settle("success", None, 0.0, now)
        return None

    return {
        "ours: 1 rate": ours_one,
        "ours: 2 rates + burst": ours_multi,
        "ours: throttle": ours_throttle,
        "limits: moving window": lambda: moving.hit(item, "k"),
        "limits: fixed window": lambda: fixed.hit(item, "k"),
    }


def time_sync(body: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        body()
    return (time.perf_counter() - t0) / n * 1e9


async def time_async(body: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await body()
    return (time.perf_counter() - t0) / n * 1e9


def cost(rounds: int, n: int) -> dict[str, float]:
    from aiolimiter import AsyncLimiter

    bodies = sync_bodies()
    engine = policyengine.loads(
        "[policies.bulk.bulkhead]\nmax_concurrent = 100\nmax_queue = 100000\n"
        '[policies.plain]\nmode = "enforce"\n'
        '[policies.limited.rate_limit]\nrates = ["1000000/s"]\n'
        "[policies.throttled.throttle]\nk = 2.0\n",
        default=False,
    )
    bulk, plain = engine.guard("bulk"), engine.guard("plain")
    limited, throttled = engine.guard("limited"), engine.guard("throttled")
    limiter = RateLimiter("b", RateLimitOptions(rates=HUGE))

    async def ok() -> int:
        return 1

    async def bulk_call() -> object:
        return await bulk.call(ok)

    async def plain_plus_limiter() -> object:
        now = time.monotonic()
        limiter.admit(now)
        result = await plain.call(ok)
        limiter.settle("success", None, 0.0, now)
        return result

    async def plain_call() -> object:
        return await plain.call(ok)

    async def limited_call() -> object:
        return await limited.call(ok)

    async def throttled_call() -> object:
        return await throttled.call(ok)

    results: dict[str, list[float]] = {}

    async def run() -> None:
        aio = AsyncLimiter(1_000_000, 1)

        async def aiolimiter_body() -> None:
            async with aio:
                pass

        async_bodies = {
            "aiolimiter: async with": aiolimiter_body,
            "guard: bulkhead only": bulk_call,
            "guard: no layer": plain_call,
            "guard: no layer + limiter": plain_plus_limiter,
            "guard: rate limit only": limited_call,
            "guard: throttle only": throttled_call,
        }
        for _ in range(rounds):
            for name, body in bodies.items():
                results.setdefault(name, []).append(time_sync(body, n))
            for name, abody in async_bodies.items():
                results.setdefault(name, []).append(await time_async(abody, n))

    asyncio.run(run())
    engine.close()
    return {name: statistics.median(v) for name, v in results.items()}


# -- 2. accuracy ---------------------------------------------------------------------------------


async def accuracy(secs: float) -> dict[str, tuple[int, int]]:
    from aiolimiter import AsyncLimiter
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import (
        FixedWindowRateLimiter,
        MovingWindowRateLimiter,
        SlidingWindowCounterRateLimiter,
    )

    ours = RateLimiter("b", RateLimitOptions(rates=["100/s"]))
    ours_burst = RateLimiter("b", RateLimitOptions(rates=["100/s"], burst=99))
    aio = AsyncLimiter(100, 1)
    item = parse("100/second")
    peers = {
        "limits: moving window": MovingWindowRateLimiter(MemoryStorage()),
        "limits: fixed window": FixedWindowRateLimiter(MemoryStorage()),
        "limits: sliding counter": SlidingWindowCounterRateLimiter(MemoryStorage()),
    }

    def try_ours(lim: RateLimiter) -> Callable[[], bool]:
        def attempt() -> bool:
            try:
                lim.admit(time.monotonic())
                return True
            except RateLimitedError:
                return False

        return attempt

    async def try_aio() -> bool:
        if not aio.has_capacity():
            return False
        await aio.acquire()
        return True

    tries: dict[str, Callable[[], Any]] = {
        "ours: 100/s": try_ours(ours),
        "ours: 100/s, burst 99": try_ours(ours_burst),
    }
    for name, strategy in peers.items():
        tries[name] = lambda s=strategy: s.hit(item, "k")
    admitted: dict[str, list[float]] = {name: [] for name in [*tries, "aiolimiter"]}
    t0 = time.monotonic()
    while (now := time.monotonic()) < t0 + secs:
        for name, attempt in tries.items():
            if attempt():
                admitted[name].append(now)
        if await try_aio():
            admitted["aiolimiter"].append(now)
        await asyncio.sleep(0.001)
    return {name: (len(ts), _window_max(ts, 1.0)) for name, ts in admitted.items()}


# -- 3. shared -----------------------------------------------------------------------------------


def shared(n: int) -> dict[str, tuple[float, float]] | str:
    try:
        from policyengine._runtime.clock import MonotonicClock
        from policyengine._shared._limiter import LimiterStore, SharedRateLimiter
        from tests.helpers.redis_server import RedisServer
    except ImportError as exc:
        return f"skipped: {exc}"
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer.start_new(Path(tmp))
        if server is None:
            return "skipped: redis-server is not installed"
        try:
            return _shared_latency(server.url, n, LimiterStore, SharedRateLimiter, MonotonicClock)
        finally:
            server.stop()


def _shared_latency(url: str, n: int, store_cls: Any, cls: Any, clock_cls: Any) -> Any:
    store = store_cls(url, "bench", 0.05)
    options = RateLimitOptions(rates=["20000/s"], burst=100)
    fleet = cls("svc", options, store, clock_cls())
    local = RateLimiter("svc", options)
    out: dict[str, list[float]] = {"process": [], "shared": []}
    t_end = time.monotonic() + 0.2
    while time.monotonic() < t_end:  # let the lease thread learn the demand
        try:
            fleet.admit(time.monotonic())
        except RateLimitedError:
            pass
        time.sleep(0.0001)
    for i in range(n):
        for name, lim in (("process", local), ("shared", fleet)):
            t0 = time.perf_counter_ns()
            try:
                lim.admit(time.monotonic())
            except RateLimitedError:
                pass
            out[name].append(time.perf_counter_ns() - t0)
        if i % 4 == 0:
            time.sleep(0.0002)  # about 5,000 attempts a second
    keys = fleet._keys(None)
    trips = []
    for _ in range(min(n, 2000)):
        t0 = time.perf_counter_ns()
        store.call(keys, fleet._args("take", 1, 0))
        trips.append(time.perf_counter_ns() - t0)
    status = fleet.status()
    store.close()
    result = {name: _pcts(v) for name, v in out.items()}
    result["store round trip (lease thread)"] = _pcts(trips)
    result["admitted from a lease / by the local share"] = (
        float(status["admitted"]["leased"]),
        float(status["admitted"]["local_share"]),
    )
    return result


def _pcts(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return values[len(values) // 2], values[int(len(values) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, n = (3, 5_000) if args.quick else (7, 20_000)

    print("1. cost per admitted attempt (ns, median of interleaved rounds)")
    costs = cost(rounds, n)
    base = costs["ours: 1 rate"]
    for name, ns in costs.items():
        print(f"  {name:32s} {ns:9.0f}   x{ns / base:5.2f} of ours (1 rate)")
    bulk = costs["guard: bulkhead only"]
    for name in ("guard: rate limit only", "guard: throttle only"):
        print(f"  {name} / bulkhead-only guard: {costs[name] / bulk:.2f}  (promise <= 1.30)")

    secs = 1.5 if args.quick else ACCURACY_SECS
    print(f"\n2. accuracy: 100/s offered 1,000/s for {secs:g}s (expected about {100 * secs:.0f})")
    for name, (total, worst) in asyncio.run(accuracy(secs)).items():
        flag = "" if worst <= 100 else "   <- more than 100 in one second"
        print(f"  {name:28s} admitted {total:5d}   most in any 1 s window {worst:4d}{flag}")

    print("\n3. shared limiter: admit latency (ns) p50 / p99")
    result = shared(2_000 if args.quick else 20_000)
    if isinstance(result, str):
        print(f"  {result}")
    else:
        for name, (p50, p99) in result.items():
            print(f"  {name:44s} {p50:9.0f} / {p99:9.0f}")


if __name__ == "__main__":
    main()
