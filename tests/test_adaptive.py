"""Adaptive concurrency: each algorithm against a simulated dependency of capacity C (a
deterministic simulation on virtual time, `tests/helpers/adaptive_sim.py`), the window feeding, and
the exactness of the bulkhead whose limit moves under coroutines and threads."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading

import pytest

from policyengine._config.models import BulkheadOptions
from policyengine._patterns.adaptive import (
    AIMD,
    AdaptiveLimit,
    Gradient2,
    Vegas,
    is_drop,
    make_algorithm,
)
from policyengine._patterns.bulkhead import Bulkhead
from policyengine.exceptions import BulkheadFullError, CircuitOpenError
from tests.helpers.adaptive_sim import simulate

PHASE = 8000  # samples per phase
BLOCK = 500  # the limit's mean over each block of samples is what "converged" judges
SETTLE = 3000  # samples after a start or a change of C by which every later block is within 25%


def limiter(name: str, initial: int, max_limit: int = 200) -> AdaptiveLimit:
    algorithm = {
        "gradient2": lambda: Gradient2(initial, 1, max_limit),
        "vegas": lambda: Vegas(initial, 1, max_limit, random.Random(7)),
        "aimd": lambda: AIMD(initial, 1, max_limit, timeout=0.03),
    }[name]()
    return AdaptiveLimit(Bulkhead("db", initial), algorithm)


@pytest.mark.parametrize("name", ["gradient2", "vegas", "aimd"])
def test_converges_and_follows_capacity_halving_and_doubling(name: str) -> None:
    """From the default initial limit 20: C = 60, then 30 (halved), then 60 again (doubled);
    240 callers (4 C) all along. (An initial limit of 10 converges within the same samples.)"""
    phases = [60, 30, 60]
    lim = limiter(name, 20)
    run = simulate(lim, lambda i: phases[min(i // PHASE, 2)], clients=240, samples=3 * PHASE)
    for k, capacity in enumerate(phases):
        limits = run.limits[k * PHASE : (k + 1) * PHASE]
        blocks = [statistics.mean(limits[j : j + BLOCK]) for j in range(SETTLE, PHASE, BLOCK)]
        assert all(0.75 * capacity <= m <= 1.25 * capacity for m in blocks), (capacity, blocks)
    assert run.max_over_limit == 0  # never more admitted than the limit in force


@pytest.mark.parametrize("name", ["gradient2", "vegas", "aimd"])
def test_never_exceeds_max_limit(name: str) -> None:
    lim = limiter(name, 20, max_limit=45)  # capacity 60 would draw it higher
    run = simulate(lim, lambda i: 60, clients=240, samples=PHASE)
    assert max(run.limits) == 45 and run.max_active <= 45
    assert lim.bulkhead.max_concurrent <= 45


def test_an_adaptive_limit_beats_a_fixed_oversized_one_on_latency() -> None:
    fixed = AdaptiveLimit(Bulkhead("db", 240), AIMD(240, 240, 240))  # pinned at 4 C
    adaptive = limiter("gradient2", 20)
    slow = simulate(fixed, lambda i: 60, clients=240, samples=PHASE)
    fast = simulate(adaptive, lambda i: 60, clients=240, samples=PHASE)
    tail = slice(PHASE // 2, PHASE)
    assert statistics.mean(fast.latencies[tail]) < 0.5 * statistics.mean(slow.latencies[tail])
    assert fast.drops < 0.1 * slow.drops


# -- what counts ------------------------------------------------------------------------------


class Status(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def test_what_counts_as_a_drop() -> None:
    assert is_drop("success", None) is False
    assert is_drop("timeout", None) is True
    assert is_drop("failure", CircuitOpenError("dep", 1.0)) is True  # the dependency refused
    assert is_drop("failure", Status(503)) is True and is_drop("failure", Status(429)) is True
    assert is_drop("failure", Status(500)) is None  # a fast failure says nothing of capacity
    assert is_drop("failure", ValueError()) is None
    assert is_drop("rejected", BulkheadFullError("x", 1, 0)) is None  # never ran
    assert is_drop("cancelled", None) is None and is_drop("ignored", None) is None


def test_one_sample_per_window_of_at_least_ten() -> None:
    seen: list[tuple[float, int, bool]] = []

    class Spy(AIMD):
        __slots__ = ()

        def sample(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
            seen.append((rtt, inflight, dropped))
            return super().sample(rtt, inflight, dropped, now)

    bulkhead = Bulkhead("db", 10)
    lim = AdaptiveLimit(bulkhead, Spy(10, 1, 100))
    for i in range(9):
        lim.settle("success", None, 0.01, 1.0 + i * 0.001)
    assert seen == []
    lim.settle("timeout", None, 0.03, 1.01)
    assert seen == [(pytest.approx(0.012), 0, True)]  # the mean rtt, and the drop
    assert bulkhead.max_concurrent == 9  # AIMD: 10 * 0.9
    for _ in range(10):  # calls that started before the change ran under the old limit
        lim.settle("success", None, 0.02, 1.015)
    assert len(seen) == 1


def test_retune_keeps_the_learned_limit_clamped() -> None:
    options = BulkheadOptions(kind="adaptive", algorithm="aimd", initial_limit=10, max_limit=100)
    lim = AdaptiveLimit(Bulkhead("db", 10), make_algorithm(options))
    lim.algorithm.limit = 80.0
    lim.retune(options.model_copy(update={"max_limit": 50}))
    assert lim.limit == 50 and lim.algorithm.limit == 50
    lim.retune(options.model_copy(update={"min_limit": 60, "max_limit": 100, "initial_limit": 60}))
    assert lim.limit == 60


def test_make_algorithm_uses_the_options() -> None:
    for name, kind in (("gradient2", Gradient2), ("vegas", Vegas), ("aimd", AIMD)):
        options = BulkheadOptions(kind="adaptive", algorithm=name, initial_limit=7)  # type: ignore[arg-type]
        algorithm = make_algorithm(options, timeout=0.5)
        assert isinstance(algorithm, kind) and algorithm.limit == 7
    aimd = make_algorithm(BulkheadOptions(kind="adaptive", algorithm="aimd"), timeout=0.5)
    assert isinstance(aimd, AIMD) and aimd.timeout == 0.5


# -- exactness under a moving limit -----------------------------------------------------------


def test_a_shrunk_limit_admits_nobody_until_calls_drop_below_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bulkhead = Bulkhead("db", 8, max_queue=10)
        for _ in range(8):
            assert bulkhead.enter(loop) is None
        bulkhead.set_limit(3)
        waiter = bulkhead.enter(loop)
        assert waiter is not None and not bulkhead.try_acquire()
        for _ in range(5):  # 8 -> 3 running: still not below the limit
            bulkhead.release()
            assert not waiter.done()
        bulkhead.release()  # 2 running: the waiter takes the third slot
        assert waiter.done() and bulkhead.active == 3

    asyncio.run(main())


def test_a_grown_limit_admits_queued_waiters_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bulkhead = Bulkhead("db", 1, max_queue=10)
        assert bulkhead.enter(loop) is None
        waiters = [bulkhead.enter(loop) for _ in range(3)]
        bulkhead.set_limit(3)
        await asyncio.sleep(0)
        assert [w is not None and w.done() for w in waiters] == [True, True, False]
        assert bulkhead.active == 3

    asyncio.run(main())


def test_admissions_never_exceed_the_limit_across_threads_and_coroutines() -> None:
    """4 threads and 20 coroutines share a bulkhead whose limit grows from 1 to 32 while they
    run. After each admission the calls running are at most the limit (it only grows, so the
    limit read then is at least the one the admission was decided under)."""
    bulkhead = Bulkhead("db", 1, max_queue=10_000)
    violations: list[tuple[int, int]] = []
    peak = [0]
    running = [0]
    count = threading.Lock()
    stop = threading.Event()

    def enter() -> None:
        with count:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] > bulkhead.max_concurrent:
                violations.append((running[0], bulkhead.max_concurrent))

    def leave() -> None:
        with count:
            running[0] -= 1

    def thread_worker() -> None:
        while not stop.is_set():
            bulkhead.acquire_sync(None)
            enter()
            leave()
            bulkhead.release()

    async def coroutine_worker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            slot = bulkhead.enter(loop)
            if slot is not None:
                await slot
            enter()
            await asyncio.sleep(0)
            leave()
            bulkhead.release()

    async def main() -> None:
        workers = [asyncio.ensure_future(coroutine_worker()) for _ in range(20)]
        for limit in range(1, 33):
            for _ in range(20):
                await asyncio.sleep(0)
            bulkhead.set_limit(limit)
        for _ in range(50):
            await asyncio.sleep(0)
        stop.set()
        await asyncio.gather(*workers)

    threads = [threading.Thread(target=thread_worker) for _ in range(4)]
    for t in threads:
        t.start()
    asyncio.run(main())
    for t in threads:
        t.join()
    assert violations == []
    assert peak[0] > 16  # the grown limit was used, not just respected
    assert bulkhead.active == 0 and bulkhead.queued == 0
