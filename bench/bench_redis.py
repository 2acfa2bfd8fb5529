"""Shared breaker state on Redis: what it costs on the closed path, and how fast a trip spreads.

    .venv/bin/python bench/bench_redis.py [--url URL] [--topology T] [--calls N] [--trials T]

Without --url it starts throwaway servers on free loopback ports (needs redis-server and
redis-cli): `--topology single` one redis-server, `cluster` a 3-master Redis Cluster, `sentinel`
a master, its replica and a Sentinel; `all` (the default) measures 1. on each in turn.

1. Closed-path overhead: the same breaker policy, `await guard.call(ok)` and `call_sync`, with
   `[state] backend = "memory"` and with `backend = "redis"` + `shared = true` (no store round trip
   on this path: outcomes go out in batches). Median of 5 runs; the target is <= 1.3x.
2. Trip propagation: process A fails `consecutive_failures` calls in a row; process B (spawned)
   records the moment its breaker opens. Time from A's tripping failure to B's state change (both
   on the host's CLOCK_MONOTONIC); median and worst of T trials. The target is <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import policyengine  # noqa: E402
from policyengine import Engine  # noqa: E402

BREAKER = 'consecutive_failures = 5\nopen_duration = "30s"'


def text(backend: str, url: str, prefix: str) -> str:
    state = f'[state]\nbackend = "{backend}"\nurl = "{url}"\nprefix = "{prefix}"\n'
    shared = "shared = true\n" if backend == "redis" else ""
    return f"{state}\n[policies.svc.breaker]\n{shared}{BREAKER}\n"


def connected(engine: Engine) -> None:
    deadline = time.monotonic() + 10
    while not engine._state_backend.status()["connected"]:
        if time.monotonic() > deadline:
            raise SystemExit("could not reach Redis")
        time.sleep(0.005)


# -- 1. closed-path overhead ---------------------------------------------------------------------


def per_call_async(engine: Engine, calls: int) -> float:
    guard = engine.guard("svc")

    async def ok() -> None:
        return None

    async def run() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await guard.call(ok)
        return (time.perf_counter() - t0) / calls

    return asyncio.run(run())


def per_call_sync(engine: Engine, calls: int) -> float:
    guard = engine.guard("svc")
    ok = type(None)
    t0 = time.perf_counter()
    for _ in range(calls):
        guard.call_sync(ok)
    return (time.perf_counter() - t0) / calls


def overhead(url: str, calls: int, label: str = "") -> None:
    memory = policyengine.loads(text("memory", "redis://127.0.0.1:1/0", "m"), default=False)
    shared = policyengine.loads(text("redis", url, f"b{uuid.uuid4().hex[:8]}"), default=False)
    connected(shared)
    print(f"closed path{label}, {calls:,} calls per run, median of 5 runs (us/call):")
    for label, bench in (
        ("await guard.call(ok)", per_call_async),
        ("call_sync(ok)", per_call_sync),
    ):
        results: dict[str, list[float]] = {"memory": [], "redis": []}
        for _ in range(5):  # interleaved, so drift hits both alike
            results["memory"].append(bench(memory, calls))
            results["redis"].append(bench(shared, calls))
        mem, red = (statistics.median(results[k]) * 1e6 for k in ("memory", "redis"))
        print(f"  {label:22} memory {mem:6.2f}   redis {red:6.2f}   ratio {red / mem:4.2f}x")
    status = shared._state_backend.status()
    print(f"  store errors {status['errors']}, dropped batches {status['dropped_batches']}")
    memory.close()
    shared.close()


# -- 2. trip propagation -------------------------------------------------------------------------


def watcher(url: str, jobs: Any, ready: Any, seen: Any) -> None:
    """Per trial: build an engine on the trial's prefix, report when its breaker opens."""
    while (prefix := jobs.get()) is not None:
        engine = policyengine.loads(text("redis", url, prefix), default=False)
        opened: list[float] = []

        def on_event(event: Any, opened: list[float] = opened) -> None:
            if event.name == "state_change" and event.data["to"] == "open":
                opened.append(time.monotonic())

        engine.add_listener(on_event)
        connected(engine)
        ready.put(True)
        deadline = time.monotonic() + 5
        while not opened and time.monotonic() < deadline:
            time.sleep(0.0002)
        seen.put(opened[0] if opened else None)
        engine.close()


def propagation(url: str, trials: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    jobs, ready, seen = ctx.Queue(), ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=watcher, args=(url, jobs, ready, seen), daemon=True)
    proc.start()

    def boom() -> None:
        raise ConnectionError("down")

    delays: list[float] = []
    for _ in range(trials):
        prefix = f"p{uuid.uuid4().hex[:8]}"
        jobs.put(prefix)
        engine = policyengine.loads(text("redis", url, prefix), default=False)
        connected(engine)
        ready.get(timeout=30)
        time.sleep(0.02)  # let both sit idle, as in production before an outage
        guard = engine.guard("svc")
        tripped = 0.0
        for _ in range(5):
            try:
                guard.call_sync(boom)
            except ConnectionError:
                tripped = time.monotonic()
        at = seen.get(timeout=10)
        if at is not None:
            delays.append(at - tripped)
        engine.close()
    jobs.put(None)
    proc.join(5)
    lost = trials - len(delays)
    ms = sorted(d * 1000 for d in delays)
    print(f"trip propagation to another process, {trials} trials (ms from the tripping failure):")
    print(
        f"  median {statistics.median(ms):.1f}   p90 {ms[int(len(ms) * 0.9) - 1]:.1f}"
        f"   worst {ms[-1]:.1f}   never seen {lost}"
    )


def start(topology: str, directory: Path) -> Any:
    """A throwaway server set (with `.url` and `.stop()`), or exit saying what is missing."""
    from tests.helpers.redis_server import RedisServer
    from tests.helpers.redis_topologies import Cluster, SentinelSet

    kinds: dict[str, Any] = {
        "single": RedisServer.start_new,
        "cluster": Cluster.start_new,
        "sentinel": SentinelSet.start_new,
    }
    made = kinds[topology](directory)
    if made is None:
        raise SystemExit("redis-server / redis-cli not found: install them or pass --url")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing store (default: start servers here)")
    parser.add_argument(
        "--topology", choices=("single", "cluster", "sentinel", "all"), default="all"
    )
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    if args.url is not None:
        overhead(args.url, args.calls)
        propagation(args.url, args.trials)
        return
    topologies = ["single", "cluster", "sentinel"] if args.topology == "all" else [args.topology]
    for topology in topologies:
        servers = start(topology, Path(tempfile.mkdtemp()))
        try:
            overhead(servers.url, args.calls, f" ({topology})")
            if topology == "single":
                propagation(servers.url, args.trials)
        finally:
            servers.stop()


if __name__ == "__main__":
    main()
