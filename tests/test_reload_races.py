"""Reloads racing calls, made deterministic: a reload run at every bytecode of a look-up (and a
look-up at every line of the swap) instead of a storm of threads that finds a bug by luck; a
bulkhead kind change under calls still running; reads that raise anything at all."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import policyengine
from policyengine import BulkheadFullError, Engine, Event, UnknownGuardError
from policyengine._config.loader import load_text
from policyengine._registry.engine import Engine as EngineClass
from policyengine._registry.reloads import Reloads
from policyengine.testing import FakeClock
from tests.helpers.polling import LoopThread, wait_until

A = '[policies.a.timeout]\nattempt = "2s"\n'
X = '[policies.x.timeout]\nattempt = "1s"\n'


def _trace_code(code: types.CodeType, per_opcode: bool, action: Callable[[], None]) -> Any:
    """A tracer that runs `action` at every line (or bytecode) executed in `code`."""

    def local(frame: types.FrameType, event: str, arg: object) -> Any:
        if event in ("line", "opcode"):
            action()
        return local

    def tracer(frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code is code:
            frame.f_trace_opcodes = per_opcode
            return local
        return None

    return tracer


@pytest.fixture
def traced() -> Iterator[Callable[[Any], None]]:
    def install(tracer: Any) -> None:
        sys.settrace(tracer)

    yield install
    sys.settrace(None)


def test_a_look_up_during_every_step_of_a_swap_finds_readded_and_removed_policies(
    traced: Callable[[Any], None],
) -> None:
    """The writer's side: `_swap` replaces `_guards` and `_removed` in an order where a policy
    that exists before or after the swap is always found (it used to pop a re-added policy from
    `_removed` before the new guards were in: UnknownGuardError on a live handle)."""
    engine = policyengine.loads(A + X, default=False, clock=FakeClock())
    engine.apply(load_text(A))  # x removed: its handles use the last policy
    x, a = engine.guard("x"), engine.guard("a")
    misses: list[str] = []

    def look() -> None:
        for handle in (x, a):
            try:
                handle.current()
            except UnknownGuardError:
                misses.append(handle.name)

    for text in (A + X, A, X, A + X):  # re-add x, remove it, remove a, re-add a
        traced(_trace_code(Reloads._swap.__code__, False, look))
        engine.apply(load_text(text))
        sys.settrace(None)
    assert misses == []
    assert engine.status()["removed"] == []


def test_reloads_between_any_two_bytecodes_of_a_look_up_never_make_a_live_policy_unknown(
    traced: Callable[[Any], None],
) -> None:
    """The reader's side: `_lookup` reads `_guards`, then `_removed`, then `_guards` again;
    whole reloads may land between any of its bytecodes. For every pair of positions (i, j) in
    a look-up of a removed policy, a reload re-adds it before bytecode i and removes it again
    before bytecode j: whatever lands where, the policy is found (the look-up believes a miss
    only if no commit happened meanwhile)."""
    engine = policyengine.loads(A + X, default=False, clock=FakeClock())
    engine.apply(load_text(A))  # x removed: still found, in `_removed`
    handle = engine.guard("x")
    positions = [0]

    def count() -> None:
        positions[0] += 1

    traced(_trace_code(EngineClass._lookup.__code__, True, count))
    handle.current()
    sys.settrace(None)
    n = positions[0] + 12  # a retried look-up runs longer: cover that too
    landed = 0
    for i in range(n):
        for j in range(i + 1, n + 1):
            step = [0]

            def reload_at(i: int = i, j: int = j, step: list[int] = step) -> None:
                nonlocal landed
                step[0] += 1
                if step[0] in (i, j):
                    engine.apply(load_text(A + X if step[0] == i else A))
                    landed += 1

            traced(_trace_code(EngineClass._lookup.__code__, True, reload_at))
            try:
                guard = handle.current()
            finally:
                sys.settrace(None)
            assert guard.name == "x", (i, j)
            if engine.status()["removed"] != ["x"]:
                engine.apply(load_text(A))
    assert landed > n  # reloads did land inside the look-ups


def test_unknown_guard_message_is_capped_and_names_the_closest() -> None:
    text = "".join(f'[policies.svc{i:03}.timeout]\nattempt = "1s"\n' for i in range(300))
    engine = policyengine.loads(text, default=False)
    with pytest.raises(UnknownGuardError) as info:
        engine.guard("svc0100")
    message = str(info.value)
    assert message.startswith("no policy named 'svc0100'; known policies: svc100")
    assert "and 280 more (engine.names() lists them all)" in message
    assert len(message) < 400 and len(info.value.known) == 300


# --------------------------------------------------------------------- bulkhead kind change
KIND = """
[policies.db.bulkhead]
max_concurrent = 4
max_queue = 0
kind = "{kind}"
"""


def pool_threads(name: str = "db") -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"policyengine-{name}")]


async def test_changing_only_the_bulkhead_kind_keeps_running_calls_counted() -> None:
    engine = policyengine.loads(KIND.format(kind="async"), default=False)
    handle = engine.guard("db")
    release = asyncio.Event()
    entered = 0

    async def hold() -> None:
        nonlocal entered
        entered += 1
        await release.wait()

    holders = [asyncio.create_task(handle.call(hold)) for _ in range(4)]
    while entered < 4:
        await asyncio.sleep(0)
    bulkhead = handle.current().bulkhead
    engine.apply(load_text(KIND.format(kind="threads")))
    assert handle.current().bulkhead is bulkhead and bulkhead is not None
    assert bulkhead.kind == "threads" and bulkhead.active == 4  # the 4 running stay counted
    with pytest.raises(BulkheadFullError):
        await handle.call(lambda: "a fifth call")  # type: ignore[arg-type, return-value]
    with pytest.raises(BulkheadFullError):
        handle.call_sync(lambda: "a fifth call, from a thread")
    release.set()
    await asyncio.gather(*holders)
    assert bulkhead.active == 0
    assert await handle.call(lambda: "now in the pool") == "now in the pool"  # type: ignore[arg-type]
    assert handle.current().threaded  # the new guard runs calls in the pool
    engine.close()


async def test_a_kind_change_away_from_threads_ends_the_pool_once_its_calls_finish() -> None:
    engine = policyengine.loads(KIND.format(kind="threads"), default=False)
    handle = engine.guard("db")
    started, finish = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        finish.wait(10)
        return "finished"

    running = asyncio.ensure_future(handle.call(work))  # type: ignore[arg-type]
    await asyncio.to_thread(started.wait, 10)
    assert pool_threads()
    engine.apply(load_text(KIND.format(kind="async")))
    assert handle.current().bulkhead is not None and handle.current().bulkhead.kind == "async"
    finish.set()
    assert await running == "finished"  # the call that ran in the old pool completes
    await asyncio.to_thread(wait_until, lambda: not pool_threads(), "the old pool's threads")
    for flip in range(20):  # a storm of kind flips leaves no pool behind
        kind = "threads" if flip % 2 == 0 else "async"
        engine.apply(load_text(KIND.format(kind=kind)))
        if kind == "threads":
            assert await handle.call(lambda: 1) == 1  # type: ignore[arg-type]
    await asyncio.to_thread(wait_until, lambda: not pool_threads(), "no pool after the storm")
    engine.close()


# ----------------------------------------------------------- a read may raise anything at all
@pytest.fixture
def exits_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of our own that raises SystemExit when imported."""
    module = "pe_test_exits_at_import"
    (tmp_path / f"{module}.py").write_text("raise SystemExit(3)\n\ndef handler(exc):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


GOOD = '[policies.api.timeout]\nattempt = "{n}s"\n'
NAMES_MODULE = '[policies.api.fallback]\nhandler = "{module}:handler"\n'


def test_a_reload_that_raises_systemexit_is_a_failed_reload(
    tmp_path: Path, exits_at_import: str
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(GOOD.format(n=1))
    engine = policyengine.load(path, default=False)
    events: list[Event] = []
    engine.add_listener(events.append)
    path.write_text(NAMES_MODULE.format(module=exits_at_import))
    assert engine.reload() is False  # SystemExit did not escape
    status = engine.status()
    assert status["last_error"] and "SystemExit" in status["last_error"]
    assert [e.name for e in events] == ["reload_failed"]
    assert engine.guards["api"].policy.timeout is not None  # the last good set stays
    path.write_text(GOOD.format(n=2))
    assert engine.reload() is True and engine.status()["last_error"] is None


@pytest.mark.parametrize("on", ["loop", "thread"])
@pytest.mark.parametrize("raised", ["SystemExit(3)", "KeyboardInterrupt()", "RecursionError()"])
def test_the_watcher_survives_whatever_a_read_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on: str, raised: str
) -> None:
    """A module named by the file raises at import: the watcher (on the loop, or its thread)
    reports it, keeps the last good set, and applies the next good edit."""
    module = f"pe_test_raises_{on}_{raised.split('(')[0].lower()}"
    (tmp_path / f"{module}.py").write_text(f"raise {raised}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "policies.toml"
    path.write_text(GOOD.format(n=1))
    with LoopThread() if on == "loop" else _nothing() as loop:
        engine = policyengine.load(path, default=False)
        if loop is not None:
            engine.bind(loop)
        seen = Seen(engine)
        engine.watch(settle=0.0, poll_interval=0.05)
        assert engine.status()["watch"]["on"] == on
        atomic_write(path, NAMES_MODULE.format(module=module))
        failed = seen.wait("reload_failed")
        assert raised.split("(")[0] in failed.data["error"]
        assert engine.status()["last_error"] and engine.status()["watching"]
        assert engine.guards["api"].policy.timeout is not None
        atomic_write(path, GOOD.format(n=5))
        seen.wait("reload")
        assert engine.status()["version"] == load_text(GOOD.format(n=5)).version
        assert engine.status()["last_error"] is None and engine.status()["watch"]["alive"]
        engine.close()
    sys.modules.pop(module, None)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Seen:
    """Reload events, whichever thread emits them."""

    def __init__(self, engine: Engine) -> None:
        self.items: list[Event] = []
        self.cond = threading.Condition()
        engine.add_listener(self._on)

    def _on(self, event: Event) -> None:
        if event.name in ("reload", "reload_failed"):
            with self.cond:
                self.items.append(event)
                self.cond.notify_all()

    def wait(self, name: str, timeout: float = 10.0) -> Event:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(e.name == name for e in self.items), timeout)
            assert ok, f"no {name}; got {[e.name for e in self.items]}"
            return next(e for e in self.items if e.name == name)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("on", ["loop", "thread"])
@pytest.mark.parametrize(
    "error", [SystemExit(2), KeyboardInterrupt(), MemoryError(), RecursionError("deep")]
)
def test_whatever_the_source_raises_keeps_the_watch_and_the_last_good_set(
    tmp_path: Path, on: str, error: BaseException
) -> None:
    """Below the loader's own checks: the source's read itself raises. The watcher reports it
    (`last_error`, `reload_failed`), keeps the policies, and the next good edit applies."""
    from policyengine._config.source import AdjustedSource, FileSource

    path = tmp_path / "policies.toml"
    path.write_text(GOOD.format(n=1))
    raising = [False]

    def maybe_raise(policy_set: Any) -> Any:
        if raising[0]:
            raise error
        return policy_set

    with LoopThread() if on == "loop" else _nothing() as loop:
        engine = Engine(AdjustedSource(FileSource(path), maybe_raise))
        if loop is not None:
            engine.bind(loop)
        seen = Seen(engine)
        engine.watch(settle=0.0)
        raising[0] = True
        atomic_write(path, GOOD.format(n=2))
        failed = seen.wait("reload_failed")
        assert type(error).__name__ in failed.data["error"]
        assert engine.status()["watch"]["alive"] and engine.status()["last_error"]
        assert engine.status()["version"] == load_text(GOOD.format(n=1)).version
        raising[0] = False
        atomic_write(path, GOOD.format(n=3))
        seen.wait("reload")
        assert engine.status()["version"] == load_text(GOOD.format(n=3)).version
        engine.close()
