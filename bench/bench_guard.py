"""Hot-path cost of a guarded call, against the asyncio floors and the Python peers, in one run.

    .venv/bin/python bench/bench_guard.py [--quick]

Reports median microseconds per call over several repeats and ratios to the floors. These
machines are noisy: read the ratios, which come from one run, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import POLICIES, Body, ok, per_call_us

import policyengine
from policyengine import CircuitOpenError


def floors() -> dict[str, Body]:
    sem = asyncio.Semaphore(100)

    async def bare() -> object:
        return await ok()

    async def timeout() -> object:
        async with asyncio.timeout(1):
            return await ok()

    async def semaphore() -> object:
        async with sem:
            return await ok()

    async def both() -> object:
        async with asyncio.timeout(1), sem:
            return await ok()

    return {
        "bare await": bare,
        "asyncio.timeout": timeout,
        "Semaphore": semaphore,
        "timeout + Semaphore": both,
    }


def ours(engine: policyengine.Engine) -> dict[str, Body]:
    full = engine.guard("full")
    bulk = engine.guard("bulkhead_only")

    @full
    async def decorated() -> int:
        return 1

    return {
        "policyengine full guard": lambda: full.call(ok),
        "policyengine decorator": decorated,
        "policyengine bulkhead only": lambda: bulk.call(ok),
    }


def peers() -> dict[str, Body]:
    out: dict[str, Body] = {}
    try:
        import tenacity
        from aiobreaker import CircuitBreaker as AioBreaker

        breaker = AioBreaker(fail_max=5)

        async def tenacity_aiobreaker() -> object:
            async for attempt in tenacity.AsyncRetrying(stop=tenacity.stop_after_attempt(3)):
                with attempt:
                    async with asyncio.timeout(2):
                        return await breaker.call_async(ok)
            return None

        out["tenacity + aiobreaker + timeout"] = tenacity_aiobreaker
    except ImportError:
        pass
    try:
        import stamina

        @stamina.retry(on=ConnectionError, attempts=3, timeout=10)
        async def with_stamina() -> int:
            async with asyncio.timeout(2):
                return await ok()

        out["stamina + timeout"] = with_stamina
    except ImportError:
        pass
    try:
        import backoff

        @backoff.on_exception(backoff.expo, ConnectionError, max_tries=3)
        async def with_backoff() -> int:
            async with asyncio.timeout(2):
                return await ok()

        out["backoff + timeout"] = with_backoff
    except ImportError:
        pass
    try:
        from circuitbreaker import circuit

        @circuit(failure_threshold=5)
        async def with_circuitbreaker() -> int:
            async with asyncio.timeout(2):
                return await ok()

        out["circuitbreaker + timeout"] = with_circuitbreaker
    except ImportError:
        pass
    try:
        from purgatory import AsyncCircuitBreakerFactory

        factory = AsyncCircuitBreakerFactory(default_threshold=5)

        async def with_purgatory() -> int:
            async with await factory.get_breaker("x"), asyncio.timeout(2):
                return await ok()

        out["purgatory + timeout"] = with_purgatory
    except ImportError:
        pass
    try:
        import pyresilience as pr

        @pr.resilient(
            retry=pr.RetryConfig(max_attempts=3, delay=0.1),
            timeout=pr.TimeoutConfig(seconds=2),
            circuit_breaker=pr.CircuitBreakerConfig(failure_threshold=5),
        )
        async def with_pyresilience() -> int:
            return await ok()

        @pr.resilient(
            retry=pr.RetryConfig(max_attempts=3, delay=0.1),
            timeout=pr.TimeoutConfig(seconds=2),
            circuit_breaker=pr.CircuitBreakerConfig(failure_threshold=5),
            bulkhead=pr.BulkheadConfig(max_concurrent=100),
        )
        async def with_pyresilience_bulkhead() -> int:
            return await ok()

        out["pyresilience retry+breaker+timeout"] = with_pyresilience
        out["pyresilience + bulkhead"] = with_pyresilience_bulkhead
    except ImportError:
        pass
    return out


async def rejection_us(
    engine: policyengine.Engine, n: int, repeats: int
) -> tuple[float, float, float, float, float]:
    tripped = engine.guard("tripped")
    try:
        await tripped.call(_fail)
    except ConnectionError:
        pass
    assert tripped.state == "open"

    async def rejected() -> None:
        try:
            await tripped.call(ok)
        except CircuitOpenError:
            pass

    compiled = engine.guards["tripped"]

    async def rejected_by_guard() -> None:
        try:
            await compiled.call(ok)
        except CircuitOpenError:
            pass

    async def raise_catch() -> None:
        try:
            raise ValueError("x")
        except ValueError:
            pass

    async def raises() -> None:
        raise ValueError("x")

    async def awaited_raise() -> None:
        # the least any awaitable rejection can cost: a coroutine that only raises
        try:
            await raises()
        except ValueError:
            pass

    async def refuse() -> None:
        raise CircuitOpenError("tripped", 1.0)

    async def awaited_refusal() -> None:
        try:
            await refuse()
        except CircuitOpenError:
            pass

    return (
        await per_call_us(raise_catch, n, repeats),
        await per_call_us(awaited_raise, n, repeats),
        await per_call_us(awaited_refusal, n, repeats),
        await per_call_us(rejected, n, repeats),
        await per_call_us(rejected_by_guard, n, repeats),
    )


async def peer_rejection_us(n: int, repeats: int) -> float | None:
    """circuitbreaker (the fastest peer's open rejection), for comparison."""
    try:
        from circuitbreaker import CircuitBreakerError, circuit
    except ImportError:
        return None

    @circuit(failure_threshold=1, recovery_timeout=3600)
    async def fails() -> None:
        raise ConnectionError

    try:
        await fails()
    except ConnectionError:
        pass

    async def rejected() -> None:
        try:
            await fails()
        except CircuitBreakerError:
            pass

    return await per_call_us(rejected, n, repeats)


async def _fail() -> None:
    raise ConnectionError


async def throughput_us(call: Callable[[], Awaitable[object]], tasks: int, each: int) -> float:
    async def worker() -> None:
        for _ in range(each):
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (time.perf_counter() - t0) / (tasks * each) * 1e6


async def main(quick: bool) -> None:
    n, repeats = (2000, 3) if quick else (20000, 7)
    engine = policyengine.loads(POLICIES, default=False)
    rows: dict[str, float] = {}
    for name, body in {**floors(), **ours(engine), **peers()}.items():
        for _ in range(200):
            await body()
        rows[name] = await per_call_us(body, n, repeats)
    floor = rows["timeout + Semaphore"]
    print(f"{'case':40} {'us/call':>9} {'x timeout+sem':>14}")
    for name, us in rows.items():
        print(f"{name:40} {us:9.2f} {us / floor:14.2f}")
    full = rows["policyengine full guard"]
    if "pyresilience retry+breaker+timeout" in rows:
        print(
            f"\npyresilience / full guard: {rows['pyresilience retry+breaker+timeout'] / full:.2f}x"
        )
    raise_us, awaited_us, refusal_us, reject_us, guard_us = await rejection_us(engine, n, repeats)
    print(f"open rejection {reject_us:.2f} us through the handle, {guard_us:.2f} us through")
    print(f"Guard.call ({guard_us / refusal_us:.2f}x a coroutine raising CircuitOpenError);")
    print("the handle's, against:")
    for label, us in (
        ("raise+catch in a coroutine", raise_us),
        ("a coroutine raising ValueError", awaited_us),
        ("a coroutine raising CircuitOpenError", refusal_us),
    ):
        print(f"  {label:38} {us:5.2f} us  (rejection / this: {reject_us / us:.2f})")
    print(f"  (a coroutine raising ValueError is itself {awaited_us / raise_us:.2f}x raise+catch)")
    peer = await peer_rejection_us(n, repeats)
    if peer is not None:
        print(f"circuitbreaker open rejection {peer:.2f} us; ours / theirs {reject_us / peer:.2f}")

    tasks, each = (1000, 5) if quick else (10000, 10)
    sem = asyncio.Semaphore(100)

    async def plain_sem() -> object:
        async with sem:
            await asyncio.sleep(0)
            return 1

    async def sleeper() -> int:
        await asyncio.sleep(0)
        return 1

    bulk = engine.guard("bulkhead_only")
    full_g = engine.guard("full")
    cases: dict[str, Callable[[], Awaitable[object]]] = {
        "sem": plain_sem,
        "bulk": lambda: bulk.call(sleeper),
        "full": lambda: full_g.call(sleeper),
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(1 if quick else 5):  # interleaved rounds, medians: one slow round is noise
        for name, call in cases.items():
            runs[name].append(await throughput_us(call, tasks, each))
    t_sem, t_bulk, t_full = (statistics.median(runs[name]) for name in cases)
    print(f"\nthroughput, {tasks} tasks x {each} calls, limit 100 (us/call, median of rounds):")
    print(f"  Semaphore(100)      {t_sem:7.2f}")
    print(f"  bulkhead-only guard {t_bulk:7.2f}  ({t_bulk / t_sem:.2f}x)")
    print(f"  full guard          {t_full:7.2f}  ({t_full / t_sem:.2f}x)")
    engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    asyncio.run(main(parser.parse_args().quick))
