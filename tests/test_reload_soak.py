"""Soak: reloads (good and bad edits, alternately) while 50 tasks call guards without pause.

Every good version `v` gives both policies the fallback value `v` and the bulkhead size
`LIMITS[v % 4]`, so a guard that mixed two versions, or a snapshot of the engine holding guards
of two versions, shows. Checked: no call fails because of a reload, no mixed snapshot, a
bulkhead never admits more than it may (and every call inside holds a permit), nothing leaks.
200 reloads run in CI; `-m soak` runs 1,000.

Nothing here depends on how threads are scheduled: the edits are made by a coroutine on the same
loop as the callers, and each edit is awaited until the engine has judged it. With the watcher,
the engine is loaded inside the loop, so detection, debounce and swap happen on the loop (the
read and compile in a worker the loop lends the GIL to, see `_registry.onloop`); with `reload()`,
the coroutine calls it on the loop thread. (A thread driving edits against a busy loop waits for
the GIL at each system call it makes: that is what made this test take minutes.)
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

import policyengine
from policyengine import Engine, Event
from policyengine._config.loader import load_text
from policyengine._runtime.guard import Guard

LIMITS = (2, 5, 3, 4)
TASKS = 50

GOOD = """
[policies.{name}.bulkhead]
max_concurrent = {limit}
max_queue = 100
max_wait = "20s"

[policies.{name}.fallback]
value = {v}
"""

BAD = (  # each breaks the file in a different way
    "[policies.a.bulkhead\nmax_concurrent = 2\n",
    "[policies.a.bulkhead]\nmax_concurrent = 0\n",
    "[policies.a.bulkhead]\nmax_concurent = 2\n",
    "[policies.a.retry]\nretries = 3\n",
)


def good(v: int) -> str:
    return "".join(GOOD.format(name=n, limit=LIMITS[v % 4], v=v) for n in ("a", "b"))


def version_of(g: Guard) -> int:
    """The version a compiled guard belongs to; fails on a guard that mixes two versions."""
    fallback, bulkhead = g.policy.fallback, g.policy.bulkhead
    assert fallback is not None and bulkhead is not None and g.fallback is not None
    v = fallback.value
    assert isinstance(v, int)
    assert bulkhead.max_concurrent == LIMITS[v % 4], "a guard mixes two versions"
    assert g.fallback._value == v, "the compiled fallback is not the policy's"
    return v


class Load:
    """The guarded function: counts calls inside per policy, checks permits on entry."""

    def __init__(self) -> None:
        self.inside = {"a": 0, "b": 0}
        self.peak = {"a": 0, "b": 0}
        self.calls = 0

    async def __call__(self, g: Guard) -> str:
        name = g.name
        bulkhead = g.bulkhead
        assert bulkhead is not None
        self.inside[name] += 1
        self.calls += 1
        try:
            self.peak[name] = max(self.peak[name], self.inside[name])
            assert self.inside[name] <= bulkhead.active, "a call runs without a permit"
            assert bulkhead.active <= max(LIMITS), "the bulkhead over-admitted"
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return "ok"
        finally:
            self.inside[name] -= 1


class Judged:
    """Counts the engine's verdicts on edits (`reload` / `reload_failed`), on the loop."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[Event] = []
        self.changed = asyncio.Event()
        engine.add_listener(self._on)

    def _on(self, event: Event) -> None:
        if event.name in ("reload", "reload_failed"):
            self.seen.append(event)
            self.changed.set()

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(5.0):
            while len(self.seen) < n:
                self.changed.clear()
                await self.changed.wait()


async def drive(engine: Engine, path: Path, reloads: int, via_watcher: bool) -> None:
    """Alternate good and bad edits (atomic saves); wait for each to be judged."""
    judged = Judged(engine)
    tmp = path.with_name("policies.toml.tmp")
    for i in range(reloads):
        v = i // 2 + 1
        text = good(v) if i % 2 == 0 else BAD[v % len(BAD)]
        tmp.write_text(text)
        os.replace(tmp, path)
        if via_watcher:
            await judged.wait(i + 1)
        else:
            assert engine.reload() is (i % 2 == 0)
        last = judged.seen[-1]
        if i % 2 == 0:
            assert (last.name, last.data["version"]) == ("reload", load_text(text).version)
        else:
            assert last.name == "reload_failed"
        for _ in range(1 if via_watcher else 5):
            await asyncio.sleep(0)  # the callers run between edits (a watcher's wait lets them)


async def soak(tmp_path: Path, reloads: int, via_watcher: bool) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(good(0))
    options: dict[str, Any] = {"settle": 0.0, "force_polling": False} if via_watcher else {}
    engine = policyengine.load(path, watch=via_watcher, default=False, **options)
    assert engine.loop is asyncio.get_running_loop()  # loaded inside the loop: bound to it
    if via_watcher:
        assert engine.status()["watch"]["on"] == "loop"
    handles = [engine.guard("a"), engine.guard("b")]
    load = Load()
    failures: list[BaseException] = []
    versions_seen: set[int] = set()
    stop = asyncio.Event()

    async def caller(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            snapshot = engine.guards  # the dict in force, captured once
            va, vb = version_of(snapshot["a"]), version_of(snapshot["b"])
            assert va == vb, "a snapshot holds guards of two versions"
            g = handles[(k + n) % 2].current()  # captured once, used for the whole call
            versions_seen.add(version_of(g))
            try:
                result = await g.call(load, g)
            except Exception as exc:  # pragma: no cover - reported below
                failures.append(exc)
                continue
            assert result == "ok", f"a call fell back ({result!r})"

    tasks = [asyncio.create_task(caller(k)) for k in range(TASKS)]
    started = time.perf_counter()
    try:
        await drive(engine, path, reloads, via_watcher)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        engine.close()
    elapsed = time.perf_counter() - started
    assert [r for r in results if r is not None] == []  # no assertion failed in a caller
    assert failures == []
    status = engine.status()
    assert status["reloads"] == (reloads + 1) // 2
    assert status["failed_reloads"] == reloads // 2
    assert load.calls > reloads and len(versions_seen) > 1
    assert max(load.peak.values()) <= max(LIMITS)
    for h in handles:
        bulkhead = h.current().bulkhead
        assert bulkhead is not None and bulkhead.active == 0 and bulkhead.queued == 0
        assert h.metrics()["in_flight"] == 0
    print(f"{reloads} reloads, {load.calls} calls in {elapsed:.1f}s, peak {load.peak}")


@pytest.mark.parametrize("via_watcher", [True, False], ids=["watcher", "reload"])
@pytest.mark.parametrize("reloads", [200, pytest.param(1000, marks=pytest.mark.soak)])
async def test_reloads_under_load(tmp_path: Path, reloads: int, via_watcher: bool) -> None:
    await soak(tmp_path, reloads, via_watcher)
