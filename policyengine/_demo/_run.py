"""The demo's main coroutine: engine, flaky service, load and view, until time is up or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._registry.default import load
from .._registry.engine import Engine
from .._telemetry.events import log_listener
from ._load import LoadGenerator
from ._service import FlakyService
from ._stats import Notice, Sampler
from ._story import ENDPOINTS, Conditions, Story
from ._view import Frame, View

__all__ = ["Options", "run"]

TICK = 0.125  # seconds between samples / redraws
RATES = {"checkout": 40.0, "stock": 50.0, "catalog": 25.0}  # calls per second


@dataclass(frozen=True, slots=True)
class Options:
    path: Path
    shown_path: str
    duration: float | None
    speed: float
    seed: int | None = None


def open_engine(path: Path) -> tuple[Engine, bool]:
    """Load with watching on; (engine, True) if the watcher is missing and we must poll."""
    if importlib.util.find_spec("policyengine._registry.watcher") is None:
        return load(path, watch=False, default=False), True
    return load(path, watch=True, default=False), False


async def poll_reload(engine: Engine, path: Path, every: float = 0.2) -> None:
    """Stop-gap for a missing file watcher: reload when the file's mtime or size changes."""

    def stamp() -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    seen = stamp()
    while True:
        await asyncio.sleep(every)
        now = stamp()
        if now != seen and now is not None:
            seen = now
            await asyncio.to_thread(engine.reload)


def invitation(shown_path: str) -> str:
    return (
        f'Try it: edit {shown_path} while this runs and save. Add force = "open" under '
        "[policies.checkout.breaker], or set max_concurrent = 1 under "
        "[policies.stock.bulkhead]: the change applies live. A bad edit "
        "(open_duration = 1) is rejected and the old policy keeps serving. Ctrl-C to quit."
    )


@contextlib.contextmanager
def _on_interrupt(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C (and SIGTERM) end the run cleanly instead of raising KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or Windows: KeyboardInterrupt is caught in main()
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def summary(sampler: Sampler, elapsed: float) -> list[str]:
    lines = [f"[{elapsed:6.1f}s] demo over: policy version {sampler.version}"]
    for name in sampler.names:
        m = sampler.engine.guard(name).metrics()
        rej = m["rejections"]
        lines.append(
            f"summary {name}: calls={m['calls']} successes={m['successes']} "
            f"failures={m['failures']} retries={m['retries']} fallbacks={m['fallbacks']} "
            f"rejected open={rej['circuit_open']} full={rej['bulkhead_full']} "
            f"budget={rej['budget_exhausted']} trips={sampler.trips[name]} "
            f"recoveries={sampler.recoveries[name]} state={m['state']}"
        )
    return lines


async def run(options: Options, view: View) -> int:
    engine, needs_polling = open_engine(options.path)
    engine.remove_listener(log_listener)  # the view reports state changes and reloads itself
    try:
        names = [n for n in ENDPOINTS if n in engine.guards]
        if not names:
            print(f"{options.shown_path} defines none of the demo's guards: {', '.join(ENDPOINTS)}")
            return 1
        sampler = Sampler(engine, names)
        engine.add_listener(sampler.listener)
        story = Story.for_run(options.duration, options.speed)
        await _drive(options, engine, sampler, story, view, needs_polling)
        return 0
    finally:
        engine.close()


async def _drive(
    options: Options,
    engine: Engine,
    sampler: Sampler,
    story: Story,
    view: View,
    needs_polling: bool,
) -> None:
    def conditions(endpoint: str) -> Conditions:
        return story.phase_at(sampler.elapsed()).conditions(endpoint)

    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    async with FlakyService(conditions, seed=options.seed) as service:
        load_gen = LoadGenerator(service.get)
        for name in sampler.names:
            load_gen.add(engine.guard(name), name, RATES[name])
        view.show_intro(invitation(options.shown_path))
        background.append(asyncio.create_task(load_gen.run()))
        if needs_polling:
            background.append(asyncio.create_task(poll_reload(engine, options.path)))
        phase_index = -1
        try:
            with _on_interrupt(stop):
                while not stop.is_set():
                    elapsed = sampler.elapsed()
                    if options.duration is not None and elapsed >= options.duration:
                        break
                    notices = sampler.notices()
                    index = story.index_at(elapsed)
                    phase = story.phases[index]
                    if index != phase_index:
                        phase_index = index
                        notices.append(Notice(elapsed, "phase", phase.name, phase.caption))
                    frame = Frame(
                        elapsed, index, len(story.phases), phase.name, phase.caption,
                        options.shown_path, sampler.version,
                    )  # fmt: skip
                    view.update(sampler.sample(), notices, frame)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), TICK)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            tail = sampler.notices()
            if tail:
                last = story.index_at(sampler.elapsed())
                p = story.phases[last]
                frame = Frame(
                    sampler.elapsed(), last, len(story.phases), p.name, p.caption,
                    options.shown_path, sampler.version,
                )  # fmt: skip
                view.update(sampler.sample(), tail, frame)
            view.close(summary(sampler, sampler.elapsed()))
