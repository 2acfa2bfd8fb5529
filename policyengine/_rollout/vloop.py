"""An asyncio event loop on virtual time, for `simulate`: hours of traffic replayed in seconds.

Why not `FakeClock` alone: a replay has overlapping calls, attempt timeouts and bulkhead waits,
which the guards time with the event loop's timer, and backoff sleeps, which they take on the
engine's clock. Here both are one virtual clock: `loop.time()` only moves when every task is
waiting, and then jumps straight to the next timer. So concurrent calls overlap as recorded, a
timeout fires at its virtual instant, and the real guard code runs unchanged.

The loop does no I/O (its selector only advances time); a replay that waits for something no
timer will ever wake (a thread, a socket) is stuck, and `run` says so instead of hanging.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopClock", "VirtualLoop", "run_virtual"]

T = TypeVar("T")


class _TimeSelector(selectors.BaseSelector):
    """Waiting `timeout` seconds means moving the loop's clock by that much; no I/O."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError(
                "the replay is stuck: every task waits for something no timer will wake"
            )
        loop = self._loop
        if timeout > 0:
            loop._now += timeout
            scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
            if scheduled:  # land on the timer itself, whatever the float rounding did
                loop._now = max(loop._now, scheduled[0].when())
        return []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        raise RuntimeError("a virtual-time loop does no I/O")

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        raise KeyError(fileobj)

    def get_map(self) -> Any:
        return {}

    def close(self) -> None:
        pass


class VirtualLoop(asyncio.base_events.BaseEventLoop):
    """`time()` is virtual and starts at `start`; idle waits jump to the next timer. Start near
    zero (a replay subtracts its first time): floats near 1.7e9 s step by 0.24 us."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._now = float(start)
        self._selector = _TimeSelector(self)
        # a timer due within this is run: far above float rounding at any time a replay uses
        # (it starts near 0: Unix seconds would leave no room below a microsecond)
        self._clock_resolution = 1e-7

    def time(self) -> float:
        return self._now

    def _process_events(self, event_list: Any) -> None:
        pass

    def _write_to_self(self) -> None:
        pass


class LoopClock:
    """The engine's clock on a virtual loop: breaker time and backoff sleeps, virtual too."""

    __slots__ = ("_loop",)

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._loop._now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def sleep_sync(self, seconds: float) -> None:
        self._loop._now += max(0.0, seconds)


def run_virtual(loop: VirtualLoop, main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on `loop`, then close the loop."""
    previous = asyncio.events._get_running_loop()
    if previous is not None:
        raise RuntimeError("run_virtual cannot run inside a running event loop")
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
