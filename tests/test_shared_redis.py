"""Shared breaker state on a real redis-server (started here on a free loopback port).

Without the `redis-server` binary these tests skip, saying so; CI installs it (`.ci/run`).
Cross-process propagation is awaited by polling with deadlines, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import policyengine
from policyengine import CircuitOpenError, Engine
from policyengine._config.loader import load_text

redis = pytest.importorskip("redis", reason="redis-py is not installed: pip install '.[redis]'")
from tests.helpers.polling import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer, policies, probe_worker, trip_worker  # noqa: E402

pytestmark = pytest.mark.redis

TIMEOUT = 0.05  # the [state] timeout in `policies()`


def _server(tmp: Path) -> RedisServer:
    server = RedisServer.start_new(tmp)
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI runs these")
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = _server(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, to stop, hang and restart."""
    srv = _server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(url: str, prefix: str, breaker: str, **kw: str) -> Engine:
        engine = policyengine.loads(policies(url, prefix, breaker, **kw), default=False)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    wait_until(predicate, what or repr(predicate), timeout)


def status(engine: Engine) -> dict[str, Any]:
    result: dict[str, Any] = engine._state_backend.status()
    return result


def connected(*engines: Engine) -> None:
    for engine in engines:
        wait_for(lambda e=engine: status(e)["connected"], what="the backend to connect")


def boom() -> None:
    raise ConnectionError("down")


def fail(engine: Engine, n: int = 1) -> None:
    for _ in range(n):
        with pytest.raises((ConnectionError, CircuitOpenError)):
            engine.guard("svc").call_sync(boom)


def ok(engine: Engine, n: int = 1) -> None:
    for _ in range(n):
        engine.guard("svc").call_sync(lambda: None)


def snapshot(engine: Engine) -> dict[str, object]:
    breaker = engine.guards["svc"].breaker
    assert breaker is not None
    return breaker.snapshot()


def confirmed(engine: Engine, state: str = "open") -> None:
    """A local trip is immediate; wait until the store's reply has confirmed it."""
    wait_for(lambda: snapshot(engine)["store_state"] == state, 2, f"the store to say {state}")


async def as_probe(engine: Engine, fn: Callable[[], Any], within: float = 3.0) -> Any:
    """Call `fn` once it is admitted as a probe. On the event loop no lease round trip is waited
    for: the calls before the lease is fetched are refused with retry_after = one round trip."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await engine.guard("svc").call(fn)
        except CircuitOpenError as exc:
            assert time.monotonic() < deadline, "no probe lease came"
            assert 0 < exc.retry_after <= 3600
            await asyncio.sleep(min(exc.retry_after, 0.01))


# -- without a server ------------------------------------------------------------------------


def test_redis_backend_without_redis_py_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"policyengine\[redis\]"):
        policyengine.loads(policies("redis://127.0.0.1:1/0", "x", ""), default=False)


def test_store_down_at_construction_falls_back_to_the_local_breaker(
    engines: Callable[..., Engine],
) -> None:
    url = "redis://127.0.0.1:1/0"  # nothing listens there
    t0 = time.perf_counter()
    engine = engines(url, prefix(), "consecutive_failures = 3")
    assert time.perf_counter() - t0 < 1.0
    ok(engine, 5)
    wait_for(lambda: status(engine)["degraded"], what="degraded")
    fail(engine, 3)
    assert engine.guard("svc").state == "open"  # still protected, by this process alone
    assert snapshot(engine)["degraded"] is True
    assert status(engine)["connected"] is False


def test_only_shared_breakers_use_the_store() -> None:
    from policyengine._patterns.breaker import Breaker
    from policyengine._shared._shared_breaker import SharedBreaker

    text = policies("redis://127.0.0.1:1/0", prefix(), "").replace("shared = true", "")
    engine = policyengine.loads(text, default=False)
    breaker = engine.guards["svc"].breaker
    assert type(breaker) is Breaker
    assert not engine._state_backend._thread.is_alive()  # no shared breaker: no thread, no I/O
    engine.apply(load_text(policies("redis://127.0.0.1:1/0", "x", "")))
    assert isinstance(engine.guards["svc"].breaker, SharedBreaker)
    engine.close()


# -- one process, several engines (each has its own connection, loop and cache) -------------------


def test_outcomes_are_counted_across_the_fleet(server: RedisServer, engines: Any) -> None:
    p = prefix()
    a, b = engines(server.url, p, "consecutive_failures = 5"), engines(server.url, p, "")
    connected(a, b)

    def landed(engine: Engine, consecutive: int) -> None:
        wait_for(lambda: snapshot(engine)["store_consecutive_failures"] == consecutive, 2)

    fail(a, 2)
    landed(a, 2)
    fail(b, 2)
    landed(b, 4)
    ok(a)  # breaks the run
    landed(a, 0)
    fail(b, 2)
    landed(b, 2)
    assert a.guard("svc").state == b.guard("svc").state == "closed"
    fail(a, 3)  # 2 + 3 in a row across both processes
    wait_for(lambda: b.guard("svc").state == "open", 2, "b to see the trip")
    wait_for(lambda: a.guard("svc").state == "open", 2, "a to see the trip")
    with pytest.raises(CircuitOpenError):
        ok(b)


def test_a_new_process_does_not_reset_the_shared_counts(server: RedisServer, engines: Any) -> None:
    p = prefix()
    a = engines(server.url, p, "consecutive_failures = 4")
    connected(a)
    fail(a, 3)
    wait_for(lambda: snapshot(a)["store_consecutive_failures"] == 3, what="the batch")
    late = engines(server.url, p, "consecutive_failures = 4")
    connected(late)
    fail(late, 1)
    wait_for(lambda: a.guard("svc").state == "open", 2, "the trip")


def test_failure_rate_is_judged_on_the_fleet_window(server: RedisServer, engines: Any) -> None:
    p = prefix()
    rule = "failure_rate = 0.5\nminimum_calls = 20\nwindow_size = 100"
    a, b = engines(server.url, p, rule), engines(server.url, p, rule)
    connected(a, b)
    ok(a, 6)
    fail(a, 5)
    ok(b, 4)
    fail(b, 4)  # 19 calls: below minimum_calls in both processes and in the fleet
    calls = lambda e: snapshot(e)["store_window_calls"]  # noqa: E731
    wait_for(lambda: 19 in (calls(a), calls(b)), what="the batches")  # the last to report
    assert a.guard("svc").state == "closed"
    fail(b, 1)  # 20 calls, 10 failures: 50%
    wait_for(lambda: a.guard("svc").state == "open", 2, "the trip")


def test_keys_names_ttl_and_prefixes(server: RedisServer, engines: Any) -> None:
    p = prefix()
    a = engines(server.url, p, 'consecutive_failures = 1\nopen_duration = "1h"')
    other = engines(server.url, p + ":breaker:svc", "consecutive_failures = 1")
    connected(a, other)
    fail(a)
    wait_for(lambda: a.guard("svc").state == "open", 2, "the trip")
    confirmed(a)
    assert server.command("HGET", f"{p}:breaker:svc", "st").endswith(b"open\r\n")
    ttl = int(server.command("PTTL", f"{p}:breaker:svc")[1:].split(b"\r\n")[0])
    assert ttl > 3_600_000  # an open key outlives its open period
    assert other.guard("svc").state == "closed"  # a prefix that looks like a key: no collision
    assert status(a)["shared_breakers"] == ["svc"]


def test_forced_state_is_published_and_removed(server: RedisServer, engines: Any) -> None:
    p = prefix()
    a, b = engines(server.url, p, ""), engines(server.url, p, "")
    connected(a, b)
    a.apply(load_text(policies(server.url, p, 'force = "open"')))
    wait_for(lambda: b.guard("svc").state == "forced_open", 2, "the forced state")
    with pytest.raises(CircuitOpenError):
        ok(b)
    a.apply(load_text(policies(server.url, p, "")))
    wait_for(lambda: b.guard("svc").state == "closed", 2, "force removed")
    ok(b)


def test_script_flush_falls_back_to_eval_without_errors(server: RedisServer, engines: Any) -> None:
    p = prefix()
    a = engines(server.url, p, "consecutive_failures = 2")
    connected(a)
    assert server.command("SCRIPT", "FLUSH").startswith(b"+OK")
    fail(a, 2)
    wait_for(lambda: a.guard("svc").state == "open", 2, "the trip")
    assert status(a)["errors"] == 0


async def test_a_cancelled_probe_returns_its_lease(server: RedisServer, engines: Any) -> None:
    p = prefix()
    rule = 'consecutive_failures = 1\nopen_duration = "200ms"\nhalf_open_max_wait = "10s"'
    a, b = engines(server.url, p, rule), engines(server.url, p, rule)
    connected(a, b)
    fail(a)
    for engine in (a, b):
        wait_for(lambda e=engine: e.guard("svc").state == "half_open", 3, "half-open")
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(60)

    probe = asyncio.create_task(as_probe(a, hang))
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(CircuitOpenError):  # the one lease is held by a
        await b.guard("svc").call(asyncio.sleep, 0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    deadline = time.monotonic() + 3
    while True:  # the lease comes back (b re-asks after its short denial cache)
        try:
            await b.guard("svc").call(asyncio.sleep, 0)
            break
        except CircuitOpenError:
            assert time.monotonic() < deadline, "the cancelled probe kept its lease"
            await asyncio.sleep(0.01)
    wait_for(lambda: a.guard("svc").state == "closed", 2, "closed after b's probe")


async def test_the_lease_of_a_crashed_process_expires(server: RedisServer, engines: Any) -> None:
    p = prefix()
    rule = 'consecutive_failures = 1\nopen_duration = "300ms"'  # leases last open_duration
    a, b = engines(server.url, p, rule), engines(server.url, p, rule)
    connected(a, b)
    fail(a)
    for engine in (a, b):
        wait_for(lambda e=engine: e.guard("svc").state == "half_open", 3, "half-open")
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(60)

    probe = asyncio.create_task(as_probe(a, hang))
    await asyncio.wait_for(started.wait(), 5)
    a.close()  # "crashed": its lease is never returned
    t0 = time.monotonic()
    while True:
        try:
            await b.guard("svc").call(asyncio.sleep, 0)
            break
        except CircuitOpenError:
            assert time.monotonic() - t0 < 3, "the lease never expired"
            await asyncio.sleep(0.01)
    assert time.monotonic() - t0 >= 0.2  # not before the lease's time
    wait_for(lambda: b.guard("svc").state == "closed", 2, "closed by b's probe")
    probe.cancel()


# -- issue 14: no calls let through while the store is asked, no loop blocked -------------------


@pytest.mark.parametrize("how", ["async", "threads"])
def test_a_shared_breaker_trips_at_once_on_its_own_counts(
    server: RedisServer, engines: Any, how: str
) -> None:
    """Regression: the trip waited for the store's reply, and 1,188 (async) to 3,128 (threads)
    calls went through first. Now the local counts trip at once and the store confirms."""
    p = prefix()
    rule = 'consecutive_failures = 3\nopen_duration = "30s"'
    a, b = engines(server.url, p, rule), engines(server.url, p, rule)
    connected(a, b)
    admitted = 0
    lock = threading.Lock()

    def failing() -> None:
        nonlocal admitted
        with lock:
            admitted += 1
        raise ConnectionError("down")

    rejected = threading.Event()

    def hammer() -> None:
        while not rejected.is_set():
            try:
                a.guard("svc").call_sync(failing)
            except CircuitOpenError:
                rejected.set()
            except ConnectionError:
                pass

    if how == "async":

        async def one() -> None:
            while not rejected.is_set():
                try:
                    await a.guard("svc").call(asyncio.to_thread, failing)
                except CircuitOpenError:
                    rejected.set()
                except ConnectionError:
                    pass

        async def many() -> None:
            await asyncio.gather(*(one() for _ in range(8)))

        asyncio.run(many())
        assert admitted <= 3 + 7  # at most the calls already in flight at the third failure
    else:
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert admitted <= 3 + 3
    assert admitted >= 3
    assert a.guard("svc").state == "open"
    confirmed(a)  # the store agrees: the fleet's counts hold the same run
    wait_for(lambda: b.guard("svc").state == "open", 2, "b to see the trip")
    assert not snapshot(a)["trip_unconfirmed"]


def test_a_local_trip_the_fleet_does_not_confirm_is_undone(
    server: RedisServer, engines: Any
) -> None:
    p = prefix()
    rule = "failure_rate = 0.5\nminimum_calls = 4\nwindow_size = 100"
    a, b = engines(server.url, p, rule), engines(server.url, p, rule)
    connected(a, b)
    seen: list[policyengine.Event] = []
    a.add_listener(lambda e: seen.append(e) if e.name == "state_change" else None)
    ok(b, 30)
    wait_for(lambda: snapshot(b)["store_window_calls"] == 30, what="b's batch")
    fail(a, 4)  # 4 of 4 here: a trips at once; the fleet has 4 of 34
    confirmed(a, "closed")
    wait_for(lambda: a.guard("svc").state == "closed", 2, "the trip undone")
    assert [(e.data["to"], e.data["reason"]) for e in seen] == [
        ("open", "failure_rate"),
        ("closed", "trip_not_confirmed"),
    ]
    assert b.guard("svc").state == "closed"
    ok(a)


async def test_a_probe_lease_never_blocks_the_event_loop(
    own_server: RedisServer, engines: Any
) -> None:
    """Regression: the half-open probe waited for its lease on the loop thread, for up to the
    [state] timeout (2 s here). Now the call is refused at once (retry_after: one round trip)
    while the lease is fetched in the background; a worker thread may still wait for it."""
    p = prefix()
    rule = 'consecutive_failures = 1\nopen_duration = "200ms"'
    text = policies(own_server.url, p, rule).replace('timeout = "50ms"', 'timeout = "2s"')
    a = policyengine.loads(text, default=False)
    try:
        connected(a)
        fail(a)
        wait_for(lambda: a.guard("svc").state == "half_open", 3, "half-open")
        own_server.pause()
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            for _ in range(30):
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        with pytest.raises(CircuitOpenError) as info:
            await a.guard("svc").call(asyncio.sleep, 0)
        assert time.perf_counter() - t0 < 0.05
        assert 0 < info.value.retry_after <= 2.0
        await tick
        assert max(gaps) < 0.1  # the loop kept running
    finally:
        own_server.resume()
        a.close()
    # (with the store back, the lease comes and the next call probes: see as_probe's tests)


# -- several processes ---------------------------------------------------------------------------


def _spawn(target: Any, args_of: Callable[[int], tuple[Any, ...]], n: int) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args_of(i), daemon=True) for i in range(n)]
    for proc in procs:
        proc.start()
    return procs


def _collect(out: Any, n: int, procs: list[Any]) -> list[dict[str, Any]]:
    try:
        return [out.get(timeout=30) for _ in range(n)]
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


@pytest.mark.parametrize("processes", [2, 4])
def test_a_trip_in_one_process_reaches_the_others(server: RedisServer, processes: int) -> None:
    text = policies(server.url, prefix(), 'consecutive_failures = 5\nopen_duration = "30s"')
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    roles = ["trip"] + ["watch"] * (processes - 1)
    procs = _spawn(trip_worker, lambda i: (text, roles[i], ready, go, out), processes)
    for _ in procs:
        ready.get(timeout=30)
    go.set()
    results = _collect(out, processes, procs)
    tripped = next(r for r in results if r["role"] == "trip")
    assert tripped["state"] == "open"
    for watcher in (r for r in results if r["role"] == "watch"):
        assert watcher["seen_at"] is not None, "a process never saw the trip"
        assert watcher["seen_at"] - tripped["tripped_at"] < 0.5
        assert watcher["rejected"] and watcher["state"] == "open"


def test_four_processes_of_fifty_coroutines_get_exactly_k_probes(
    server: RedisServer, engines: Any
) -> None:
    p, k = prefix(), 3
    rule = f'consecutive_failures = 1\nopen_duration = "1s"\nhalf_open_calls = {k}\n'
    rule += 'half_open_max_wait = "10s"'
    text = policies(server.url, p, rule)
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    # the probes hold for 3 s, far longer than a starved process may take to see half-open (a
    # burst that started after the probes closed the breaker would be admitted as closed)
    procs = _spawn(probe_worker, lambda i: (text, 50, 3.0, ready, go, out), 4)
    tripper = engines(server.url, p, rule)
    connected(tripper)
    assert [ready.get(timeout=30) for _ in procs] == ["closed"] * 4  # all connected
    fail(tripper)
    wait_for(lambda: tripper.guard("svc").state == "open", 2, "the trip")
    go.set()  # each process starts its 50 calls as soon as it sees half-open
    results = _collect(out, 4, procs)
    assert sum(r["admitted"] for r in results) == k
    assert [r["state"] for r in results] == ["closed"] * 4  # k probes succeeded: closed


# -- store failures ------------------------------------------------------------------------------


def _timed_calls(engine: Engine, fn: Callable[[], None], n: int) -> tuple[float, list[str]]:
    """The slowest of `n` calls and the errors they raised (anything unexpected is listed too)."""
    worst, errors = 0.0, []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            engine.guard("svc").call_sync(fn)
        except (ConnectionError, CircuitOpenError) as exc:
            errors.append(type(exc).__name__)
        except Exception as exc:  # an unhandled store error would land here
            errors.append(f"unexpected {exc!r}")
        worst = max(worst, time.perf_counter() - t0)
    return worst, errors


def test_store_hung_stopped_and_restarted(own_server: RedisServer, engines: Any) -> None:
    p = prefix()
    rule = 'consecutive_failures = 5\nopen_duration = "300ms"'
    a, b = engines(own_server.url, p, rule), engines(own_server.url, p, rule)
    connected(a, b)
    ok(a, 20)

    own_server.pause()  # hung: SIGSTOP
    worst, errors = _timed_calls(a, lambda: None, 300)
    assert errors == [] and worst < TIMEOUT  # the closed path never waits on the store
    wait_for(lambda: status(a)["degraded"], 2, "degraded")
    worst, errors = _timed_calls(a, boom, 10)
    assert errors == ["ConnectionError"] * 5 + ["CircuitOpenError"] * 5  # local breaker
    assert worst < TIMEOUT and snapshot(a)["degraded"] is True
    own_server.resume()
    wait_for(lambda: not status(a)["degraded"], 3, "recovery")
    wait_for(lambda: b.guard("svc").state == "open", 2, "the local trip published")

    wait_for(lambda: a.guard("svc").state == "half_open", 3, "half-open")
    own_server.pause()  # hung while a probe needs a lease: one bounded round trip
    worst, errors = _timed_calls(a, lambda: None, 1)
    assert errors == [] and worst < TIMEOUT + 0.04
    own_server.resume()
    wait_for(lambda: not status(a)["degraded"], 3, "recovery")

    own_server.stop()  # stopped
    worst, errors = _timed_calls(a, lambda: None, 100)
    assert errors == [] and worst < TIMEOUT
    wait_for(lambda: status(a)["degraded"], 2, "degraded")
    _timed_calls(a, boom, 5)
    assert a.guard("svc").state == "open"
    own_server.start()  # restarted, empty: the local open state is published, b follows
    wait_for(lambda: not status(a)["degraded"], 3, "recovery")
    wait_for(lambda: b.guard("svc").state in ("open", "half_open"), 3, "b to follow a")
    assert own_server.command("HGET", f"{p}:breaker:svc", "st") != b"$-1\r\n"
    wait_for(lambda: a.guard("svc").state == b.guard("svc").state == "half_open", 3, "in step")
    ok(b)
    wait_for(lambda: a.guard("svc").state == "closed", 2, "closed everywhere")


def test_a_batch_whose_reply_was_lost_is_never_counted_twice(
    own_server: RedisServer, engines: Any
) -> None:
    p = prefix()
    a = engines(own_server.url, p, "failure_rate = 0.99\nminimum_calls = 100\nwindow_size = 1000")
    connected(a)
    made = 0
    for round_ in range(3):
        ok(a, 30)
        made += 30
        if round_ == 1:
            own_server.pause()
            wait_for(lambda: status(a)["degraded"], 2, "degraded")
            ok(a, 30)  # counted locally only
            own_server.resume()
            wait_for(lambda: not status(a)["degraded"], 3, "recovery")
    wait_for(lambda: snapshot(a)["store_window_calls"] not in (None, 0), what="counts")
    time.sleep(0.1)  # let the last batch land
    calls = int(own_server.command("HGET", f"{p}:breaker:svc", "seq").split(b"\r\n")[1])
    assert 0 < calls <= made


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_on_error_open_or_closed(own_server: RedisServer, engines: Any, on_error: str) -> None:
    p = prefix()
    a = engines(own_server.url, p, "consecutive_failures = 2", on_error=on_error)
    connected(a)
    own_server.stop()
    fail(a, 1)  # the flush notices
    wait_for(lambda: status(a)["degraded"], 2, "degraded")
    if on_error == "open":
        with pytest.raises(CircuitOpenError):
            ok(a)
    else:
        fail(a, 5)  # admitted, never tripped
        assert a.guard("svc").state == "closed"
    own_server.start()
    wait_for(lambda: not status(a)["degraded"], 3, "recovery")
    wait_for(lambda: a.guard("svc").state == "closed", 2, "Redis wins")
    ok(a)


def test_a_force_nobody_renews_lapses(
    server: RedisServer, engines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policyengine._shared import _backend, _store

    monkeypatch.setattr(_store, "FORCE_TTL_MS", 300)
    monkeypatch.setattr(_backend, "RESYNC_EVERY", 0.2)
    p = prefix()
    forced, b = engines(server.url, p, 'force = "open"'), engines(server.url, p, "")
    wait_for(lambda: b.guard("svc").state == "forced_open", 2, "the forced state")
    time.sleep(0.5)
    assert b.guard("svc").state == "forced_open"  # renewed by `forced`
    forced.close()  # a process going away does not remove the force ...
    wait_for(lambda: b.guard("svc").state == "closed", 3, "the force to lapse")  # ... time does


# -- [state] changed by a reload -------------------------------------------------------------------

PLAIN = '\n[policies.plain.breaker]\nconsecutive_failures = 1\nopen_duration = "1h"\n'


def _memory(text: str) -> str:
    return text.replace('backend = "redis"', 'backend = "memory"')


def _state_events(engine: Engine) -> list[policyengine.Event]:
    seen: list[policyengine.Event] = []
    engine.add_listener(lambda e: seen.append(e) if e.name == "state_backend_changed" else None)
    return seen


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Callable[[str, str], Engine]]:
    """Engines loaded from files of their own (`reload()` re-reads them), closed afterwards."""
    made: list[Engine] = []

    def make(name: str, text: str) -> Engine:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        engine = policyengine.load(path, default=False)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def _rewrite(engine: Engine, text: str) -> bool:
    assert engine.path is not None
    engine.path.write_text(text)
    return engine.reload()


def test_memory_to_redis_by_a_reload_shares_the_breaker(
    server: RedisServer, files: Callable[[str, str], Engine]
) -> None:
    p = prefix()
    text = policies(server.url, p, "consecutive_failures = 3") + PLAIN
    a, b = files("a", _memory(text)), files("b", _memory(text))
    seen = _state_events(a)
    fail(a, 2)  # local counts, in memory
    with pytest.raises(ConnectionError):
        a.guard("plain").call_sync(boom)
    plain = a.guards["plain"].breaker
    calls = a.guard("svc").metrics()["calls"]
    assert a.status()["state"] == {"backend": "memory"}
    assert _rewrite(a, text) and _rewrite(b, text)  # no restart
    info = a.status()
    assert info["policies"] == {"svc": "new state backend", "plain": "unchanged"}
    assert "state_pending_restart" not in info  # dropped: a reload applies [state]
    connected(a, b)
    assert a.status()["state"]["backend"] == "redis" and a.status()["state"]["connected"]
    assert a.guards["plain"].breaker is plain and a.guard("plain").state == "open"  # kept
    assert a.guard("svc").metrics()["calls"] == calls  # counters are never reset
    [event] = seen
    assert event.data["from"] == {"backend": "memory"} and event.data["how"] == "new backend"
    assert event.data["to"]["url"] == server.url and event.data["renewed"] == ["svc"]
    fail(a, 3)  # a's trip reaches b: one breaker across both "processes"
    wait_for(lambda: b.guard("svc").state == "open", 2, "b to see a's trip")
    with pytest.raises(CircuitOpenError):
        ok(b)


def test_redis_to_memory_makes_shared_breakers_local_and_closes_the_old_backend(
    server: RedisServer, files: Callable[[str, str], Engine]
) -> None:
    from policyengine._patterns.breaker import Breaker

    p = prefix()
    text = policies(server.url, p, "consecutive_failures = 2")
    a, b = files("a", text), files("b", text)
    connected(a, b)
    old = a._state_backend
    seen = _state_events(a)
    fail(a)  # batched, not yet known to be reported: closing the old backend flushes it
    assert _rewrite(a, _memory(text))
    assert not old._thread.is_alive()  # closed by the reload, after the swap
    assert old.status()["shared_breakers"] == ["svc"] and not old.shared_breakers()[0].remote
    info = a.status()
    assert info["state"] == {"backend": "memory"} and info["policies"] == {
        "svc": "new state backend"
    }
    assert type(a.guards["svc"].breaker) is Breaker
    assert seen[0].data["to"] == {"backend": "memory"}
    assert seen[0].data["from"]["backend"] == "redis"
    ok(a, 3)
    fail(a, 2)  # a trip of a's own, in memory: nothing of it reaches the store
    assert a.guard("svc").state == "open"
    assert server.command("HGET", f"{p}:breaker:svc", "st").endswith(b"closed\r\n")
    assert b.guard("svc").state == "closed"
    fail(b)  # 1 (a's, flushed by the old backend as it closed) + 1 in a row: the trip
    wait_for(lambda: b.guard("svc").state == "open", 2, "b's trip")
    assert a.guard("svc").metrics()["calls"] == 6


def test_a_url_change_takes_state_from_the_second_server(
    server: RedisServer, own_server: RedisServer, engines: Any
) -> None:
    p = prefix()
    rule = 'consecutive_failures = 2\nopen_duration = "1h"'
    a, b = engines(server.url, p, rule), engines(server.url, p, rule)
    other = engines(own_server.url, p, rule)
    connected(a, b, other)
    fail(b, 2)  # open in the first store
    wait_for(lambda: a.guard("svc").state == "open", 2, "a to follow the first store")
    first = a._state_backend
    a.apply(load_text(policies(own_server.url, p, rule)))
    assert a._state_backend is not first and not first._thread.is_alive()
    assert a.status()["policies"] == {"svc": "new state backend"}
    connected(a)
    assert status(a)["url"] == own_server.url
    ok(a)  # the second store's state: closed
    fail(other, 2)  # a trip in the second store reaches a ...
    wait_for(lambda: a.guard("svc").state == "open", 2, "a to follow the second store")
    assert own_server.command("HGET", f"{p}:breaker:svc", "st").endswith(b"open\r\n")
    assert b.guard("svc").state == "open"  # ... and the first store is left as it was


@pytest.mark.parametrize(("before", "after"), [("open", "closed"), ("closed", "local")])
def test_an_on_error_change_applies_live(
    own_server: RedisServer, engines: Any, before: str, after: str
) -> None:
    p = prefix()
    rule = "consecutive_failures = 2"
    a = engines(own_server.url, p, rule, on_error=before)
    connected(a)
    backend, breaker = a._state_backend, a.guards["svc"].breaker
    seen = _state_events(a)
    own_server.pause()
    try:
        fail(a)  # the flush notices
        wait_for(lambda: status(a)["degraded"], 2, "degraded")
        if before == "open":
            with pytest.raises(CircuitOpenError):
                ok(a)
        else:
            assert _timed_calls(a, boom, 4)[1] == ["ConnectionError"] * 4  # admitted
        a.apply(load_text(policies(own_server.url, p, rule, on_error=after)))
        # in place: the same backend, breaker and shared state; only the fallback changed
        assert a._state_backend is backend and a.guards["svc"].breaker is breaker
        assert a.status()["policies"] == {"svc": "unchanged"}
        assert status(a)["on_error"] == after and status(a)["degraded"]
        assert seen[0].data["how"] == "retuned" and seen[0].data["renewed"] == []
        errors = _timed_calls(a, boom, 3)[1]
        if after == "closed":
            assert errors == ["ConnectionError"] * 3  # admitted, never tripped
            ok(a)
        else:  # local: this process's own rules, from closed
            assert errors[0] == "ConnectionError" and errors[-1] == "CircuitOpenError"
            assert a.guard("svc").state == "open"
    finally:
        own_server.resume()
    wait_for(lambda: not status(a)["degraded"], 3, "recovery")


def test_a_timeout_change_is_applied_in_place(server: RedisServer, engines: Any) -> None:
    p = prefix()
    rule = 'consecutive_failures = 2\nopen_duration = "1h"'
    a, b = engines(server.url, p, rule), engines(server.url, p, rule)
    connected(a, b)
    fail(a)
    wait_for(lambda: snapshot(a)["store_consecutive_failures"] == 1, what="the batch")
    backend, breaker = a._state_backend, a.guards["svc"].breaker
    client = backend._client
    text = policies(server.url, p, rule).replace('timeout = "50ms"', 'timeout = "200ms"')
    a.apply(load_text(text))
    assert a._state_backend is backend and a.guards["svc"].breaker is breaker
    assert status(a)["timeout"] == 0.2
    wait_for(lambda: backend._client is not client, what="new clients")
    assert backend._client.connection_pool.connection_kwargs["socket_timeout"] == 0.2
    wait_for(lambda: not backend._tasks, what="the old clients closed")
    fail(b)  # 1 + 1 in a row: the counts were kept, and a still hears the fleet
    wait_for(lambda: a.guard("svc").state == "open", 2, "a to see the trip")
    assert status(a)["errors"] == 0 and status(a)["connected"]


def test_a_broken_state_section_keeps_the_last_good_backend_and_state(
    server: RedisServer, files: Callable[[str, str], Engine]
) -> None:
    p = prefix()
    text = policies(server.url, p, 'consecutive_failures = 1\nopen_duration = "1h"')
    a = files("a", text)
    connected(a)
    fail(a)
    wait_for(lambda: a.guard("svc").state == "open", 2, "the trip")
    backend, breaker = a._state_backend, a.guards["svc"].breaker
    bad_field = text.replace('on_error = "local"', 'on_error = "sometimes"')
    bad_url = text.replace(server.url, "http://127.0.0.1:1/0")  # valid to pydantic only
    assert a.path is not None
    for bad, key, line in ((bad_field, "state.on_error", 7), (bad_url, "state.url", 4)):
        assert _rewrite(a, bad) is False
        error = a.status()["last_error"]
        assert f"{a.path}:{line}: {key}: error:" in error, error
        assert a._state_backend is backend and a.guards["svc"].breaker is breaker
        assert a.guard("svc").state == "open" and status(a)["connected"]
        assert a.status()["state"]["url"] == server.url
    assert a.status()["failed_reloads"] == 2
    assert _rewrite(a, text.replace("1h", "2h"))  # the next good edit applies, state kept
    assert a.status()["last_error"] is None and a.guards["svc"].breaker is breaker


def test_a_call_in_flight_across_the_swap_finishes_once(server: RedisServer, engines: Any) -> None:
    p = prefix()
    a = engines(server.url, p, "consecutive_failures = 3")
    connected(a)
    old_backend, old_breaker = a._state_backend, a.guards["svc"].breaker
    started, release = threading.Event(), threading.Event()
    result: list[object] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        return "done"

    def call() -> None:
        try:
            result.append(a.guard("svc").call_sync(slow))
        except Exception as exc:  # would fail the assertion below, showing what it was
            result.append(exc)

    before = a.guard("svc").metrics()
    thread = threading.Thread(target=call)
    thread.start()
    assert started.wait(5)
    a.apply(load_text(policies(server.url, prefix(), "consecutive_failures = 3")))  # new keys
    assert a.guards["svc"].breaker is not old_breaker and not old_backend._thread.is_alive()
    release.set()
    thread.join(5)
    assert result == ["done"]
    after = a.guard("svc").metrics()
    assert after["calls"] == before["calls"] + 1 and after["successes"] == before["successes"] + 1
    assert after["in_flight"] == 0 and after["failures"] == before["failures"]
    ok(a)  # the new breaker works
    assert old_breaker.state == "closed"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_backend_replaced_at_runtime_is_restarted_after_fork(server: RedisServer) -> None:
    from tests.helpers.forking import run_in_child

    p = prefix()
    rule = 'consecutive_failures = 1\nopen_duration = "1h"'
    a = policyengine.loads(_memory(policies(server.url, p, rule)), default=False)
    try:
        a.apply(load_text(policies(server.url, p, rule)))  # memory -> redis at runtime
        connected(a)
        parent_backend = a._state_backend

        def child() -> dict[str, Any]:
            wait_for(lambda: status(a)["connected"], what="the child's connection")
            fail(a)  # tripped at once, here; the reply confirms it
            wait_for(lambda: a.guard("svc").state == "open", 2, "the child's trip")
            confirmed(a)
            return {
                "same": a._state_backend is parent_backend,
                "thread": a._state_backend._thread.is_alive(),
                "state": a.guard("svc").state,
            }

        report = run_in_child(child)
        assert report == {"same": True, "thread": True, "state": "open"}
        wait_for(lambda: a.guard("svc").state == "open", 2, "the parent to see the child's trip")
    finally:
        a.close()
