"""A "live" service for the rollout tests: calls through a real guard on virtual time, against a
dependency whose behaviour is a function of time, with every attempt recorded by a `Recorder`.

Until the attempt lifecycle calls layers itself, the harness calls the recorder where the
lifecycle will (each attempt's end, with its number; a call refused at the door).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policyengine._config.loader import load_text
from policyengine._registry.engine import Engine
from policyengine._rollout.record import RecordOptions, TraceWriter
from policyengine._rollout.recorder import Recorder, Recording
from policyengine._rollout.vloop import LoopClock, VirtualLoop, run_virtual
from policyengine._telemetry.events import Event
from policyengine.exceptions import RejectedError

# t -> (duration, outcome "success" | "failure" | "hang", error type)
Behaviour = Callable[[float], tuple[float, str, type[Exception]]]


@dataclasses.dataclass
class Live:
    trips: dict[str, int]
    metrics: dict[str, dict[str, Any]]
    writer: TraceWriter


def run_live(
    text: str, behaviour: Behaviour, starts: list[float], path: Path, guard: str = "svc"
) -> Live:
    loop = VirtualLoop(starts[0])
    clock = LoopClock(loop)
    engine = Engine(load_text(text), clock=clock)
    trips: dict[str, int] = defaultdict(int)

    def listen(event: Event) -> None:
        if event.name == "state_change" and event.data.get("to") == "open":
            trips[event.guard] += 1

    engine.add_listener(listen)
    recording = Recording(clock)
    recording.writer = writer = TraceWriter(
        RecordOptions(path=str(path), queue=1_000_000), clock, wall=lambda: 0.0, start=False
    )
    recorder = Recorder(recording, guard)

    async def one() -> None:
        n = 0

        async def dependency() -> None:
            nonlocal n
            n += 1
            t0 = loop.time()
            duration, outcome, kind = behaviour(t0)
            try:
                await asyncio.sleep(duration if outcome != "hang" else 3600.0)
            except asyncio.CancelledError:  # the guard's timeout
                recorder.record("timeout", None, loop.time() - t0, loop.time(), n)
                raise
            if outcome == "failure":
                error = kind("down")
                recorder.record("failure", error, duration, loop.time(), n)
                raise error
            recorder.record("success", None, duration, loop.time(), n)

        try:
            await engine.guard(guard).call(dependency)
        except RejectedError as exc:
            recorder.record("rejected", exc, 0.0, loop.time(), n + 1)
        except Exception:
            pass

    async def main() -> None:
        tasks = []
        for start in starts:
            await asyncio.sleep(max(0.0, start - loop.time()))
            tasks.append(loop.create_task(one()))
        await asyncio.gather(*tasks)

    run_virtual(loop, main())
    writer.close()
    metrics = {name: engine.guard(name).metrics() for name in engine.names()}
    engine.close()
    return Live(dict(trips), metrics, writer)


def run_wired(
    text: str,
    behaviour: Behaviour,
    starts: list[float],
    path: Path,
    guard: str = "svc",
    sample: float = 1.0,
) -> Live:
    """The same service, recorded by the engine itself (`engine.record`): the recorder is a
    layer of the guard, and the lifecycle calls it."""
    loop = VirtualLoop(starts[0])
    clock = LoopClock(loop)
    engine = Engine(load_text(text), clock=clock)
    trips: dict[str, int] = defaultdict(int)

    def listen(event: Event) -> None:
        if event.name == "state_change" and event.data.get("to") == "open":
            trips[event.guard] += 1

    engine.add_listener(listen)
    engine.record(path, sample=sample)
    writer = engine.recording.writer
    assert writer is not None

    async def dependency() -> None:
        duration, outcome, kind = behaviour(loop.time())
        await asyncio.sleep(duration if outcome != "hang" else 3600.0)
        if outcome == "failure":
            raise kind("down")

    async def one() -> None:
        try:
            await engine.guard(guard).call(dependency)
        except Exception:
            pass

    async def main() -> None:
        tasks = []
        for start in starts:
            await asyncio.sleep(max(0.0, start - loop.time()))
            tasks.append(loop.create_task(one()))
        await asyncio.gather(*tasks)

    run_virtual(loop, main())
    metrics = {name: dict(engine.guard(name).metrics()) for name in engine.names()}
    engine.close()  # flushes the trace
    return Live(dict(trips), metrics, writer)
