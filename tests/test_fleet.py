"""Fleet features on a real redis-server (issue 21): heartbeats, quorum breakers, and overrides
from the command line (`policyengine force`, `policyengine fleet`).

Engines in this process count as processes of the fleet: each has its own backend thread, event
loop, connections and process id in the store. Where a process must die without a word (its
heartbeat and vote must expire) or where latency across processes is measured, real processes
are spawned (`fleet_workers`). Heartbeats run every 0.1 s and lapse after 0.6 s here.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest

import policyengine
from policyengine import CircuitOpenError, Engine
from policyengine._commands.cli import main

pytest.importorskip("redis", reason="redis-py is not installed: pip install '.[redis]'")
from tests.helpers.fleet_workers import watch_worker
from tests.helpers.polling import wait_until
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.redis

BEAT = (0.1, 0.6)  # heartbeat every, heartbeat ttl (seconds)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer.start_new(tmp_path_factory.mktemp("redis"))
    if srv is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def short_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    from policyengine._shared import _fleet

    monkeypatch.setattr(_fleet, "HEARTBEAT_EVERY", BEAT[0])
    monkeypatch.setattr(_fleet, "HEARTBEAT_TTL", BEAT[1])


@pytest.fixture
def engines() -> Iterator[Callable[[str], Engine]]:
    made: list[Engine] = []

    def make(text: str) -> Engine:
        engine = policyengine.loads(text, default=False)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def text(url: str, prefix: str, quorum: str = "3", extra: str = "") -> str:
    return f"""
[state]
backend = "redis"
url = "{url}"
prefix = "{prefix}"

[policies.svc.breaker]
shared = "quorum"
quorum = {quorum}
consecutive_failures = 2
open_duration = "30s"

[policies.one.breaker]
shared = true
consecutive_failures = 2
{extra}
"""


def state(engine: Engine) -> dict[str, Any]:
    result: dict[str, Any] = engine.status()["state"]
    return result


def fail(engine: Engine, guard: str = "svc", n: int = 2) -> None:
    def boom() -> None:
        raise ConnectionError("down")

    for _ in range(n):
        with pytest.raises((ConnectionError, CircuitOpenError)):
            engine.guard(guard).call_sync(boom)


def opened_at(engine: Engine) -> list[float]:
    seen: list[float] = []
    engine.add_listener(
        lambda e: (
            seen.append(time.monotonic())
            if e.name == "state_change" and e.data["to"] == "open"
            else None
        )
    )
    return seen


def prefix() -> str:
    return f"q{uuid.uuid4().hex[:10]}"


def live(engine: Engine, n: int, timeout: float = 5.0) -> None:
    wait_until(lambda: state(engine)["live_processes"] == n, f"{n} live processes", timeout)


def test_quorum_of_three_in_five_processes(server: RedisServer, engines: Any) -> None:
    p = prefix()
    fleet = [engines(text(server.url, p)) for _ in range(5)]
    for engine in fleet:
        live(engine, 5)
    seen = [opened_at(e) for e in fleet]
    fail(fleet[0])
    fail(fleet[1])  # two processes opened their own breakers: two votes of the three needed
    wait_until(lambda: state(fleet[0])["quorum"]["svc"]["votes"] == 2, "two votes")
    assert state(fleet[0])["quorum"]["svc"]["needed"] == 3
    time.sleep(0.3)  # three heartbeats: time for a wrong trip to show
    assert [e.guard("svc").state for e in fleet] == ["open", "open"] + ["closed"] * 3
    fail(fleet[2])  # the third vote
    tripped = seen[2][0]
    wait_until(lambda: all(s for s in seen), "every process to open", 2)
    assert max(s[0] for s in seen[3:]) - tripped < 0.1
    assert [e.guard("svc").state for e in fleet] == ["open"] * 5
    with pytest.raises(CircuitOpenError):
        fleet[4].guard("svc").call_sync(lambda: None)
    assert fleet[4].guard("one").state == "closed"  # another guard is left alone


def test_a_killed_process_drops_out_of_the_live_count_and_its_vote_lapses(
    server: RedisServer, engines: Any
) -> None:
    p = prefix()
    body = text(server.url, p, quorum="0.5")
    ctx = multiprocessing.get_context("spawn")
    ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=watch_worker, args=(body, BEAT, ready, out, stop, "svc"))
    fleet = [engines(body) for _ in range(3)]
    for engine in fleet:
        live(engine, 3)
    proc.start()
    try:
        ready.get(timeout=30)  # its breaker opened: one vote of the two needed
        for engine in fleet:
            live(engine, 4)
        assert state(fleet[0])["quorum"]["svc"]["needed"] == 2
        wait_until(lambda: state(fleet[0])["quorum"]["svc"]["votes"] == 1, "its vote")
        proc.kill()  # no goodbye: only time removes it
        live(fleet[0], 3, timeout=3)
        wait_until(lambda: state(fleet[0])["quorum"]["svc"]["votes"] == 0, "its vote to lapse")
    finally:  # (never stop.set(): a process killed in stop.wait() may hold the Event's lock)
        proc.kill()
        proc.join(5)
    fail(fleet[0])  # one of three: below half
    wait_until(lambda: state(fleet[0])["quorum"]["svc"]["needed"] == 2, "the quorum of 3")
    assert fleet[2].guard("svc").state == "closed"
    fail(fleet[1])  # two of three
    wait_until(lambda: fleet[2].guard("svc").state == "open", "the fleet trip", 2)


def _spawn_watchers(body: str, n: int) -> tuple[list[Any], Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=watch_worker, args=(body, BEAT, ready, out, stop)) for _ in range(n)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=30)
    return procs, out, stop


def _events(out: Any, n: int, to: str, timeout: float = 10.0) -> dict[int, tuple[str, float]]:
    """The first transition to `to` of guard "one" in each of `n` processes."""
    found: dict[int, tuple[str, float]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < n:
        pid, guard, state_to, reason, at = out.get(timeout=max(deadline - time.monotonic(), 0.1))
        if guard == "one" and state_to == to and pid not in found:
            found[pid] = (reason, at)
    return found


def cli(*args: str) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


def test_a_force_from_the_cli_reaches_four_processes_and_lapses(server: RedisServer) -> None:
    p = prefix()
    body = text(server.url, p)
    procs, out, stop = _spawn_watchers(body, 4)
    try:
        where = ("--state", server.url, "--prefix", p)
        t0 = time.monotonic()
        code, said = cli("force", "one", "open", *where, "--for", "2s")
        assert code == 0 and "forced_open" in said
        arrived = _events(out, 4, "forced_open")
        lags = [at - t0 for _, at in arrived.values()]
        assert statistics.median(lags) < 0.1, lags

        def view_of() -> dict[str, Any]:
            code, listing = cli("fleet", *where, "--format", "json")
            assert code == 0
            result: dict[str, Any] = json.loads(listing)
            return result

        # the heartbeats (every 0.1 s here) carry each process's state
        wait_until(lambda: view_of()["guards"]["one"]["processes"] == {"forced_open": 4}, "beats")
        view = view_of()
        assert len(view["processes"]) == 4
        assert list(view["versions"].values()) == [4]  # the whole fleet on one version
        assert view["guards"]["one"] == {"store": "forced_open", "processes": {"forced_open": 4}}
        assert view["guards"]["svc"]["processes"] == {"closed": 4}
        lapsed = _events(out, 4, "closed", timeout=5)  # the file's policy is back by itself
        reasons = [reason for reason, _ in lapsed.values()]
        assert "force_expired" in reasons and set(reasons) <= {"force_expired", "shared"}
        # (each process reads the store as the override lapses: the first read ends it and its
        # message says so; a process whose own read came back first just follows the store)
        waits = [at - t0 for _, at in lapsed.values()]
        assert all(2.0 <= w < 2.0 + 0.5 for w in waits), waits
        code, said = cli("fleet", *where)
        assert code == 0 and "4 live process(es)" in said and "one version" in said
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def test_clear_and_a_file_force_that_wins(server: RedisServer, engines: Any) -> None:
    p = prefix()
    plain = engines(text(server.url, p))
    pinned = engines(text(server.url, p, extra='force = "closed"'))
    live(plain, 2)
    where = ("--state", server.url, "--prefix", p)
    assert cli("force", "svc", "open", *where, "--for", "10m")[0] == 0  # a quorum breaker too
    wait_until(lambda: plain.guard("svc").state == "forced_open", "the override on svc")
    assert cli("force", "svc", "clear", *where)[0] == 0
    wait_until(lambda: plain.guard("svc").state == "closed", "cleared")
    assert cli("force", "one", "open", *where)[0] == 0
    wait_until(lambda: plain.guard("one").state == "forced_open", "the override on one")
    assert pinned.guard("one").state == "closed"  # its file says force = "closed": it wins
    pinned.guard("one").call_sync(lambda: None)
    assert cli("force", "one", "clear", *where)[0] == 0
    wait_until(lambda: plain.guard("one").state == "closed", "cleared")
    assert cli("force", "nope", "open", "--state", "http://x")[0] == 2
