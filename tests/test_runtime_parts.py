"""Unit tests of the guarded call's parts on their own: the bulkhead, the deadline queue, the
listeners and the typed events. The end-to-end tests go through all of them at once; these say
which part broke."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from policyengine import BulkheadFullError, Event
from policyengine._patterns.bulkhead import Bulkhead
from policyengine._runtime.timeout import Deadline, DeadlineQueue
from policyengine._telemetry.events import (
    EVENT_NAMES,
    Listeners,
    Rejected,
    RetryScheduled,
    TimedOut,
    log_listener,
)

# -- bulkhead --------------------------------------------------------------------------------


async def test_bulkhead_hands_a_released_slot_to_the_oldest_waiter() -> None:
    bulkhead = Bulkhead("db", max_concurrent=1, max_queue=3)
    loop = asyncio.get_running_loop()
    assert bulkhead.enter(loop) is None  # the free slot
    waiters = [bulkhead.enter(loop) for _ in range(3)]
    assert all(w is not None for w in waiters)
    with pytest.raises(BulkheadFullError):
        bulkhead.enter(loop)  # the queue is full
    order = []
    for _ in range(3):
        bulkhead.release()
        await asyncio.sleep(0)
        order.append([w.done() for w in waiters if w is not None])
    assert order == [[True, False, False], [True, True, False], [True, True, True]]
    assert (bulkhead.active, bulkhead.queued) == (1, 0)  # the last waiter holds the slot
    bulkhead.release()
    assert bulkhead.active == 0


async def test_a_waiter_leaving_after_its_grant_passes_the_slot_on() -> None:
    bulkhead = Bulkhead("db", max_concurrent=1, max_queue=2)
    loop = asyncio.get_running_loop()
    assert bulkhead.enter(loop) is None
    first, second = bulkhead.enter(loop), bulkhead.enter(loop)
    assert first is not None and second is not None
    bulkhead.release()  # granted to `first` ...
    bulkhead.leave_queue(first)  # ... which was cancelled in that very moment
    await asyncio.sleep(0)
    assert second.done()
    assert (bulkhead.active, bulkhead.queued) == (1, 0)


async def test_raising_the_limit_wakes_waiters_and_lowering_it_keeps_held_slots() -> None:
    bulkhead = Bulkhead("db", max_concurrent=1, max_queue=5)
    loop = asyncio.get_running_loop()
    assert bulkhead.enter(loop) is None
    waiters = [bulkhead.enter(loop) for _ in range(3)]
    bulkhead.resize(3, 5, None)
    await asyncio.sleep(0)
    assert [w.done() for w in waiters if w is not None] == [True, True, False]
    bulkhead.resize(1, 5, None)
    assert bulkhead.active == 3  # held permits stay counted
    for _ in range(3):
        bulkhead.release()
    await asyncio.sleep(0)
    assert bulkhead.active == 1  # the last waiter got the only slot left


def test_threads_and_the_limit() -> None:
    bulkhead = Bulkhead("db", max_concurrent=2, max_queue=10)
    running, peak = 0, 0
    lock = threading.Lock()
    gate = threading.Barrier(2)

    def work() -> None:
        nonlocal running, peak
        bulkhead.acquire_sync(None)
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            gate.wait(timeout=0.5)
        except threading.BrokenBarrierError:
            pass
        with lock:
            running -= 1
        bulkhead.release()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


# -- deadline queue --------------------------------------------------------------------------


async def test_one_timer_serves_deadlines_in_order() -> None:
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue(loop)
    started = asyncio.Event()

    async def sleeper() -> None:
        started.set()
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(sleeper()) for _ in range(3)]
    await started.wait()
    now = loop.time()
    deadlines = [queue.add(t, now + 0.01 * (i + 1)) for i, t in enumerate(tasks)]
    assert len(queue) == 3  # one FIFO, one loop timer
    deadlines[1].disarm()  # the middle attempt finished in time
    await asyncio.wait([tasks[0], tasks[2]])
    assert tasks[0].cancelled() and tasks[2].cancelled()
    assert not tasks[1].done()  # its deadline was dropped, not fired
    assert deadlines[0].fired and not deadlines[1].fired and deadlines[2].fired
    tasks[1].cancel()


async def test_an_earlier_deadline_than_the_newest_gets_its_own_timer() -> None:
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue(loop)
    task = asyncio.create_task(asyncio.sleep(3600))
    late = queue.add(task, loop.time() + 3600)
    early = queue.add(task, loop.time() + 0.001)
    assert len(queue) == 1  # `early` did not join the sorted FIFO
    with pytest.raises(asyncio.CancelledError):
        await task
    assert early.fired and early.expired()
    late.disarm()


async def test_an_outer_cancel_is_not_taken_for_our_deadline() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    deadline = Deadline.at(loop, task, loop.time() + 3600)
    task.cancel()  # somebody else's cancellation
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadline.expired()


# -- listeners and events --------------------------------------------------------------------


def test_a_failing_listener_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listeners = Listeners()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    listeners.add(broken)
    listeners.add(seen.append)
    assert listeners.hot
    with caplog.at_level(logging.ERROR, logger="policyengine"):
        listeners(Event("reload", "*", {"version": "v1"}))
    assert [e.name for e in seen] == ["reload"]
    assert "listener" in caplog.text and "failed" in caplog.text


def test_only_the_log_listener_means_not_hot() -> None:
    listeners = Listeners()
    assert not listeners.hot
    listeners.add(print)
    listeners.remove(print)
    assert not listeners.hot
    listeners.remove(log_listener)
    assert not listeners.hot


def test_held_events_are_handed_back_in_order() -> None:
    listeners = Listeners()
    seen: list[Event] = []
    listeners.add(seen.append)
    listeners.hold()
    listeners(Event("state_change", "api", {"to": "open"}))
    listeners(Event("state_change", "api", {"to": "half_open"}))
    assert seen == []
    held = listeners.release()
    assert [e.data["to"] for e in held] == ["open", "half_open"]


def test_typed_payloads_round_trip_through_the_event() -> None:
    for payload in (Rejected("circuit_open"), RetryScheduled(2, 0.25, "ConnectionError")):
        event = Event.of("api", payload)
        assert event.name in EVENT_NAMES
        assert event.detail == payload
    event = Event.of("api", TimedOut("attempt", 1))
    assert event.data == {"kind": "attempt", "attempt": 1}  # what the log listener reads
    assert Event("reload", "*", {"version": "v1"}).detail is None
