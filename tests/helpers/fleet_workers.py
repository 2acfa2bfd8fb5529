"""Worker processes for the fleet tests (run with the "spawn" start method): each loads an engine
from the policy text it is given, with short heartbeats, and reports every breaker transition it
sees (guard, to, reason, CLOCK_MONOTONIC time) until told to stop. `kill` them to test expiry."""

from __future__ import annotations

import os
import time
from typing import Any


def watch_worker(
    text: str, beat: tuple[float, float], ready: Any, out: Any, stop: Any, fail: str = ""
) -> None:
    """`fail`: a guard to fail twice once connected (its breaker opens and, for a quorum
    breaker, votes)."""
    import policyengine
    from policyengine._shared import _fleet

    _fleet.HEARTBEAT_EVERY, _fleet.HEARTBEAT_TTL = beat
    engine = policyengine.loads(text, default=False)

    def seen(event: Any) -> None:
        if event.name == "state_change":
            out.put(
                (os.getpid(), event.guard, event.data["to"], event.data["reason"], time.monotonic())
            )

    engine.add_listener(seen)
    deadline = time.monotonic() + 20
    while not engine.status()["state"].get("live_processes"):
        if time.monotonic() > deadline:
            raise RuntimeError("no heartbeat")
        time.sleep(0.01)
    if fail:
        for _ in range(2):
            try:
                engine.guard(fail).call_sync(_boom)
            except Exception:
                pass
    ready.put(os.getpid())
    stop.wait(60)
    engine.close()


def _boom() -> None:
    raise ConnectionError("down")
