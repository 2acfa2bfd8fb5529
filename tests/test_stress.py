"""Stress: many concurrent callers through real guards, on a FakeClock (nothing sleeps for timing).

- 1,000 concurrent callers through a half-open breaker, round after round: exactly K admitted.
- 10,000 tasks through a bulkhead: never over-admitted; cancellation storms leak no permit.
- Threads calling `call_sync` on one guard: exact counts, no over-admission, K probes.

Regression tests for bugs this suite found are at the end, each saying what it guards.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import policyengine
from policyengine import Engine
from policyengine._telemetry.metrics import REJECTION_REASONS
from policyengine.exceptions import BulkheadFullError, CircuitOpenError
from policyengine.testing import FakeClock

MakeEngine = Callable[[str], Engine]


def breaker_policy(k: int, extra: str = "") -> str:
    return (
        "[policies.api.breaker]\nconsecutive_failures = 1\n"
        f'open_duration = "10s"\nhalf_open_calls = {k}\n{extra}'
    )


async def trip(handle: policyengine.GuardHandle, clock: FakeClock) -> None:
    async def down() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        await handle.call(down)
    assert handle.state == "open"
    clock.advance(10)
    assert handle.state == "half_open"


class Wave:
    """`n` concurrent callers; the admitted ones wait on `gate` and then do what `finish` says."""

    def __init__(self, handle: policyengine.GuardHandle, n: int) -> None:
        self.handle = handle
        self.gate = asyncio.Event()
        self.admitted = 0
        self.outcome: Callable[[], Any] = lambda: "ok"
        self.tasks = [asyncio.create_task(handle.call(self.probe)) for _ in range(n)]

    async def probe(self) -> Any:
        self.admitted += 1
        await self.gate.wait()
        return self.outcome()

    async def started(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    def rejected(self) -> list[CircuitOpenError]:
        out = []
        for t in self.tasks:
            if t.done() and not t.cancelled() and isinstance(t.exception(), CircuitOpenError):
                out.append(t.exception())
        return out  # type: ignore[return-value]

    def running(self) -> list[asyncio.Task[Any]]:
        return [t for t in self.tasks if not t.done()]

    async def end(self) -> list[Any]:
        self.gate.set()
        return await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.mark.parametrize("k", [1, 3, 10])
async def test_half_open_admits_exactly_k_of_1000_round_after_round(
    make_engine: MakeEngine, clock: FakeClock, k: int
) -> None:
    """Rounds of 1,000 concurrent callers: K admitted each time, the rest rejected as
    half_open; a cancelled probe lets exactly one more in; a failed probe re-opens."""
    handle = make_engine(breaker_policy(k)).guard("api")
    rng = random.Random(k)
    for round_no in range(6):
        await trip(handle, clock)
        wave = Wave(handle, 1000)
        await wave.started()
        assert wave.admitted == k
        rejected = wave.rejected()
        assert len(rejected) == 1000 - k
        assert {e.state for e in rejected} == {"half_open"}
        # Cancel some probes: each frees exactly one permit for the next wave.
        cancelled = rng.randint(0, k)
        for task in rng.sample(wave.running(), cancelled):
            task.cancel()
        await wave.started()
        more = Wave(handle, 1000)
        await more.started()
        assert more.admitted == cancelled
        assert len(more.rejected()) == 1000 - cancelled
        if round_no % 2:
            wave.outcome = more.outcome = lambda: (_ for _ in ()).throw(ConnectionError())
            await wave.end()
            await more.end()
            assert handle.state == "open"  # a failed probe re-opens
            clock.advance(60)
            assert handle.state == "half_open"
            ok = Wave(handle, 1000)
            await ok.started()
            assert ok.admitted == k
            await ok.end()
        else:
            await wave.end()
            await more.end()
        assert handle.state == "closed"
    m = handle.metrics()
    assert m["in_flight"] == 0
    assert m["calls"] == m["successes"] + m["failures"] + m["ignored"]


async def test_half_open_k_across_threads_and_coroutines_at_once(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    """8 threads (`call_sync`) and 1,000 coroutines (`call`) race for K = 5 probe permits."""
    k = 5
    handle = make_engine(breaker_policy(k)).guard("api")
    await trip(handle, clock)
    release = threading.Event()
    admitted = thread_admitted = 0
    lock = threading.Lock()

    def blocking_probe() -> str:
        nonlocal admitted, thread_admitted
        with lock:
            admitted += 1
            thread_admitted += 1
        release.wait(30)
        return "ok"

    async def async_probe() -> str:
        nonlocal admitted
        with lock:
            admitted += 1
        while not release.is_set():
            await asyncio.sleep(0)
        return "ok"

    go = threading.Barrier(9)
    thread_results: list[object] = []

    def worker() -> None:
        go.wait()
        for _ in range(100):
            try:
                thread_results.append(handle.call_sync(blocking_probe))
                return
            except CircuitOpenError as exc:
                thread_results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    go.wait()
    tasks = [asyncio.create_task(handle.call(async_probe)) for _ in range(1000)]
    # Wait (polling, with a safety limit) until every thread that got no probe permit has used
    # up its 100 tries; admitted threads block on `release`.
    limit = time.monotonic() + 30
    while time.monotonic() < limit:
        finished = sum(not t.is_alive() for t in threads)
        with lock:
            if admitted == k and finished == len(threads) - thread_admitted:
                break
        await asyncio.sleep(0)
    assert admitted == k
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for t in threads:
        t.join(30)
    assert admitted == k
    oks = sum(r == "ok" for r in results) + sum(r == "ok" for r in thread_results)
    assert oks == k
    assert handle.state == "closed"
    m = handle.metrics()
    assert m["successes"] == k
    assert m["in_flight"] == 0
    assert m["calls"] == m["successes"] + m["failures"] + m["ignored"]
    assert m["rejections"]["circuit_open"] == m["ignored"]


# -- bulkheads ---------------------------------------------------------------------------


def bulkhead_policy(limit: int, queue: int, kind: str = "async") -> str:
    return (
        f'[policies.api.bulkhead]\nkind = "{kind}"\nmax_concurrent = {limit}\nmax_queue = {queue}\n'
    )


async def test_ten_thousand_tasks_never_over_admitted(make_engine: MakeEngine) -> None:
    limit = 50
    handle = make_engine(bulkhead_policy(limit, 10_000)).guard("api")
    bulkhead = handle.current().bulkhead
    assert bulkhead is not None
    running = peak = 0
    rng = random.Random(1)

    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        assert running <= limit
        assert bulkhead.active <= limit
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        running -= 1
        return i

    results = await asyncio.gather(*(handle.call(work, i) for i in range(10_000)))
    assert results == list(range(10_000))
    assert peak == limit
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    m = handle.metrics()
    assert (m["calls"], m["successes"], m["in_flight"]) == (10_000, 10_000, 0)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_cancellation_storms_leak_no_permit(make_engine: MakeEngine, seed: int) -> None:
    """Waves of callers; random subsets of waiting and running ones are cancelled again and
    again while others finish. Never over the limit; afterwards nothing is held or queued."""
    limit, queue = 20, 400
    handle = make_engine(bulkhead_policy(limit, queue)).guard("api")
    bulkhead = handle.current().bulkhead
    assert bulkhead is not None
    rng = random.Random(seed)
    running = 0
    gates: dict[int, asyncio.Event] = {}

    async def work(i: int) -> int:
        nonlocal running
        running += 1
        try:
            assert running <= limit and bulkhead.active <= limit
            gate = gates.setdefault(i, asyncio.Event())
            await gate.wait()
            return i
        finally:
            running -= 1

    entered = 0

    async def call(i: int) -> int:
        nonlocal entered
        entered += 1  # a task cancelled before its first step never reaches the guard
        return await handle.call(work, i)

    tasks: dict[int, asyncio.Task[int]] = {}
    n = peak_queued = 0
    for _ in range(40):
        for _ in range(rng.randint(0, 150)):
            tasks[n] = asyncio.create_task(call(n))
            n += 1
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        live = [i for i, t in tasks.items() if not t.done()]
        started = [i for i in live if i in gates]
        waiting = [i for i in live if i not in gates]
        for i in rng.sample(waiting, rng.randint(0, len(waiting))):
            tasks[i].cancel()
        for i in rng.sample(started, rng.randint(0, len(started))):
            if rng.random() < 0.5:
                tasks[i].cancel()
            else:
                gates[i].set()
        assert running <= limit
        assert bulkhead.queued <= queue
        peak_queued = max(peak_queued, bulkhead.queued)
    for _ in range(len(tasks) + 5):  # let everything still queued run and finish
        if all(t.done() for t in tasks.values()):
            break
        for gate in list(gates.values()):
            gate.set()
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    assert all(isinstance(r, int | asyncio.CancelledError | BulkheadFullError) for r in results), {
        type(r) for r in results
    }
    kinds = {type(r).__name__ for r in results}
    assert {"int", "CancelledError"} <= kinds  # the storm did cancel, and calls did finish
    assert peak_queued > 0  # ... while callers were queued
    assert (bulkhead.active, bulkhead.queued, running) == (0, 0, 0)

    async def fresh() -> str:
        return "fresh"

    assert await handle.call(fresh) == "fresh"
    m = handle.metrics()
    assert m["in_flight"] == 0
    assert m["calls"] == entered + 1
    assert m["successes"] == sum(isinstance(r, int) for r in results) + 1
    assert m["calls"] == m["successes"] + m["failures"] + m["ignored"]


async def test_resizes_during_a_storm_leak_no_permit(make_engine: MakeEngine) -> None:
    """Reloads that shrink and grow the bulkhead while callers come, go and get cancelled."""
    engine = make_engine(bulkhead_policy(10, 300))
    handle = engine.guard("api")
    bulkhead = handle.current().bulkhead
    assert bulkhead is not None
    rng = random.Random(7)
    limits = [10]
    gates: dict[int, asyncio.Event] = {}
    running = 0

    async def work(i: int) -> int:
        nonlocal running
        running += 1
        try:
            assert running <= max(limits)
            await gates.setdefault(i, asyncio.Event()).wait()
            return i
        finally:
            running -= 1

    tasks: list[asyncio.Task[int]] = []
    for _ in range(30):
        for _ in range(rng.randint(0, 60)):
            tasks.append(asyncio.create_task(handle.call(work, len(tasks))))
        await asyncio.sleep(0)
        limit = rng.randint(1, 30)
        limits.append(limit)
        engine.apply(policyengine._config.loader.load_text(bulkhead_policy(limit, 300)))
        assert handle.current().bulkhead is bulkhead
        await asyncio.sleep(0)
        for t in rng.sample(tasks, min(len(tasks), rng.randint(0, 20))):
            t.cancel()
        for gate in rng.sample(list(gates.values()), min(len(gates), rng.randint(0, 20))):
            gate.set()
        await asyncio.sleep(0)
    for _ in range(len(tasks) + 5):
        if all(t.done() for t in tasks):
            break
        for gate in list(gates.values()):
            gate.set()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (bulkhead.active, bulkhead.queued, running) == (0, 0, 0)


async def test_threads_bulkhead_cancelled_callers_keep_slots_until_threads_end(
    make_engine: MakeEngine,
) -> None:
    """kind = "threads": a cancelled caller stops waiting, but its thread keeps the slot until
    it really ends, so the pool never runs more than max_concurrent at once."""
    limit = 4
    handle = make_engine(bulkhead_policy(limit, 200, kind="threads")).guard("api")
    bulkhead = handle.current().bulkhead
    assert bulkhead is not None
    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def blocking(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(30)
        with lock:
            running -= 1
        return i

    tasks = [asyncio.create_task(handle.call(blocking, i)) for i in range(100)]  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.sleep(0)
    rng = random.Random(3)
    for t in rng.sample(tasks, 60):
        t.cancel()
    await asyncio.sleep(0)
    assert bulkhead.active <= limit
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    limit_at = time.monotonic() + 30
    while bulkhead.active and time.monotonic() < limit_at:  # cancelled callers' threads
        await asyncio.sleep(0.001)  # may still be finishing: poll, with a safety limit
    assert peak <= limit
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    assert sum(isinstance(r, int) for r in results) == 40

    assert await handle.call(lambda: "fresh") == "fresh"  # type: ignore[arg-type,return-value]


# -- threads: call_sync on one guard -------------------------------------------------------


def test_threads_calling_call_sync_count_exactly(make_engine: MakeEngine) -> None:
    """16 threads x 500 calls through a breaker and a bulkhead: the metrics add up exactly and
    the bulkhead never admits more than its limit."""
    threads_n, calls_n, limit = 16, 500, 4
    handle = make_engine(
        "[policies.api.breaker]\nconsecutive_failures = 100000\n"
        "window_size = 1000\nminimum_calls = 1000\nfailure_rate = 1.0\n"
        f"[policies.api.bulkhead]\nmax_concurrent = {limit}\nmax_queue = {threads_n}\n"
    ).guard("api")
    bulkhead = handle.current().bulkhead
    assert bulkhead is not None
    lock = threading.Lock()
    running = peak = 0
    seen = {"ok": 0, "failed": 0, "other": 0}

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            assert running <= limit
        time.sleep(0)  # let other threads in
        with lock:
            running -= 1
        if i % 7 == 0:
            raise ConnectionError(i)
        return i

    start = threading.Barrier(threads_n)

    def worker(t: int) -> None:
        start.wait()
        for j in range(calls_n):
            i = t * calls_n + j
            try:
                handle.call_sync(work, i)
                key = "ok"
            except ConnectionError:
                key = "failed"
            except Exception:
                key = "other"
            with lock:
                seen[key] += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = threads_n * calls_n
    failed = sum(1 for i in range(total) if i % 7 == 0)
    assert seen == {"ok": total - failed, "failed": failed, "other": 0}
    assert peak <= limit
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    m = handle.metrics()
    assert m["calls"] == total
    assert (m["successes"], m["failures"], m["ignored"]) == (total - failed, failed, 0)
    assert m["in_flight"] == 0
    assert m["rejections"] == dict.fromkeys(REJECTION_REASONS, 0)
    snap = handle.current().breaker.snapshot()  # type: ignore[union-attr]
    assert snap["state"] == "closed"
    assert snap["window_calls"] == 1000


def test_half_open_admits_exactly_k_across_16_threads(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    k, threads_n, tries = 3, 16, 200
    handle = make_engine(
        breaker_policy(k) + "[policies.api.bulkhead]\nmax_concurrent = 8\nmax_queue = 16\n"
    ).guard("api")
    with pytest.raises(ConnectionError):
        handle.call_sync(lambda: (_ for _ in ()).throw(ConnectionError()))
    clock.advance(10)
    release = threading.Event()
    lock = threading.Lock()
    admitted = rejected = 0

    def probe() -> str:
        nonlocal admitted
        with lock:
            admitted += 1
        release.wait(30)
        return "ok"

    start = threading.Barrier(threads_n)
    done = threading.Semaphore(0)

    def worker() -> None:
        nonlocal rejected
        start.wait()
        for _ in range(tries):
            try:
                handle.call_sync(probe)
                break
            except CircuitOpenError:
                with lock:
                    rejected += 1
        done.release()

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for _ in range(threads_n - k):  # every rejected thread used up its tries
        assert done.acquire(timeout=30)
    assert admitted == k
    assert rejected == (threads_n - k) * tries
    release.set()
    for t in threads:
        t.join(30)
    assert handle.state == "closed"
    m = handle.metrics()
    assert m["calls"] == 1 + k + rejected
    assert m["rejections"]["circuit_open"] == rejected
    assert (m["successes"], m["failures"], m["in_flight"]) == (k, 1, 0)


# -- regressions ---------------------------------------------------------------------------


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt (Ctrl-C in a REPL or a notebook) without upsetting pytest."""


@pytest.fixture
def interrupt_main_thread() -> Iterator[Callable[[Callable[[], bool]], threading.Thread]]:
    """Interrupt the main thread (with `Interrupt`) as soon as `ready()` says so."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")

    def handler(signum: int, frame: object) -> None:
        raise Interrupt

    previous = signal.signal(signal.SIGUSR1, handler)

    def start(ready: Callable[[], bool]) -> threading.Thread:
        def run() -> None:
            deadline = time.monotonic() + 10
            while not ready() and time.monotonic() < deadline:
                time.sleep(0.001)  # polling for the main thread to block, not timing
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    yield start
    signal.signal(signal.SIGUSR1, previous)


def test_an_interrupt_while_queued_in_call_sync_leaks_nothing(
    make_engine: MakeEngine,
    clock: FakeClock,
    interrupt_main_thread: Callable[[Callable[[], bool]], threading.Thread],
) -> None:
    handle = make_engine(
        breaker_policy(2) + "[policies.api.bulkhead]\nmax_concurrent = 1\nmax_queue = 1\n"
    ).guard("api")
    with pytest.raises(ConnectionError):
        handle.call_sync(lambda: (_ for _ in ()).throw(ConnectionError()))
    clock.advance(10)  # half-open, two probes
    guard = handle.current()
    bulkhead, breaker = guard.bulkhead, guard.breaker
    assert bulkhead is not None and breaker is not None
    hold, holding = threading.Event(), threading.Event()

    def hold_slot() -> None:
        holding.set()
        hold.wait(30)

    holder = threading.Thread(target=handle.call_sync, args=(hold_slot,), daemon=True)
    holder.start()
    assert holding.wait(30)
    interrupt_main_thread(lambda: bulkhead.queued == 1)
    with pytest.raises(Interrupt):
        handle.call_sync(lambda: "never runs")
    hold.set()
    holder.join(30)
    assert (bulkhead.active, bulkhead.queued) == (0, 0)
    assert breaker.snapshot()["probes_in_flight"] == 0
    assert handle.call_sync(lambda: "ok") == "ok"
    assert handle.state == "closed"


async def test_a_threads_guard_keeps_working_after_close_and_leaks_no_slot(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(bulkhead_policy(2, 0, kind="threads"))
    handle = engine.guard("api")
    bulkhead = handle.current().bulkhead
    assert bulkhead is not None
    engine.close()  # "stops watching": the guards are still there, and so is a pool
    for _ in range(3):
        assert await handle.call(lambda: "x") == "x"  # type: ignore[arg-type,return-value]
    assert bulkhead.active == 0
    bulkhead.close()
    bulkhead._pool = _BrokenPool()  # a pool that refuses work: the slot still comes back
    with pytest.raises(RuntimeError):
        await handle.call(lambda: "x")  # type: ignore[arg-type,return-value]
    assert bulkhead.active == 0


class _BrokenPool:
    def submit(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    def shutdown(self, *args: object, **kwargs: object) -> None:
        pass
