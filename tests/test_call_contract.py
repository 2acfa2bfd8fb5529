"""What a guarded call does with what it is given, and the numbers it reports (issue 14).

Each test pins a flaw a user met: a plain function retried five times, a coroutine returned
un-awaited, a thread-pool attempt that ran past its timeout, the total deadline reported as a
full bulkhead, ignored errors read as failures, queued callers counted as running.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable

import pytest

from policyengine import Engine, Event, GuardTimeoutError
from policyengine.testing import FakeClock

MakeEngine = Callable[[str], Engine]

RETRYING = """
[policies.api.retry]
max_attempts = 5
backoff = "constant"
initial_delay = "10ms"
jitter = "none"

[policies.api.breaker]
consecutive_failures = 2
"""


async def test_call_given_a_plain_function_returning_none_runs_it_once(
    make_engine: MakeEngine,
) -> None:
    """Two calls sent five e-mails each: `await None` raised TypeError, which was retried."""
    g = make_engine(RETRYING).guard("api")
    sent: list[int] = []

    def send_mail() -> None:
        sent.append(1)

    for _ in range(2):
        with pytest.raises(TypeError, match="call_sync"):
            await g.call(send_mail)  # type: ignore[arg-type]
    assert sent == [1, 1]
    m = g.metrics()
    assert (m["failures"], m["retries"], m["state"]) == (0, 0, "closed")


def test_call_sync_given_a_coroutine_function_refuses_it(make_engine: MakeEngine) -> None:
    g = make_engine(RETRYING).guard("api")

    async def fetch() -> str:
        return "never"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would be an error
        for _ in range(3):
            with pytest.raises(TypeError, match="coroutine"):
                g.call_sync(fetch)
        gc.collect()
    m = g.metrics()
    assert (m["successes"], m["failures"], m["retries"], m["state"]) == (0, 0, 0, "closed")


def test_decorating_generators_is_refused_at_decoration(make_engine: MakeEngine) -> None:
    g = make_engine(RETRYING).guard("api")

    async def stream() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        g(stream)


async def test_an_object_with_async_call_is_guarded_as_async(make_engine: MakeEngine) -> None:
    g = make_engine('[policies.api.timeout]\nattempt = "20ms"\n').guard("api")

    class Client:
        async def __call__(self) -> str:
            await asyncio.Event().wait()  # hangs: only the guard's timeout ends it
            return "never"

    guarded = g(Client())
    with pytest.raises(GuardTimeoutError):
        await guarded()
    assert g.metrics()["timeouts"] == 1


def test_a_decorated_def_returning_a_coroutine_is_refused(make_engine: MakeEngine) -> None:
    g = make_engine(RETRYING).guard("api")

    async def work() -> int:
        return 1

    @g
    def sneaky() -> object:
        return work()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="coroutine"):
            sneaky()


def test_the_decorator_keeps_defaults(make_engine: MakeEngine) -> None:
    g = make_engine(RETRYING).guard("api")

    def fetch(url: str, retries: int = 3, *, verbose: bool = False) -> str:
        return url

    guarded = g(fetch)
    assert guarded.__defaults__ == (3,)
    assert guarded.__kwdefaults__ == {"verbose": False}
    assert guarded("x") == "x"


THREADS = """
[policies.blocking.timeout]
attempt = "50ms"

[policies.blocking.bulkhead]
kind = "threads"
max_concurrent = 2
"""


def test_call_sync_on_a_threads_policy_stops_waiting_at_the_attempt_timeout(
    make_engine: MakeEngine,
) -> None:
    """Before, a 1.5 s call with a 200 ms attempt timeout succeeded (and counted a timeout)."""
    g = make_engine(THREADS).guard("blocking")
    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(GuardTimeoutError) as info:
        g.call_sync(release.wait, 30)
    waited = time.monotonic() - t0
    assert info.value.kind == "attempt"
    assert waited < 5  # not the 30 s the function would have taken
    m = g.metrics()
    assert (m["timeouts"], m["failures"], m["successes"]) == (1, 1, 0)
    assert m["in_flight"] == 1  # the thread still runs and keeps its slot
    release.set()


QUEUE = """
[policies.db.timeout]
total = "100ms"

[policies.db.bulkhead]
max_concurrent = 1
max_queue = 1
max_wait = "10s"

[policies.db.fallback]
value = "cached"
on = ["timeout"]
"""


def test_the_total_deadline_in_the_bulkhead_queue_is_a_timeout_in_call_sync(
    make_engine: MakeEngine,
) -> None:
    """call() raised GuardTimeoutError here, call_sync BulkheadFullError: a `timeout`
    fallback served only async callers."""
    g = make_engine(QUEUE).guard("db")
    holding, release = threading.Event(), threading.Event()

    def hold() -> str:
        holding.set()
        release.wait(30)
        return "held"

    holder = threading.Thread(target=g.call_sync, args=(hold,))
    holder.start()
    assert holding.wait(30)
    try:
        assert g.call_sync(lambda: "fresh") == "cached"
        m = g.metrics()
        assert (m["timeouts"], m["fallbacks"], m["rejections"]["bulkhead_full"]) == (1, 1, 0)
    finally:
        release.set()
        holder.join()


def test_a_call_sync_attempt_overrunning_the_total_counts_as_a_timeout(
    make_engine: MakeEngine,
) -> None:
    g = make_engine('[policies.slow.timeout]\ntotal = "20ms"\n').guard("slow")
    assert g.call_sync(time.sleep, 0.05) is None  # it cannot be stopped; its outcome stands
    assert g.metrics()["timeouts"] == 1


IGNORING = """
[policies.cards.breaker]
consecutive_failures = 3
ignore = ["LookupError"]
"""


async def test_errors_the_breaker_ignores_are_ignored_in_the_metrics(
    make_engine: MakeEngine,
) -> None:
    """Ten business declines read failure_rate 1.0 while the breaker counted none."""
    g = make_engine(IGNORING).guard("cards")

    async def decline() -> None:
        raise KeyError("card declined")

    for _ in range(10):
        with pytest.raises(KeyError):
            await g.call(decline)
        with pytest.raises(KeyError):
            g.call_sync(lambda: {}["declined"])
    m = g.metrics()
    assert (m["failures"], m["ignored"], m["failure_rate"], m["state"]) == (0, 20, 0.0, "closed")


BULKHEAD = """
[policies.api.bulkhead]
max_concurrent = 2
max_queue = 10
"""


async def test_in_flight_counts_calls_holding_a_slot_and_queued_the_waiting(
    make_engine: MakeEngine,
) -> None:
    g = make_engine(BULKHEAD).guard("api")
    gate = asyncio.Event()
    tasks = [asyncio.create_task(g.call(gate.wait)) for _ in range(7)]
    for _ in range(5):
        await asyncio.sleep(0)
    m = g.metrics()
    assert (m["in_flight"], m["queued"], m["inside"]) == (2, 5, 7)
    gate.set()
    await asyncio.gather(*tasks)
    m = g.metrics()
    assert (m["in_flight"], m["queued"], m["inside"]) == (0, 0, 0)


async def test_remove_listener_removes_a_bound_method(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = make_engine('[policies.api.breaker]\nconsecutive_failures = 1\nopen_duration = "1s"\n')
    events: list[Event] = []
    engine.add_listener(events.append)
    engine.remove_listener(events.append)  # a new bound method object, equal to the first

    async def fail() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        await engine.guard("api").call(fail)
    assert engine.guard("api").state == "open"
    assert events == []
