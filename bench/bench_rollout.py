"""Recording overhead and `simulate` throughput, in one run.

    .venv/bin/python bench/bench_rollout.py [--quick]

- recording: a guarded call (the `full` policy of `_common`) in an engine that does not record,
  against the same in engines that record every attempt (`engine.record`: the lifecycle calls the
  guard's `Recorder` layer; the writer's thread formats and writes every line meanwhile, and it
  shares the GIL, so its work is part of the cost), a tenth of them, and the caller's side
  alone (the queue drained between rounds, untimed). Interleaved rounds; ratios of medians. The
  target is at most 1.1x.
- simulate: attempts replayed per second through the `full` policy (breaker, retries, timeouts,
  bulkhead all on the virtual-time loop), for a trace with an outage in it.

Read the ratios; the absolute figures are noise on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import POLICIES, ok, timed

import policyengine
from policyengine._config.loader import load_text
from policyengine._rollout.simulate import replay
from policyengine._rollout.trace import Attempt, group_calls


async def recording(rounds: int, n: int) -> dict[str, float]:
    """us/call of the same guard in engines recording nothing, everything, a tenth; and the
    caller's side alone (a writer whose queue is drained between rounds, untimed)."""
    with tempfile.TemporaryDirectory() as tmp:
        engines = {name: policyengine.loads(POLICIES, default=False) for name in _VARIANTS}
        engines["recording"].record(Path(tmp) / "all.jsonl")
        engines["sample = 0.1"].record(Path(tmp) / "tenth.jsonl", sample=0.1)
        idle = engines["caller's side only"]
        idle.record(Path(tmp) / "idle.jsonl")
        assert idle.recording.writer is not None
        idle.recording.writer.close()  # no thread: its queue is drained between rounds
        idle.recording.writer._limit = n + 1
        noop = engines["a no-op layer"].guards["full"]  # what any layer costs in the lifecycle
        noop.layers = (*noop.layers, _Noop())
        noop.clocked = True
        guards = {name: engine.guard("full") for name, engine in engines.items()}
        bodies = {name: functools.partial(guard.call, ok) for name, guard in guards.items()}
        times: dict[str, list[float]] = {name: [] for name in engines}
        names = list(bodies)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # no order bias
                body = bodies[name]
                times[name].append(await timed(body, n))
                writer = engines[name].recording.writer
                if writer is not None:
                    await asyncio.to_thread(writer.flush)
        dropped = sum(
            e.recording.writer.dropped for e in engines.values() if e.recording.writer is not None
        )
        for engine in engines.values():
            engine.close()
    out = {name: statistics.median(values) for name, values in times.items()}
    out["dropped"] = dropped
    return out


_VARIANTS = ("not recording", "a no-op layer", "recording", "caller's side only", "sample = 0.1")


class _Noop:
    __slots__ = ()

    def admit(self, now: float, limit: float | None = None) -> float:
        return 0.0

    def settle(self, outcome: str, error: object, duration: float, now: float) -> None:
        pass


def synthetic(n: int) -> list[Attempt]:
    out = []
    t = 1_700_000_000.0
    for i in range(n):
        t += 0.01
        down = (n // 3) <= i < (n // 2)
        out.append(
            Attempt(
                t + 0.02,
                "full",
                0.02,
                "failure" if down else "success",
                error="builtins.ConnectionError" if down else None,
                attempt=1,
                call=i + 1,
            )
        )
    return out


def simulate_rate(n: int, rounds: int) -> float:
    calls = group_calls(synthetic(n))
    policies = load_text(POLICIES)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        replay(policies, calls)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, n = (5, 2000) if args.quick else (15, 20_000)
    figures = asyncio.run(recording(rounds, n))
    base = figures["not recording"]
    for name in _VARIANTS:
        us = figures[name]
        print(f"{name:<24} {us:7.2f} us/call   ratio {us / base:.3f}x")
    print(f"(target <= 1.1x; lines dropped by the writers: {figures['dropped']:.0f})")
    attempts = 5_000 if args.quick else 50_000
    rate = simulate_rate(attempts, 3)
    print(f"simulate                 {rate:9.0f} attempts/s replayed ({attempts} attempts)")


if __name__ == "__main__":
    main()
