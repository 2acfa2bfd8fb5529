"""An engine created before `os.fork()` keeps working in the child (gunicorn ``--preload``,
`multiprocessing`'s "fork" start method): the watcher and the Redis backend are restarted there,
locks another thread held at the fork are replaced, thread pools are started again.

Each test forks with `os.fork()` itself. The child runs its checks, reports them as JSON through a
pipe and always ends with `os._exit`, so a failing child never goes on running pytest; the parent
waits for the report with a deadline (a child that hangs is killed) and asserts on it. Nothing
sleeps a fixed time: every wait polls a state with a generous deadline and ends as soon as it
holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import policyengine
from policyengine import CircuitOpenError, Engine
from policyengine._config.loader import load_text
from tests.helpers.forking import CHILD_TIMEOUT, run_in_child
from tests.helpers.polling import LoopThread, run_on, wait_until

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="needs os.fork(), which this platform does not have"
)

WAIT = 10.0  # a file-system event or a Redis round trip: real time, so generous


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


# -- policies ----------------------------------------------------------------------------------


def bulkhead(limit: int) -> str:
    return f"[policies.db.bulkhead]\nmax_concurrent = {limit}\nmax_queue = 10\n"


def limit_of(engine: Engine, name: str = "db") -> int:
    bulkhead = engine.guards[name].bulkhead
    assert bulkhead is not None
    return bulkhead.max_concurrent


EVERYTHING = """
[policies.api.breaker]
consecutive_failures = 2
open_duration = "30s"

[policies.api.bulkhead]
max_concurrent = {limit}

[policies.api.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "0ms"
jitter = "none"
budget = {{ ratio = 0.5, min_per_second = 10 }}
"""


def boom() -> None:
    raise ConnectionError("down")


async def answer() -> int:
    return 42


# -- the watcher -------------------------------------------------------------------------------


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_the_watcher_is_restarted_in_the_child_and_applies_an_edit_made_there(
    tmp_path: Path, polling: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyengine")
    path = tmp_path / "policies.toml"
    path.write_text(bulkhead(3))
    engine = policyengine.load(
        path, watch=True, default=False, force_polling=polling, poll_interval=0.02
    )
    try:
        wait_until(lambda: engine._watcher.looks >= 1, "the watcher's first look")
        assert limit_of(engine) == 3

        def child() -> dict[str, Any]:
            alive = engine.status()["watch"]["alive"]
            threads = thread_names()
            path.write_text(bulkhead(7))  # made after the fork, by the child
            wait_until(lambda: limit_of(engine) == 7, "the child's watcher to apply the edit")
            status = engine.status()
            return {
                "alive": alive,
                "threads": threads,
                "version": status["version"],
                "still_alive": status["watch"]["alive"],
                "logged": [m for m in caplog.messages if "forked process" in m],
            }

        report = run_in_child(child)
        assert report["alive"] is True
        assert f"policyengine-watch:{path.name}" in report["threads"]
        assert report["version"] == load_text(bulkhead(7)).version
        assert report["still_alive"] is True
        assert any(
            f"(parent {os.getpid()})" in m and f"restarted the watcher of {path}" in m
            for m in report["logged"]
        ), report["logged"]
        # the parent's watcher was not disturbed by the child: it sees the same edit
        wait_until(lambda: limit_of(engine) == 7, "the parent's watcher to apply the edit")
        assert engine.status()["watch"]["alive"] is True
    finally:
        engine.close()


def test_a_watch_on_the_parents_loop_goes_on_in_a_thread_in_the_child(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The parent watches on its event loop; the child has no such loop (nor its thread), and
    must not touch the epoll instance it shares with the parent: it watches from a thread, and
    the parent's loop watch goes on undisturbed."""
    caplog.set_level(logging.INFO, logger="policyengine")
    path = tmp_path / "policies.toml"
    path.write_text(bulkhead(3))
    with LoopThread() as loop:
        engine = run_on(loop, lambda: policyengine.load(path, watch=True, default=False))
        try:
            assert engine.status()["watch"]["on"] == "loop"
            wait_until(lambda: engine._watcher.looks >= 1, "the watcher's first look")

            def child() -> dict[str, Any]:
                watch = engine.status()["watch"]
                path.write_text(bulkhead(7))  # made after the fork, by the child
                wait_until(lambda: limit_of(engine) == 7, "the child's watcher to apply the edit")
                path.write_text(bulkhead(8))
                reloaded = engine.reload()  # no loop here: runs in this thread
                return {
                    "on": watch["on"],
                    "alive": watch["alive"],
                    "loop": engine.loop is not None,
                    "reloaded": reloaded,
                    "logged": [m for m in caplog.messages if "forked process" in m],
                }

            report = run_in_child(child)
            assert (report["on"], report["alive"], report["loop"]) == ("thread", True, False)
            assert report["reloaded"] in (True, False)  # (the child's watcher may be first)
            assert any("in a thread" in m for m in report["logged"]), report["logged"]
            wait_until(lambda: limit_of(engine) == 8, "the parent's loop watch to see the edit")
            assert engine.status()["watch"]["on"] == "loop"
        finally:
            engine.close()


@pytest.mark.parametrize("how", ["engine.close()", "watcher.stop()"])
def test_a_stopped_engine_or_watcher_stays_stopped_in_the_child(tmp_path: Path, how: str) -> None:
    path = tmp_path / f"stopped-{uuid.uuid4().hex[:8]}.toml"  # a thread name of its own
    path.write_text(bulkhead(3))
    engine = policyengine.load(path, watch=True, default=False)
    try:
        wait_until(lambda: engine._watcher.looks >= 1, "the watcher's first look")
        if how == "engine.close()":
            engine.close()
        else:
            engine._watcher.stop()
        assert f"policyengine-watch:{path.name}" not in thread_names()

        def child() -> dict[str, Any]:
            watch = engine.status()["watch"]
            return {
                "threads": thread_names(),
                "alive": None if watch is None else watch["alive"],
                "call": engine.guard("db").call_sync(lambda: 5),  # guards outlive close
            }

        report = run_in_child(child)
        assert f"policyengine-watch:{path.name}" not in report["threads"]
        assert report["alive"] in (None, False)
        assert report["call"] == 5
    finally:
        engine.close()


# -- locks held at the fork --------------------------------------------------------------------


def test_locks_held_by_another_thread_at_the_fork_do_not_deadlock_the_child(
    tmp_path: Path,
) -> None:
    """A thread holds every lock a call, a reload or the default engine takes at the moment of
    the fork (and releases them in the parent only): the child must not wait for them."""
    from policyengine._registry import default as _default

    path = tmp_path / "policies.toml"
    path.write_text(EVERYTHING.format(limit=2))
    engine = policyengine.load(path, default=False)
    guard = engine.guards["api"]
    assert guard.breaker is not None and guard.bulkhead is not None
    assert guard.budget is not None
    locks = [
        guard.breaker._lock,
        guard.metrics.lock,
        guard.bulkhead._lock,
        guard.budget._lock,
        engine._lock,
        engine._reload_lock,
        _default._slot.lock,
    ]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(CHILD_TIMEOUT)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold, name="test-holder")
    holder.start()
    try:
        assert held.wait(WAIT)

        def child() -> dict[str, Any]:
            handle = engine.guard("api")
            results = [asyncio.run(handle.call(answer)), handle.call_sync(lambda: 7)]
            for _ in range(2):  # two failing calls trip the breaker (consecutive_failures = 2)
                with contextlib.suppress(ConnectionError, CircuitOpenError):
                    handle.call_sync(boom)
            state = handle.state
            path.write_text(EVERYTHING.format(limit=5))
            reloaded = engine.reload()
            policyengine.set_default_engine(engine)
            policyengine.set_default_engine(None)
            metrics = handle.metrics()
            return {
                "results": results,
                "state": state,
                "reloaded": reloaded,
                "limit": limit_of(engine, "api"),
                "calls": metrics["calls"],
                "in_flight": metrics["in_flight"],
            }

        report = run_in_child(child, then=release.set)
    finally:
        release.set()
        holder.join(WAIT)
    assert report["results"] == [42, 7]
    assert report["state"] == "open"
    assert report["reloaded"] is True and report["limit"] == 5
    assert report["calls"] >= 4 and report["in_flight"] == 0
    # the parent's own locks were released by their holder: the parent goes on as before
    assert engine.guard("api").call_sync(lambda: 1) == 1
    assert limit_of(engine, "api") == 2


# -- threads bulkhead --------------------------------------------------------------------------


def test_a_threads_bulkhead_used_before_the_fork_runs_calls_in_the_child() -> None:
    engine = policyengine.loads(
        '[policies.reports.bulkhead]\nkind = "threads"\nmax_concurrent = 2\n', default=False
    )
    try:
        handle = engine.guard("reports")

        def where() -> str:  # a blocking function, run in the policy's pool
            return threading.current_thread().name

        parent = asyncio.run(handle.call(where))
        assert parent.startswith("policyengine-reports")

        def child() -> dict[str, Any]:
            async def main() -> list[str]:
                return [await asyncio.wait_for(handle.call(where), WAIT) for _ in range(3)]

            names = asyncio.run(main())
            return {"names": names, "active": handle.metrics()["bulkhead"]["active"]}

        report = run_in_child(child)
        assert all(n.startswith("policyengine-reports") for n in report["names"]), report
        assert report["active"] == 0
        assert asyncio.run(handle.call(where)).startswith("policyengine-reports")  # the parent
    finally:
        engine.close()


# -- the registry ------------------------------------------------------------------------------


def test_the_fork_registry_does_not_keep_engines_alive() -> None:
    engine = policyengine.loads(bulkhead(1), default=False)
    engine.guard("db")
    ref = weakref.ref(engine)
    del engine
    gc.collect()
    assert ref() is None


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server, as in test_shared_redis (which skips the same way)."""
    pytest.importorskip("redis", reason="redis-py is not installed: pip install '.[redis]'")
    from tests.helpers.redis_server import RedisServer

    server = RedisServer.start_new(tmp_path_factory.mktemp("redis"))
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI runs these")
    yield server.url
    server.stop()


def redis_policies(url: str, breaker: str) -> str:
    from tests.helpers.redis_server import policies

    return policies(url, f"t{uuid.uuid4().hex[:10]}", breaker)


@pytest.mark.redis
def test_a_shared_breaker_used_before_the_fork_works_across_parent_and_child(
    redis_url: str,
) -> None:
    engine = policyengine.loads(
        redis_policies(redis_url, 'consecutive_failures = 3\nopen_duration = "30s"'),
        default=False,
    )
    try:
        handle = engine.guard("svc")
        wait_until(lambda: engine.status()["state"]["connected"], "the parent to connect")
        for _ in range(3):
            handle.call_sync(lambda: None)  # used in the parent: batches, loop, connections

        def child() -> dict[str, Any]:
            wait_until(lambda: engine.status()["state"]["connected"], "the child to connect")
            connected = engine.status()["state"]
            threads = thread_names()
            deadline = time.monotonic() + WAIT
            while handle.state != "open" and time.monotonic() < deadline:
                with contextlib.suppress(ConnectionError, CircuitOpenError):
                    handle.call_sync(boom)
            breaker = engine.guards["svc"].breaker
            assert breaker is not None  # tripped here at once (issue 14): wait for the store
            wait_until(lambda: breaker.snapshot()["store_state"] == "open", "the confirmation")
            return {
                "connected": connected["connected"],
                "degraded": connected["degraded"],
                "threads": threads,
                "state": handle.state,
                "after": engine.status()["state"]["connected"],
            }

        report = run_in_child(child)
        assert report["connected"] is True and report["degraded"] is False
        assert "policyengine-redis" in report["threads"]
        assert report["state"] == "open" and report["after"] is True
        # the parent never failed a call: it learns of the child's trip from Redis
        wait_until(lambda: handle.state == "open", "the parent to see the child's trip")
        with pytest.raises(CircuitOpenError):
            handle.call_sync(lambda: None)
        assert engine.status()["state"]["connected"] is True
    finally:
        engine.close()


def test_a_closed_redis_backend_stays_closed_in_the_child() -> None:
    """No server needed: construction never contacts Redis, and nothing must restart."""
    pytest.importorskip("redis", reason="redis-py is not installed: pip install '.[redis]'")
    engine = policyengine.loads(redis_policies("redis://127.0.0.1:1/0", ""), default=False)
    backend = engine._state_backend
    engine.close()
    assert not backend._thread.is_alive()

    def child() -> dict[str, Any]:
        return {
            "alive": backend._thread.is_alive(),
            "loop_closed": backend._loop.is_closed(),
            "call": engine.guard("svc").call_sync(lambda: 3),  # a local breaker now
            "state": engine.status()["state"]["backend"],
        }

    report = run_in_child(child)
    assert report == {"alive": False, "loop_closed": True, "call": 3, "state": "redis"}
