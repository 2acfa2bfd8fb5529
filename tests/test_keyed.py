"""Keyed guards end to end: `guard(name).key(k)`, `.keys()`, metrics, reloads, threads, httpx."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import policyengine
from policyengine import CircuitOpenError, Engine, PolicyValidationError
from policyengine._telemetry.events import Event
from policyengine.httpx import GuardedSyncTransport, GuardedTransport
from policyengine.testing import FakeClock

UPSTREAMS = """
[policies.upstreams.breaker]
consecutive_failures = 3
open_duration = "30s"
half_open_calls = 1
[policies.upstreams.partition]
max_keys = 100
idle_ttl = "10m"
max_open_ratio = 0.5

[policies.plain.breaker]
consecutive_failures = 3
"""


class Boom(Exception):
    pass


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise Boom


def boom_sync() -> str:
    raise Boom


HOSTS = [f"api-{i}.example.com" for i in range(10)]


async def outcome(engine: Engine, key: str, fn: Callable[[], object] = ok) -> str:
    try:
        await engine.guard("upstreams").key(key).call(fn)  # type: ignore[arg-type]
    except CircuitOpenError:
        return "rejected"
    except Boom:
        return "failed"
    return "ok"


async def test_one_failing_host_opens_only_its_own_breaker(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS)
    g = engine.guard("upstreams")
    sick = HOSTS[7]
    for _ in range(3):
        for host in HOSTS:
            await outcome(engine, host, boom if host == sick else ok)
    assert await outcome(engine, sick) == "rejected"
    assert [await outcome(engine, h) for h in HOSTS if h != sick] == ["ok"] * 9
    assert g.key(sick).state == "open" and g.key(HOSTS[0]).state == "closed"
    assert g.keys() == {**{h: "closed" for h in HOSTS if h != sick}, sick: "open"}
    m = g.metrics()
    assert (m["keys"], m["keys_open"]) == (10, 1)
    assert m["rejections"]["circuit_open"] == 1  # the policy's totals count every key


async def test_ten_of_ten_failing_open_half_the_rest_would_trip(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS)
    events: list[Event] = []
    engine.add_listener(events.append)
    for host in HOSTS:
        await outcome(engine, host)
    for _ in range(3):
        for host in HOSTS:
            await outcome(engine, host, boom)
    m = engine.guard("upstreams").metrics()
    assert (m["keys_open"], m["would_trip"]) == (5, 5)
    assert sorted(e.data["key"] for e in events if e.name == "would_trip") == sorted(
        h for h, state in engine.guard("upstreams").keys().items() if state == "closed"
    )
    # the spared half still gets called: their trips are observed, not enforced
    spared = [h for h, s in engine.guard("upstreams").keys().items() if s == "closed"]
    assert [await outcome(engine, h, boom) for h in spared] == ["failed"] * 5


async def test_a_call_without_a_key_runs_in_the_key_empty_string(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS)
    g = engine.guard("upstreams")
    assert await g.call(ok) == "ok"
    for _ in range(3):
        with pytest.raises(Boom):
            await g.call(boom)
    assert g.keys() == {"": "open"} and g.state == "open" and g.key("").state == "open"
    with pytest.raises(CircuitOpenError):
        await g.call(ok)
    assert await g.key("other").call(ok) == "ok"  # keys are apart from the unkeyed lane
    with pytest.raises(CircuitOpenError):
        g.call_sync(lambda: "ok")
    with pytest.raises(CircuitOpenError):
        async with g:
            pass


async def test_a_policy_without_partition_ignores_the_key(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS)
    g = engine.guard("plain")
    for host in HOSTS[:3]:
        with pytest.raises(Boom):
            await g.key(host).call(boom)
    assert g.state == "open" and g.key("anything").state == "open" and g.keys() == {}


async def test_key_metrics_and_reading_create_no_key(make_engine: Callable[[str], Engine]) -> None:
    engine = make_engine(UPSTREAMS)
    g = engine.guard("upstreams")
    assert g.key("never-called").state == "closed"
    m = g.key("never-called").metrics()
    assert (m["key"], m["kept"], m["state"], m["breaker"]) == (
        "never-called",
        False,
        "closed",
        None,
    )
    assert g.keys() == {}
    await g.key("a").call(ok)
    with pytest.raises(Boom):
        await g.key("a").call(boom)
    m = g.key("a").metrics()
    assert m["kept"] and m["breaker"] is not None
    assert m["breaker"]["consecutive_failures"] == 1
    assert (m["calls"], m["successes"], m["failures"]) == (2, 1, 1)  # the policy's totals


async def test_a_keyed_scope_and_decorator_use_the_keys_breaker(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS)
    keyed = engine.guard("upstreams").key("db-1")

    @keyed
    async def fail() -> None:
        raise Boom

    for _ in range(3):
        with pytest.raises(Boom):
            await fail()
    with pytest.raises(CircuitOpenError):
        async with keyed:
            pass
    with pytest.raises(CircuitOpenError), keyed:
        pass
    async with engine.guard("upstreams").key("db-2"):
        pass


OBSERVE = '\n[policies.upstreams]\nmode = "observe"\n[policies.upstreams.breaker]'


async def test_observe_mode_counts_keyed_trips_but_never_rejects(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS.replace("\n[policies.upstreams.breaker]", OBSERVE, 1))
    for _ in range(5):
        assert await outcome(engine, "a", boom) == "failed"
    assert engine.guard("upstreams").key("a").state == "open"  # the state it would be in
    assert engine.guard("upstreams").metrics()["observed"]["would_reject"] == 2


# -- reload -----------------------------------------------------------------------------------


@pytest.fixture
def on_disk(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[[str], tuple[Engine, Path]]]:
    engines: list[Engine] = []

    def make(text: str) -> tuple[Engine, Path]:
        path = tmp_path / "policies.toml"
        path.write_text(text)
        engine = policyengine.load(path, clock=clock, default=False)
        engines.append(engine)
        return engine, path

    yield make
    for engine in engines:
        engine.close()


async def test_a_reload_keeps_every_keys_state_and_applies_new_thresholds(
    on_disk: Callable[[str], tuple[Engine, Path]], clock: FakeClock
) -> None:
    text = UPSTREAMS.replace("max_open_ratio = 0.5", "max_open_ratio = 1.0")
    engine, path = on_disk(text)
    for _ in range(3):
        await outcome(engine, "sick", boom)
    for _ in range(2):
        await outcome(engine, "warm", boom)
    await outcome(engine, "fine")
    path.write_text(text.replace("= 3\nopen_duration", "= 4\nopen_duration"))
    assert engine.reload() is True
    g = engine.guard("upstreams")
    assert g.keys() == {"sick": "open", "warm": "closed", "fine": "closed"}
    assert await outcome(engine, "warm", boom) == "failed"
    assert g.key("warm").state == "closed"  # 3 in a row, under the new threshold of 4
    assert await outcome(engine, "warm", boom) == "failed"
    assert g.key("warm").state == "open"
    clock.advance(30)
    assert g.key("sick").state == "half_open"


async def test_a_reload_that_forces_open_reaches_every_key_at_once(
    on_disk: Callable[[str], tuple[Engine, Path]],
) -> None:
    engine, path = on_disk(UPSTREAMS)
    for host in HOSTS[:4]:
        await outcome(engine, host)
    path.write_text(
        UPSTREAMS.replace('open_duration = "30s"', 'open_duration = "30s"\nforce = "open"')
    )
    assert engine.reload() is True
    g = engine.guard("upstreams")
    assert g.keys() == {h: "forced_open" for h in HOSTS[:4]}  # not capped: an operator's order
    assert g.metrics()["keys_open"] == 4 and await outcome(engine, HOSTS[0]) == "rejected"
    path.write_text(UPSTREAMS)
    assert engine.reload() is True
    assert g.keys() == {h: "closed" for h in HOSTS[:4]}
    assert g.metrics()["keys_open"] == 0 and await outcome(engine, HOSTS[0]) == "ok"


async def test_a_bad_reload_touches_no_key(on_disk: Callable[[str], tuple[Engine, Path]]) -> None:
    engine, path = on_disk(UPSTREAMS)
    for _ in range(2):
        await outcome(engine, "warm", boom)
    path.write_text(UPSTREAMS.replace("max_keys = 100", "max_keys = 0"))
    assert engine.reload() is False
    await outcome(engine, "warm", boom)
    assert engine.guard("upstreams").key("warm").state == "open"  # still 3, not 4


# -- the probe limit per key, through the handles ---------------------------------------------


async def test_the_probe_limit_holds_per_key_across_coroutines(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    engine = make_engine(UPSTREAMS.replace("max_open_ratio = 0.5", "max_open_ratio = 1.0"))
    g = engine.guard("upstreams")
    for key in ("a", "b"):
        for _ in range(3):
            await outcome(engine, key, boom)
    clock.advance(30)
    gate = asyncio.Event()
    entered: list[str] = []

    def probe(key: str) -> Callable[[], object]:
        async def run() -> str:
            entered.append(key)
            await gate.wait()
            return "ok"

        return run

    tasks = [asyncio.create_task(outcome(engine, k, probe(k))) for k in ("a", "b") * 10]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert sorted(entered) == ["a", "b"]
    assert results.count("ok") == 2 and results.count("rejected") == 18
    assert g.keys() == {"a": "closed", "b": "closed"}


def test_the_probe_limit_holds_per_key_across_threads(
    make_engine: Callable[[str], Engine], clock: FakeClock
) -> None:
    engine = make_engine(
        UPSTREAMS.replace("half_open_calls = 1", "half_open_calls = 2").replace(
            "max_open_ratio = 0.5", "max_open_ratio = 1.0"
        )
    )
    g = engine.guard("upstreams")
    for key in ("a", "b", "c"):
        for _ in range(3):
            with pytest.raises(Boom):
                g.key(key).call_sync(boom_sync)
    clock.advance(30)
    release = threading.Event()
    start = threading.Barrier(30)
    admitted: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    refused = [0]
    settled = threading.Condition()

    def probe(key: str) -> str:
        with settled:
            admitted[key] += 1
            settled.notify_all()
        release.wait(10)
        return "ok"

    def worker(key: str) -> None:
        start.wait()
        try:
            g.key(key).call_sync(probe, key)
        except CircuitOpenError:
            with settled:
                refused[0] += 1
                settled.notify_all()

    threads = [threading.Thread(target=worker, args=("abc"[i % 3],)) for i in range(30)]
    for t in threads:
        t.start()
    with settled:  # every thread admitted (and holding its probe) or refused
        assert settled.wait_for(lambda: sum(admitted.values()) + refused[0] == 30, timeout=10)
    release.set()
    for t in threads:
        t.join()
    assert admitted == {"a": 2, "b": 2, "c": 2} and refused[0] == 24
    assert g.keys() == {"a": "closed", "b": "closed", "c": "closed"}  # two probes each passed


# -- validation -------------------------------------------------------------------------------


def test_an_adaptive_limit_per_key_is_refused() -> None:
    text = (
        '[policies.a.bulkhead]\nkind = "adaptive"\nalgorithm = "aimd"\n'
        '[policies.a.partition]\nbulkhead = "per_key"\n'
    )
    with pytest.raises(PolicyValidationError, match="its limit is the policy's"):
        policyengine.loads(text, default=False)


def test_a_thread_pool_per_key_is_refused() -> None:
    text = (
        '[policies.a.bulkhead]\nkind = "threads"\nmax_concurrent = 2\n'
        '[policies.a.partition]\nbulkhead = "per_key"\n'
    )
    with pytest.raises(PolicyValidationError, match="thread pool per key"):
        policyengine.loads(text, default=False)


# -- httpx ------------------------------------------------------------------------------------


def _service(sick: str) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.host == sick else 200)

    return httpx.MockTransport(answer)


async def test_httpx_keys_a_partitioned_policy_by_authority(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS)
    transport = GuardedTransport("upstreams", _service("b.example"), engine=engine)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get("https://b.example/x")).status_code == 503
        with pytest.raises(CircuitOpenError):
            await client.get("https://b.example/y")
        assert (await client.get("https://a.example/x")).status_code == 200
        assert (await client.get("https://b.example:8443/x")).status_code == 503  # a key of its own
    assert engine.guard("upstreams").keys() == {
        "b.example": "open",
        "a.example": "closed",
        "b.example:8443": "closed",
    }


def test_httpx_sync_keys_by_authority_and_never_by_user_info(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(UPSTREAMS)
    transport = GuardedSyncTransport("upstreams", _service("none"), engine=engine)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://user:secret@a.example/x").status_code == 200
    assert engine.guard("upstreams").keys() == {"a.example": "closed"}


# -- exporters: a bounded per-key view --------------------------------------------------------


async def _hundred_keys_three_open(engine: Engine) -> None:
    for i in range(100):
        await outcome(engine, f"k{i:03d}")
    for key in ("k010", "k020", "k030"):
        for _ in range(3):
            await outcome(engine, key, boom)


async def test_prometheus_shows_at_most_n_keys_open_first_the_rest_as_other(
    make_engine: Callable[[str], Engine],
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from policyengine.prometheus import PolicyEngineCollector

    engine = make_engine(UPSTREAMS)
    await _hundred_keys_three_open(engine)
    registry = prometheus_client.CollectorRegistry()
    registry.register(PolicyEngineCollector(engine, keys_per_guard=5))
    samples = [s for f in registry.collect() for s in f.samples]
    states = {
        s.labels["key"]: s.value
        for s in samples
        if s.name == "policyengine_key_state" and s.labels["guard"] == "upstreams"
    }
    assert len(states) == 6 and states["other"] == 0  # 5 keys, then every other one folded
    assert all(states[k] == 1 for k in ("k010", "k020", "k030"))
    counts = {s.labels["state"]: s.value for s in samples if s.name == "policyengine_keys"}
    assert counts == {"closed": 97, "open": 3, "half_open": 0, "forced_open": 0}
    assert not any(s.labels.get("guard") == "plain" for s in samples if "key" in s.name)
    for i in range(100, 1000):  # more traffic, more keys: no more series
        await outcome(engine, f"k{i:03d}")
    again = [s for f in registry.collect() for s in f.samples if s.name == "policyengine_key_state"]
    assert len([s for s in again if s.labels["guard"] == "upstreams"]) == 6


async def test_an_open_key_past_the_limit_shows_in_other(
    make_engine: Callable[[str], Engine],
) -> None:
    from policyengine._keys.keyed_export import key_states

    engine = make_engine(UPSTREAMS)
    await _hundred_keys_three_open(engine)
    view = dict(key_states(engine._lookup("upstreams"), 2))
    assert len(view) == 3 and view["other"] == 1


async def test_opentelemetry_shows_the_same_bounded_view(
    make_engine: Callable[[str], Engine],
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from policyengine.otel import instrument

    engine = make_engine(UPSTREAMS)
    await _hundred_keys_three_open(engine)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentation = instrument(engine, meter_provider=provider, keys_per_guard=4)
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[tuple[str, frozenset[tuple[str, object]]], float] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    attrs = frozenset((point.attributes or {}).items())
                    points[(metric.name, attrs)] = point.value  # type: ignore[union-attr]
    keys = {
        dict(attrs)["key"]: value
        for (name, attrs), value in points.items()
        if name == "resilience.policyengine.key.state"
    }
    assert len(keys) == 5 and keys["k010"] == 1 and keys["other"] == 0
    trips = points[
        ("resilience.policyengine.keys.would_trip", frozenset({("guard.name", "upstreams")}))
    ]
    assert trips == 0
    instrumentation.close()
    provider.shutdown()


# -- fork -------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_locks_held_at_a_fork_do_not_deadlock_a_keyed_call_in_the_child(
    make_engine: Callable[[str], Engine],
) -> None:
    from policyengine._keys.keyed_handle import partition_of
    from tests.helpers.forking import CHILD_TIMEOUT, run_in_child

    engine = make_engine(UPSTREAMS)
    engine.guard("upstreams").key("a").call_sync(lambda: 1)
    registry = partition_of(engine._lookup("upstreams"))
    assert registry is not None
    breaker = registry.lane("a").breaker
    assert breaker is not None
    locks = [registry._lock, breaker._lock]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(CHILD_TIMEOUT)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)

        def child() -> dict[str, object]:
            handle = engine.guard("upstreams")
            for _ in range(3):
                with contextlib.suppress(Boom):
                    handle.key("a").call_sync(boom_sync)
            return {"a": handle.key("a").state, "keys": handle.keys()}

        report = run_in_child(child, then=release.set)
    finally:
        release.set()
        holder.join(10)
    assert report == {"a": "open", "keys": {"a": "open"}}
    assert engine.guard("upstreams").key("a").state == "closed"  # the parent's own lanes


async def test_a_bulkhead_per_key_fills_for_its_key_only(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(
        UPSTREAMS.replace("max_open_ratio = 0.5", 'max_open_ratio = 0.5\nbulkhead = "per_key"')
        + "[policies.upstreams.bulkhead]\nmax_concurrent = 1\n"
    )
    g = engine.guard("upstreams")
    gate = asyncio.Event()

    async def hold() -> str:
        await gate.wait()
        return "ok"

    held = asyncio.create_task(g.key("a").call(hold))
    await asyncio.sleep(0)
    with pytest.raises(policyengine.BulkheadFullError):
        await g.key("a").call(ok)
    assert await g.key("b").call(ok) == "ok"  # another key, another bulkhead
    assert g.key("a").metrics()["bulkhead"] == {
        "active": 1,
        "max_concurrent": 1,
        "queued": 0,
        "max_queue": 0,
    }
    gate.set()
    assert await held == "ok"


async def test_the_policys_layers_serve_every_key_together(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(
        UPSTREAMS + '[policies.upstreams.rate_limit]\nrates = ["1/s"]\nmax_wait = "0s"\n'
    )
    g = engine.guard("upstreams")
    assert await g.key("a").call(ok) == "ok"
    with pytest.raises(policyengine.RateLimitedError):  # one limit for the policy, not per key
        await g.key("b").call(ok)


async def test_a_drill_reaches_keyed_and_unkeyed_calls(
    make_engine: Callable[[str], Engine],
) -> None:
    engine = make_engine(
        UPSTREAMS
        + '[policies.upstreams.chaos]\nfor = "15m"\n'
        + 'fault = { rate = 1.0, error = "ConnectionError" }\n'
    )
    g = engine.guard("upstreams")
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await g.key("a").call(ok)
    assert g.key("a").state == "open"  # the injected faults count in the key's own breaker
    with pytest.raises(ConnectionError):
        g.key("b").call_sync(lambda: "ok")
    with pytest.raises(ConnectionError):
        g.call_sync(lambda: "ok")  # the key "", through the drill too
    assert g.metrics()["injected"] == 5
    assert g.keys() == {"a": "open", "b": "closed", "": "closed"}
