"""Recording overhead and `simulate` throughput, in one run.

    .venv/bin/python bench/bench_rollout.py [--quick]

- recording: a guarded call (the `full` policy of `_common`) against the same call plus what the
  lifecycle adds per attempt when recording: `Recorder.admit` and `Recorder.settle`, with the
  trace writer's thread formatting and writing every line meanwhile (it shares the GIL, so its
  work is part of the cost), and the caller's side alone (the queue drained between rounds,
  untimed). Interleaved rounds; the ratio of medians. The target is at most 1.1x.
- simulate: attempts replayed per second through the `full` policy (breaker, retries, timeouts,
  bulkhead all on the virtual-time loop), for a trace with an outage in it.

Read the ratios; the absolute figures are noise on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import POLICIES, ok, timed

import policyengine
from policyengine._loader import load_text
from policyengine._record import RecordOptions, TraceWriter
from policyengine._recorder import Recorder, Recording
from policyengine._simulate import replay
from policyengine._trace import Attempt, group_calls


async def recording(rounds: int, n: int) -> tuple[float, float, float, float, int]:
    engine = policyengine.loads(POLICIES, default=False)
    full = engine.guard("full")
    with tempfile.TemporaryDirectory() as tmp:
        engine.record(Path(tmp) / "trace.jsonl")  # the writer and its thread, as in service
        recorder = Recorder(engine.recording, "full")
        clock = engine.clock
        assert clock is not None

        async def plain() -> object:
            return await full.call(ok)

        async def recorded() -> object:
            # the layer's own cost: the lifecycle has `now` and the duration at hand already
            recorder.admit(0.0)
            result = await full.call(ok)
            recorder.settle("success", None, 0.001, 0.0)
            return result

        # the caller's side alone: a writer whose queue is drained between rounds, untimed
        idle = Recording(clock)
        idle.writer = TraceWriter(
            RecordOptions(path=str(Path(tmp) / "idle.jsonl"), queue=n + 1), clock, start=False
        )
        caller_side = Recorder(idle, "full")

        async def settle_only() -> object:
            caller_side.admit(0.0)
            result = await full.call(ok)
            caller_side.settle("success", None, 0.001, 0.0)
            return result

        sampled_recording = Recording(clock)
        sampled_recording.start(RecordOptions(path=str(Path(tmp) / "s.jsonl"), sample=0.1))
        sampled_recorder = Recorder(sampled_recording, "full")

        async def sampled() -> object:
            sampled_recorder.admit(0.0)
            result = await full.call(ok)
            sampled_recorder.settle("success", None, 0.001, 0.0)
            return result

        base, rec, alone, tenth = [], [], [], []
        for _ in range(rounds):
            base.append(await timed(plain, n))
            rec.append(await timed(recorded, n))
            await asyncio.to_thread(engine.recording.writer.flush)  # type: ignore[union-attr]
            alone.append(await timed(settle_only, n))
            idle.writer.flush()
            tenth.append(await timed(sampled, n))
            sampled_recording.writer.flush()  # type: ignore[union-attr]
        sampled_recording.close()
        writer = engine.recording.writer
        assert writer is not None
        engine.close()
        idle.close()
        return (
            statistics.median(base),
            statistics.median(rec),
            statistics.median(alone),
            statistics.median(tenth),
            writer.dropped,
        )


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
    base, rec, clocked, tenth, dropped = asyncio.run(recording(rounds, n))
    print(f"guarded call             {base:7.2f} us/call")
    print(f"guarded call + recording {rec:7.2f} us/call   ratio {rec / base:.3f}x (target <= 1.1)")
    print(f"  caller's side only     {clocked:7.2f} us/call   ratio {clocked / base:.3f}x")
    print(f"  sample = 0.1           {tenth:7.2f} us/call   ratio {tenth / base:.3f}x")
    print(f"dropped by the writer    {dropped}")
    attempts = 5_000 if args.quick else 50_000
    rate = simulate_rate(attempts, 3)
    print(f"simulate                 {rate:9.0f} attempts/s replayed ({attempts} attempts)")


if __name__ == "__main__":
    main()
