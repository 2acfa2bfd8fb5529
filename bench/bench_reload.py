"""Hot reload while the service is busy: write-to-in-force, `reload()` from a thread, a large
set, the compile cost, and what an idle watcher costs; every figure in one run.

    .venv/bin/python bench/bench_reload.py [--trials N] [--thread-trials N]

- **watcher**: another process writes the policy file (an atomic save); a caller on the loop
  observes the new bulkhead limit; the time from just before the write to that observation.
  Idle (the caller polls every 0.5 ms) and busy (50 tasks calling a guard without pause, the
  caller among them), for three placements of the loop thread and the other party (the reload
  worker, the watcher thread, the writer): pinned to one CPU, to separate CPUs
  (`os.sched_setaffinity`), unpinned. The loop path (the engine loaded inside the loop) is the
  product; the thread path (loaded outside any loop) is measured a few times, for the ratio.
- **reload()**: another thread (placed as above) calls `engine.reload()` after a write; from the
  call to the caller's observation.
- **1,000 policies** reloaded from another thread under load: time to land, and the longest gap
  between two turns of a task on the loop (how long the loop was blocked at once).
- **compile at 10,000 policies**: us per policy, collector paused (as compiled) and running.
- **idle watcher under load**: CPU of the watcher (loop callbacks, or the watcher thread) over
  a few seconds with no edit, as a share of one core.

Rounds are interleaved (each round visits every cell), so a noisy moment on a shared machine
spreads over all cells. Targets (issue 12): watcher p95 <= 50 ms and max <= 100 ms; reload() max
<= 20 ms; 1,000 policies land within 1 s, no block over 20 ms; compile <= 150 us per policy;
idle watcher <= 0.5% of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import policyengine
from policyengine import Engine
from policyengine._config.loader import load_text
from policyengine._registry import compile as _compile
from policyengine._registry import loopwatch as _loopwatch
from policyengine._registry import onloop as _onloop
from policyengine._runtime.clock import MonotonicClock
from policyengine._telemetry.events import Listeners

TEXT = '[policies.db.bulkhead]\nmax_concurrent = {n}\nmax_queue = 10\nmax_wait = "1s"\n'
BUSY = 50
CPUS = sorted(os.sched_getaffinity(0))
PLACEMENTS = {
    "one CPU": (CPUS[:1], CPUS[:1]),
    "separate": (CPUS[:1], CPUS[-1:]),
    "unpinned": (CPUS, CPUS),
}
WRITER = """
import os, sys, time
cpus = {int(c) for c in sys.argv[2].split(",")}
path = sys.argv[1]
for line in sys.stdin:
    cpus = {int(c) for c in line.split()[1].split(",")}
    os.sched_setaffinity(0, cpus)
    text = sys.stdin.readline().replace("\\\\n", "\\n")
    t0 = time.monotonic()
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(t0, flush=True)
"""

other_cpus: list[int] = CPUS  # where threads of ours other than the loop's run (see `pin`)


def pin(cpus: list[int]) -> None:
    os.sched_setaffinity(0, set(cpus))  # 0: the calling thread


_work = _onloop.LoopRunner._work


def _placed_work(self: _onloop.LoopRunner, look: Any) -> None:
    pin(other_cpus)  # the reload worker runs where "the other party" is placed
    _work(self, look)


_onloop.LoopRunner._work = _placed_work  # type: ignore[method-assign]


class Load:
    """The callers: `BUSY` tasks calling a guard without pause (or none: idle)."""

    def __init__(self, engine: Engine) -> None:
        self.handle = engine.guard("db")
        self.stop = False
        self.turns = 0
        self.max_gap = 0.0
        self.tasks: list[asyncio.Task[None]] = []

    async def _call(self) -> None:
        async def noop() -> None:
            return None

        while not self.stop:
            await self.handle.call(noop)
            await asyncio.sleep(0)  # (a call that never waits would never yield the loop)

    async def _lag(self) -> None:
        last = time.monotonic()
        while not self.stop:
            await asyncio.sleep(0)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def start(self, busy: bool) -> None:
        self.stop = False
        if busy:
            self.tasks = [asyncio.create_task(self._call()) for _ in range(BUSY - 1)]
            self.tasks.append(asyncio.create_task(self._lag()))

    async def close(self) -> None:
        self.stop = True
        await asyncio.gather(*self.tasks)
        self.tasks = []


async def observe(engine: Engine, n: int, busy: bool, timeout: float = 15.0) -> float:
    """When a caller first sees limit `n` (monotonic time)."""
    deadline = time.monotonic() + timeout
    while True:
        bulkhead = engine.guards["db"].bulkhead
        if bulkhead is not None and bulkhead.max_concurrent == n:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"limit {n} never came into force")
        await (asyncio.sleep(0) if busy else asyncio.sleep(0.0005))


class Writer:
    """Another process that saves the file when told to; reports when it started writing."""

    async def start(self, path: Path) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            str(path),
            ",".join(map(str, CPUS)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )

    async def write(self, text: str, cpus: list[int]) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        line = f"write {','.join(map(str, cpus))}\n{text.replace(chr(10), chr(92) + 'n')}\n"
        self.proc.stdin.write(line.encode())
        await self.proc.stdin.drain()
        return float((await self.proc.stdout.readline()).decode())

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def progress(what: str, seconds: float) -> None:
    print(f"  {what}: {seconds * 1e3:.1f} ms", file=sys.stderr, flush=True)


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):7.1f} {p95:7.1f} {max(ordered):7.1f}"


async def watcher_trials(
    path: Path, on_loop: bool, rounds: int, per_cell: int, results: dict[str, list[float]]
) -> None:
    global other_cpus
    path.write_text(TEXT.format(n=1))
    if on_loop:
        engine = policyengine.load(path, watch=True, default=False)
    else:  # outside any loop: the thread watcher
        engine = await asyncio.to_thread(policyengine.load, path, watch=True, default=False)
    writer = Writer()
    await writer.start(path)
    load = Load(engine)
    n = 1
    thread = getattr(engine._watcher, "_thread", None)
    try:
        for _ in range(rounds):
            for busy in (False, True):
                for name, (loop_cpus, others) in PLACEMENTS.items():
                    pin(loop_cpus)
                    other_cpus = others
                    if thread is not None and thread.native_id is not None:
                        os.sched_setaffinity(thread.native_id, set(others))
                    load.start(busy)
                    await asyncio.sleep(0.05)
                    for _ in range(per_cell):
                        n += 1
                        t0 = await writer.write(TEXT.format(n=n), others)
                        seen = await observe(engine, n, busy)
                        cell = f"{'busy' if busy else 'idle'} {name}"
                        results[cell].append((seen - t0) * 1e3)
                        progress(f"watcher {'loop' if on_loop else 'thread'} {cell}", seen - t0)
                        await asyncio.sleep(0.06)  # a new burst, not the tail of the last
                    await load.close()
    finally:
        pin(CPUS)
        await writer.close()
        engine.close()


async def reload_trials(
    path: Path, rounds: int, per_cell: int, out: dict[str, list[float]]
) -> None:
    path.write_text(TEXT.format(n=1))
    engine = policyengine.load(path, default=False)
    load = Load(engine)
    n = 1
    try:
        for _ in range(rounds):
            for busy in (False, True):
                for name, (loop_cpus, others) in PLACEMENTS.items():
                    pin(loop_cpus)
                    load.start(busy)
                    await asyncio.sleep(0.05)
                    for _ in range(per_cell):
                        n += 1
                        path.write_text(TEXT.format(n=n))
                        box: list[float] = []

                        def call(others: list[int] = others, box: list[float] = box) -> None:
                            pin(others)
                            box.append(time.monotonic())
                            engine.reload()

                        caller = threading.Thread(target=call)
                        caller.start()
                        seen = await observe(engine, n, busy)
                        while caller.is_alive():
                            await asyncio.sleep(0.001)
                        out[f"{'busy' if busy else 'idle'} {name}"].append((seen - box[0]) * 1e3)
                    await load.close()
    finally:
        pin(CPUS)
        engine.close()


def many(n: int, limit: int) -> str:
    return "".join(
        f"[policies.p{i}.breaker]\nconsecutive_failures = {limit}\n"
        f'[policies.p{i}.timeout]\nattempt = "1s"\n'
        f"[policies.p{i}.bulkhead]\nmax_concurrent = {limit}\n"
        for i in range(n)
    ) + TEXT.format(n=limit)


Large = dict[str, tuple[list[float], list[float], list[float]]]


async def large_trials(path: Path, rounds: int) -> Large:
    out: Large = {n: ([], [], []) for n in PLACEMENTS}
    path.write_text(many(1000, 2))
    engine = policyengine.load(path, default=False)
    load = Load(engine)
    limit = 2
    try:
        for _ in range(rounds):
            for name, (loop_cpus, others) in PLACEMENTS.items():
                global other_cpus
                pin(loop_cpus)
                other_cpus = others
                load.start(True)
                await asyncio.sleep(0.05)
                limit += 1
                path.write_text(many(1000, limit))
                load.max_gap = 0.0
                if engine._runner is not None:
                    engine._runner.max_step = 0.0
                box: list[float] = []

                def call(others: list[int] = others, box: list[float] = box) -> None:
                    pin(others)
                    box.append(time.monotonic())
                    engine.reload()

                caller = threading.Thread(target=call)
                caller.start()
                seen = await observe(engine, limit, True, timeout=30)
                while caller.is_alive():
                    await asyncio.sleep(0.001)
                await load.close()
                out[name][0].append((seen - box[0]) * 1e3)
                out[name][1].append(load.max_gap * 1e3)
                out[name][2].append(engine._runner.max_step * 1e3)
    finally:
        pin(CPUS)
        engine.close()
    return out


def compile_cost(n: int) -> tuple[float, float]:
    """us per policy compiling `n` new policies: collector paused (as shipped), then running."""
    policy_set = load_text(many(n, 2))
    figures = []
    for paused in (True, False):
        saved = _compile.paused_gc
        if not paused:
            _compile.paused_gc = contextlib.nullcontext  # type: ignore[assignment]
        started = time.perf_counter()
        _compile.compile_guards(policy_set.policies, {}, MonotonicClock(), Listeners())
        figures.append((time.perf_counter() - started) / n * 1e6)
        _compile.paused_gc = saved
    return figures[0], figures[1]


def _thread_cpu_ns(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0])


@contextlib.contextmanager
def _callback_cpu(box: list[float]) -> Iterator[None]:
    """Adds the CPU time of the loop watcher's callbacks to `box[0]`."""
    saved = {}
    for name in ("_on_events", "_on_tick", "_debounced"):
        original = getattr(_loopwatch.LoopWatcher, name)
        saved[name] = original

        def timed(self: Any, *a: Any, _original: Callable[..., None] = original) -> None:
            started = time.thread_time()
            _original(self, *a)
            box[0] += time.thread_time() - started

        setattr(_loopwatch.LoopWatcher, name, timed)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(_loopwatch.LoopWatcher, name, original)


async def idle_cpu(path: Path, seconds: float) -> tuple[float, float]:
    """Share of one core the watcher uses over `seconds` under load, no edit: loop, thread."""
    path.write_text(TEXT.format(n=1))
    box = [0.0]
    with _callback_cpu(box):
        engine = policyengine.load(path, watch=True, default=False, backstop=1.0)
        load = Load(engine)
        load.start(True)
        await asyncio.sleep(seconds)
        await load.close()
        engine.close()
    loop_share = box[0] / seconds * 100
    engine = await asyncio.to_thread(policyengine.load, path, watch=True, default=False)
    load = Load(engine)
    thread = engine._watcher._thread
    load.start(True)
    await asyncio.sleep(0.2)
    before = _thread_cpu_ns(thread.native_id)
    await asyncio.sleep(seconds)
    used = _thread_cpu_ns(thread.native_id) - before
    await load.close()
    engine.close()
    return loop_share, used / 1e9 / seconds * 100


def table(title: str, rows: dict[str, list[float]], target: str) -> None:
    print(f"\n{title} (ms: p50 p95 max; {target})")
    for name, values in rows.items():
        print(f"  {name:<16} {stats(values)}   n={len(values)}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trials", type=int, default=5, help="per cell and round (loop path)")
    parser.add_argument("--thread-trials", type=int, default=1, help="per cell and round")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()
    cells = [f"{load} {name}" for load in ("idle", "busy") for name in PLACEMENTS]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policies.toml"
        on_loop: dict[str, list[float]] = {c: [] for c in cells}
        on_thread: dict[str, list[float]] = {c: [] for c in cells}
        reloads: dict[str, list[float]] = {c: [] for c in cells}
        await watcher_trials(path, True, args.rounds, args.trials, on_loop)
        await reload_trials(path, args.rounds, args.trials, reloads)
        if args.thread_trials:
            await watcher_trials(path, False, args.rounds, args.thread_trials, on_thread)
        large = await large_trials(path, max(1, args.rounds // 2))
        idle_loop, idle_thread = await idle_cpu(path, args.idle_seconds)
    paused, running = compile_cost(10_000)
    print(f"CPUs {CPUS}; loop thread / other party placed: {PLACEMENTS}")
    table("watcher, loop path: write -> in force", on_loop, "target p95 <= 50, max <= 100")
    if args.thread_trials:
        table("watcher, thread path (before)", on_thread, "for the ratio")
        for cell in cells:
            a, b = on_loop[cell], on_thread[cell]
            if a and b:
                ratio = statistics.median(b) / statistics.median(a)
                print(f"  p50 thread / loop, {cell}: {ratio:.1f}x")
    table("reload() from another thread -> in force", reloads, "target max <= 20")
    print(
        "\n1,000 policies reloaded from another thread under load (ms, p50 and max: time to"
        " land; longest gap between two turns of a task on the loop; longest step of ours on"
        " the loop, a lent slice or the commit; targets land <= 1000, block <= 20)"
    )
    for name, (land, block, step) in large.items():
        print(
            f"  {name:<10} land {statistics.median(land):7.1f} {max(land):7.1f}   "
            f"gap {statistics.median(block):6.1f} {max(block):6.1f}   "
            f"step {statistics.median(step):6.1f} {max(step):6.1f}   n={len(land)}"
        )
    print(
        f"\ncompile at 10,000 policies: {paused:.0f} us/policy (collector paused), "
        f"{running:.0f} us/policy running; ratio {running / paused:.2f}x; target <= 150"
    )
    print(
        f"idle watcher under load: loop {idle_loop:.3f}% of a core, thread {idle_thread:.2f}%;"
        " target <= 0.5%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
