"""The fleet-wide rate limit on a real redis-server (started here on a free loopback port).

Without the `redis-server` binary these tests skip, saying so; CI installs it (`.ci/run`).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from policyengine import RateLimitedError
from policyengine._config.admission_models import RateLimitOptions
from policyengine._runtime.clock import MonotonicClock

redis = pytest.importorskip("redis", reason="redis-py is not installed: pip install '.[redis]'")
from policyengine._shared._limiter import LimiterStore, SharedRateLimiter  # noqa: E402
from policyengine._shared._limiter_script import budget_keys, procs_key  # noqa: E402
from tests.helpers.limiter_workers import hammer  # noqa: E402
from tests.helpers.polling import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer.start_new(tmp_path)
    if srv is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI runs these")
    yield srv
    srv.stop()


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def test_every_key_of_a_budget_is_in_one_cluster_hash_slot() -> None:
    from redis.crc import key_slot

    for key in (None, "api-1.example.com"):
        keys = budget_keys("pe", "search", key, ["50/s", "3000/min", "9/h"])
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    assert key_slot(procs_key("pe", "search").encode()) == key_slot(
        budget_keys("pe", "search", None, [])[0].encode()
    )


def _run(server: RedisServer, processes: int, secs: float, stop_at: float | None) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    args = (server.url, prefix(), ["100/s"], processes, secs, (ready, go, out))
    procs = [ctx.Process(target=hammer, args=args, daemon=True) for _ in range(processes)]
    for proc in procs:
        proc.start()
    try:
        lives = [ready.get(timeout=30) for _ in procs]
        assert lives == [processes] * processes, "every process sees the others"
        go.set()
        if stop_at is not None:
            time.sleep(stop_at)  # the stop is the event under test, at a point in the run
            server.stop()
        return [out.get(timeout=secs + 30) for _ in procs]
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def test_four_processes_share_one_budget(server: RedisServer) -> None:
    results = _run(server, 4, 10.0, None)
    assert [r["errors"] for r in results] == [[]] * 4
    total = sum(len(r["starts"]) for r in results)
    assert 950 <= total <= 1050, total
    assert all(r["status"]["admitted"]["leased"] > 0 for r in results)


def test_with_the_store_stopped_each_process_falls_back_to_its_share(
    server: RedisServer,
) -> None:
    results = _run(server, 4, 6.0, stop_at=2.0)
    assert [r["errors"] for r in results] == [[]] * 4
    for r in results:
        assert r["store"]["degraded"] is True
        after = [s for s in r["starts"] if 3.0 <= s < 6.0]  # from a second after the stop
        assert 60 <= len(after) <= 78, len(after)  # 25/s each (100/s over 4), 3 s


def _limiter(server: RedisServer, name_prefix: str, **options: Any) -> SharedRateLimiter:
    # a generous timeout: on a loaded machine a 50 ms one degrades now and then, and these
    # tests are about the shared path (the degraded one has tests of its own)
    store = LimiterStore(server.url, name_prefix, 0.5)
    return SharedRateLimiter("svc", RateLimitOptions(**options), store, MonotonicClock())


def test_two_stores_in_one_process_hold_the_rate_together(server: RedisServer) -> None:
    p = prefix()
    a, b = _limiter(server, p, rates=["200/s"]), _limiter(server, p, rates=["200/s"])
    try:
        wait_until(lambda: a.live == 2 and b.live == 2, "both registered")
        starts: list[float] = []
        t0 = time.monotonic()
        while (now := time.monotonic()) < t0 + 2.0:
            for lim in (a, b):
                try:
                    starts.append(now + lim.admit(now))
                except RateLimitedError:
                    pass
            time.sleep(0.0002)  # a caller that does something else too (the lease thread runs)
        assert 380 <= len(starts) <= 420, (len(starts), a.status(), b.status(), a.store.status())
    finally:
        a.store.close()
        b.store.close()


def test_a_429_in_one_process_pauses_the_other(server: RedisServer) -> None:
    p = prefix()
    a, b = _limiter(server, p, rates=["1000/s"]), _limiter(server, p, rates=["1000/s"])
    try:
        wait_until(lambda: a.live == 2 and b.live == 2, "both registered")
        error = Exception("slow down")
        error.response = SimpleNamespace(status_code=429, headers={"Retry-After": "1"})  # type: ignore[attr-defined]
        a.settle("failure", error, 0.0, time.monotonic())
        t0 = time.monotonic()
        with pytest.raises(RateLimitedError):
            a.admit(t0)
        admitted = []
        while (now := time.monotonic()) < t0 + 1.5:
            try:
                b.admit(now)
                admitted.append(now - t0)
            except RateLimitedError:
                pass
        # b used what it had leased before the pause reached the store (at most 0.1 s ahead)
        late = [s for s in admitted if 0.2 <= s < 0.9]
        assert late == [], (late[:5], b.status(), b.store.status())
        assert any(s >= 0.95 for s in admitted), (admitted[-5:], b.status())
    finally:
        a.store.close()
        b.store.close()


def test_each_key_has_a_fleet_budget_of_its_own(server: RedisServer) -> None:
    lim = _limiter(server, prefix(), rates=["50/s"])
    try:
        counts = {"a": 0, "b": 0}
        t0 = time.monotonic()
        while (now := time.monotonic()) < t0 + 1.0:
            for key in counts:
                try:
                    lim.admit(now, key=key)
                    counts[key] += 1
                except RateLimitedError:
                    pass
            time.sleep(0.0005)
        assert all(45 <= n <= 60 for n in counts.values()), counts
    finally:
        lim.store.close()


def test_a_store_down_from_the_start_gives_the_local_share_at_once() -> None:
    store = LimiterStore("redis://127.0.0.1:1/0", prefix(), 0.05)
    lim = SharedRateLimiter("svc", RateLimitOptions(rates=["10/s"]), store, MonotonicClock())
    try:
        wait_until(lambda: store.degraded, "degraded")
        now = time.monotonic()
        assert lim.admit(now) == 0.0
        with pytest.raises(RateLimitedError):
            lim.admit(now)
    finally:
        store.close()


def test_a_shared_rate_limit_through_the_engine(server: RedisServer) -> None:
    import policyengine
    from policyengine._shared._limiter import SharedRateLimiter as Shared

    text = f"""
[state]
backend = "redis"
url = "{server.url}"
prefix = "{prefix()}"
timeout = "50ms"

[policies.svc.rate_limit]
rates = ["50/s"]
scope = "shared"
"""
    engine = policyengine.loads(text, default=False)
    try:
        layer = engine.guards["svc"].layers[0]
        assert isinstance(layer, Shared)
        g = engine.guard("svc")
        admitted = 0
        t0 = time.monotonic()
        while time.monotonic() < t0 + 1.0:
            try:
                g.call_sync(lambda: None)
                admitted += 1
            except RateLimitedError:
                pass
            time.sleep(0.0005)
        assert 40 <= admitted <= 60, admitted
        assert layer.status()["admitted"]["leased"] > 0
    finally:
        engine.close()
    wait_until(lambda: not layer.store._thread.is_alive(), "the store stops with the engine")


def test_a_forked_child_leases_slots_of_its_own(server: RedisServer) -> None:
    from tests.helpers.forking import run_in_child

    lim = _limiter(server, prefix(), rates=["200/s"])
    try:
        wait_until(lambda: lim.live == 1, "registered")
        lim.admit(time.monotonic())  # the lease thread knows the demand

        def child() -> dict[str, Any]:
            wait_until(lambda: lim.live == 2, "the child registered on its own", 10)
            t0 = time.monotonic()
            while time.monotonic() < t0 + 0.5:
                try:
                    lim.admit(time.monotonic())
                except RateLimitedError:
                    pass
                time.sleep(0.0005)
            return dict(lim.status()["admitted"])

        report = run_in_child(child, timeout=20)
        assert report["leased"] > 0
    finally:
        lim.store.close()
