"""Keyed guards: the lane registry (a breaker per key), its bounds and its ejection cap, driven by a
FakeClock. The calls here go straight to each lane's breaker, as the guarded call will."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
from typing import Any

import pytest

import policyengine
from policyengine._config.models import Policy
from policyengine._keys.keyed import policy_factories
from policyengine._keys.keyed_export import view
from policyengine._keys.partition import KeyRegistry
from policyengine._patterns.breaker import Breaker
from policyengine._telemetry.events import Event
from policyengine.exceptions import CircuitOpenError, PolicyValidationError
from policyengine.testing import FakeClock


class Boom(Exception):
    pass


def policy(partition: dict[str, Any] | None = None, **sections: Any) -> Policy:
    sections.setdefault("breaker", {"consecutive_failures": 3, "open_duration": "30s"})
    return Policy.model_validate({**sections, "partition": partition or {}})


def registry(
    clock: FakeClock, pol: Policy | None = None, events: list[Event] | None = None
) -> KeyRegistry:
    pol = pol or policy()
    assert pol.partition is not None
    sink = events.append if events is not None else (lambda e: None)
    return KeyRegistry("up", pol.partition, clock, sink, policy_factories("up", pol, clock))


def call(reg: KeyRegistry, key: str, ok: bool = True) -> str:
    """One call of `key`: "ok", "failed" or "rejected"."""
    breaker = reg.lane(key).breaker
    assert breaker is not None
    try:
        permit = breaker.acquire()
    except CircuitOpenError:
        return "rejected"
    if ok:
        breaker.on_success(permit, 0.0)
        return "ok"
    breaker.on_failure(permit, Boom(), 0.0)
    return "failed"


def hosts(n: int) -> list[str]:
    return [f"api-{i}.example.com" for i in range(n)]


# -- the options ------------------------------------------------------------------------------


def test_options_defaults_and_units() -> None:
    pol = policy({"max_open_ratio": "20%", "idle_ttl": "1m30s", "bulkhead": "shared"})
    assert pol.partition is not None
    assert (pol.partition.by, pol.partition.max_keys) == ("key", 1000)
    assert (pol.partition.idle_ttl, pol.partition.max_open_ratio) == (90.0, 0.2)


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("[policies.a.partition]\n", "policies.a.partition", "needs a [breaker] section"),
        (
            '[policies.a.breaker]\n[policies.a.partition]\nbulkhead = "per_key"\n',
            "policies.a.partition",
            "needs a [bulkhead] section",
        ),
        (
            '[policies.a.breaker]\n[policies.a.partition]\nidle_ttl = "0s"\n',
            "idle_ttl",
            "greater than 0s",
        ),
        ("[policies.a.breaker]\n[policies.a.partition]\nmax_keys = 0\n", "max_keys", "at least 1"),
        ('[policies.a.breaker]\n[policies.a.partition]\nby = "host"\n', "by", '"key"'),
        ("[policies.a.breaker]\n[policies.a.partition]\nmax_open = 1\n", "max_open", "unknown"),
    ],
)
def test_bad_partitions_are_errors_with_their_line(text: str, where: str, says: str) -> None:
    with pytest.raises(PolicyValidationError) as info:
        policyengine.loads(text, default=False)
    (issue,) = info.value.errors
    assert where in issue.path
    assert issue.line is not None and issue.line >= 1
    assert says in issue.message


def test_a_per_key_bulkhead_alone_is_a_partition() -> None:
    pol = Policy.model_validate(
        {"bulkhead": {"max_concurrent": 2}, "partition": {"bulkhead": "per_key"}}
    )
    reg = registry(FakeClock(), pol)
    a, b = reg.lane("a"), reg.lane("b")
    assert a.breaker is None and a.bulkhead is not None and a.bulkhead is not b.bulkhead
    assert reg.state("a") == "closed"


# -- one breaker per key ----------------------------------------------------------------------


def test_one_failing_host_among_ten_opens_only_its_own_breaker(clock: FakeClock) -> None:
    reg = registry(clock)
    names = hosts(10)
    for _ in range(5):
        for host in names:
            call(reg, host, ok=host != names[3])
    assert reg.keys() == {h: ("open" if h == names[3] else "closed") for h in names}
    assert call(reg, names[3]) == "rejected"
    assert all(call(reg, h) == "ok" for h in names if h != names[3])
    assert reg.stats()["keys_open"] == 1 and reg.would_trip == 0


def test_ten_of_ten_failing_open_at_most_the_ratio_the_rest_would_trip(clock: FakeClock) -> None:
    events: list[Event] = []
    reg = registry(clock, policy({"max_open_ratio": 0.5}), events)
    names = hosts(10)
    for host in names:
        reg.lane(host)  # ten known keys
    for _ in range(3):
        for host in names:
            call(reg, host, ok=False)
    states = reg.keys()
    assert sum(s == "open" for s in states.values()) == 5
    assert reg.stats()["keys_open"] == 5
    would = [e for e in events if e.name == "would_trip"]
    assert sorted(e.data["key"] for e in would) == sorted(h for h in names if states[h] != "open")
    assert all(e.data["reason"] == "consecutive_failures" for e in would)
    assert reg.would_trip == 5
    opened = [e for e in events if e.name == "state_change" and e.data["to"] == "open"]
    assert len(opened) == 5 and all(states[e.data["key"]] == "open" for e in opened)
    # the keys past the cap are still called: trips observed, never enforced
    spared = [h for h in names if states[h] == "closed"]
    assert all(call(reg, h, ok=False) == "failed" for h in spared for _ in range(6))
    assert reg.stats()["keys_open"] == 5 and reg.would_trip == 5 + 2 * 5


def test_a_trip_is_enforced_again_once_the_open_share_falls(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_open_ratio": 0.5}))
    a, b = "a.example", "b.example"
    for _ in range(3):
        call(reg, a, ok=False)
        call(reg, b, ok=False)
    assert reg.keys() == {a: "open", b: "closed"}  # 1 of 2 may be open
    clock.advance(30)
    assert call(reg, a) == "ok"  # the probe closes it
    for _ in range(3):
        call(reg, b, ok=False)
    assert reg.keys() == {a: "closed", b: "open"}


def test_at_least_one_key_may_open_whatever_the_ratio(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_open_ratio": 0.0}))
    for _ in range(3):
        call(reg, "only", ok=False)
    assert reg.state("only") == "open"


def test_a_reopen_after_a_failed_probe_is_not_a_new_trip(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_open_ratio": 0.5}))
    for host in hosts(2):
        reg.lane(host)
    for _ in range(3):
        call(reg, "api-0.example.com", ok=False)
    clock.advance(30)
    assert call(reg, "api-0.example.com", ok=False) == "failed"  # the probe fails
    assert reg.state("api-0.example.com") == "open" and reg.would_trip == 0


# -- bounds -----------------------------------------------------------------------------------


def test_max_keys_and_idle_ttl_bound_a_million_distinct_keys(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_keys": 1000, "idle_ttl": "10m"}))
    for _ in range(3):
        call(reg, "sick.example", ok=False)
    top = 0
    for i in range(1_000_000):
        lane = reg.lane(f"tenant-{i}")
        assert lane.breaker is not None
        if i % 1000 == 0:
            top = max(top, len(reg))
            clock.advance(0.01)
    assert top <= 1001 and len(reg) <= 1001  # the open key may sit on top of max_keys
    assert reg.state("sick.example") == "open"  # never dropped, however old
    assert reg.stats()["dropped"] >= 1_000_000 - 1000
    clock.advance(600)
    assert reg.keys() == {"sick.example": "half_open"}  # every closed key fell idle


def test_a_closed_key_unused_for_idle_ttl_starts_afresh(clock: FakeClock) -> None:
    reg = registry(clock, policy({"idle_ttl": "10m"}))
    call(reg, "a", ok=False)
    call(reg, "a", ok=False)
    clock.advance(599)
    call(reg, "b")
    assert reg.state("a") == "closed" and "a" in list(reg.keys())
    clock.advance(1)
    assert "a" not in list(reg.keys())
    call(reg, "a", ok=False)
    call(reg, "a", ok=False)
    assert reg.state("a") == "closed"  # two failures of a fresh breaker, not four


def test_an_open_key_is_never_dropped(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_keys": 3, "idle_ttl": "1m", "max_open_ratio": 1.0}))
    for _ in range(3):
        call(reg, "sick", ok=False)
    for i in range(50):
        call(reg, f"k{i}")
        clock.advance(10)
    assert "sick" in list(reg.keys()) and len(reg) <= 4
    breaker = reg.lane("sick").breaker
    assert breaker is not None and breaker.snapshot()["reopens"] == 0
    clock.advance(3600)
    assert reg.keys() == {"sick": "half_open"}
    assert call(reg, "sick") == "ok"  # closed now: droppable like any other
    clock.advance(60)
    assert reg.keys() == {}


def test_a_lane_with_calls_in_its_own_bulkhead_is_kept(clock: FakeClock) -> None:
    pol = policy({"max_keys": 1, "bulkhead": "per_key"}, bulkhead={"max_concurrent": 1})
    reg = registry(clock, pol)
    busy = reg.lane("busy").bulkhead
    assert busy is not None and busy.try_acquire()
    for i in range(5):
        reg.lane(f"k{i}")
    assert reg.lane("busy").bulkhead is busy  # kept: its slot is held
    busy.release()
    reg.lane("k9")
    assert "busy" not in list(reg.keys())


# -- reload -----------------------------------------------------------------------------------


def test_reconfigure_keeps_every_keys_state_and_applies_new_thresholds(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_open_ratio": 1.0}))
    for _ in range(3):
        call(reg, "open.example", ok=False)
    call(reg, "warm.example", ok=False)
    call(reg, "warm.example", ok=False)
    old = reg.lane("warm.example").breaker
    new = policy(
        {"max_open_ratio": 1.0}, breaker={"consecutive_failures": 5, "open_duration": "1m"}
    )
    assert new.partition is not None
    reg.reconfigure(new.partition, policy_factories("up", new, clock))
    assert reg.state("open.example") == "open"
    assert reg.lane("warm.example").breaker is old  # the same breaker, reconfigured
    call(reg, "warm.example", ok=False)
    call(reg, "warm.example", ok=False)
    assert reg.state("warm.example") == "closed"  # 4 in a row: under the new threshold of 5
    call(reg, "warm.example", ok=False)
    assert reg.state("warm.example") == "open"  # the fifth
    clock.advance(30)
    assert reg.state("open.example") == "half_open"  # opened under the old 30 s
    for _ in range(5):
        call(reg, "new.example", ok=False)
    assert reg.state("new.example") == "open"  # a new key gets the new options
    clock.advance(30)
    assert reg.state("new.example") == "open"  # and its 1 min open duration


def test_reconfigure_with_a_tighter_max_keys_drops_the_excess_at_once(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_keys": 10}))
    for host in hosts(10):
        call(reg, host)
    smaller = policy({"max_keys": 4})
    assert smaller.partition is not None
    reg.reconfigure(smaller.partition)
    assert list(reg.keys()) == hosts(10)[6:]


def test_reconfigure_resizes_per_key_bulkheads_in_place(clock: FakeClock) -> None:
    pol = policy({"bulkhead": "per_key"}, bulkhead={"max_concurrent": 1})
    reg = registry(clock, pol)
    bulkhead = reg.lane("a").bulkhead
    assert bulkhead is not None and bulkhead.try_acquire()
    wider = policy({"bulkhead": "per_key"}, bulkhead={"max_concurrent": 3})
    assert wider.partition is not None
    reg.reconfigure(wider.partition, policy_factories("up", wider, clock))
    assert reg.lane("a").bulkhead is bulkhead and bulkhead.max_concurrent == 3
    assert bulkhead.active == 1  # the held permit stays counted


# -- the probe limit per key ------------------------------------------------------------------


def _trip(reg: KeyRegistry, key: str, clock: FakeClock) -> None:
    for _ in range(3):
        call(reg, key, ok=False)
    clock.advance(30)
    assert reg.state(key) == "half_open"


def test_the_probe_limit_holds_per_key_across_threads(clock: FakeClock) -> None:
    pol = policy({"max_open_ratio": 1.0}, breaker={"consecutive_failures": 3, "half_open_calls": 2})
    reg = registry(clock, pol)
    keys = ["a", "b", "c"]
    for key in keys:
        reg.lane(key)
    _trip(reg, "a", clock)
    _trip(reg, "b", clock)
    admitted = {k: 0 for k in keys}
    lock = threading.Lock()
    start = threading.Barrier(24)

    def worker(key: str) -> None:
        start.wait()
        breaker = reg.lane(key).breaker
        assert breaker is not None
        try:
            breaker.acquire()
        except CircuitOpenError:
            return
        with lock:
            admitted[key] += 1

    threads = [threading.Thread(target=worker, args=(keys[i % 3],)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted == {"a": 2, "b": 2, "c": 8}


async def test_the_probe_limit_holds_per_key_across_coroutines(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_open_ratio": 1.0}))
    for key in ("a", "b"):
        _trip(reg, key, clock)
    gate = asyncio.Event()

    async def probe(key: str) -> str:
        breaker = reg.lane(key).breaker
        assert breaker is not None
        try:
            permit = breaker.acquire()
        except CircuitOpenError:
            return "rejected"
        await gate.wait()  # the probe is in flight while the others try
        breaker.on_success(permit, 0.0)
        return "probe"

    tasks = [asyncio.create_task(probe(k)) for k in ("a", "b") * 10]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert sorted(results[0::2]) == ["probe"] + ["rejected"] * 9
    assert sorted(results[1::2]) == ["probe"] + ["rejected"] * 9
    assert reg.keys() == {"a": "closed", "b": "closed"}


# -- events and views -------------------------------------------------------------------------


def test_events_carry_the_key_and_stale_breakers_are_ignored(clock: FakeClock) -> None:
    events: list[Event] = []
    reg = registry(clock, policy({"max_open_ratio": 0.0}), events)
    for _ in range(3):
        call(reg, "a", ok=False)
    spared = reg.lane("b").breaker
    assert spared is not None
    for _ in range(3):
        call(reg, "b", ok=False)  # past the cap: would trip, new breaker
    assert reg.lane("b").breaker is not spared
    assert spared.state == "open"  # the replaced one: its events reach nobody
    clock.advance(30)
    assert spared.state == "half_open"
    changes = [(e.data["key"], e.data["to"]) for e in events if e.name == "state_change"]
    assert changes == [("a", "open"), ("a", "half_open")] or changes == [("a", "open")]


def test_view_is_bounded_with_open_keys_first(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_open_ratio": 1.0}))
    for host in hosts(20):
        call(reg, host)
    for _ in range(3):
        call(reg, "api-0.example.com", ok=False)
    shown, other = view(reg, 5)
    assert len(shown) == 5 and other == {"closed": 15}
    assert shown["api-0.example.com"] == "open"
    assert list(shown)[1:] == [f"api-{i}.example.com" for i in (19, 18, 17, 16)]


# -- memory -----------------------------------------------------------------------------------


def _bytes_per_key(text: str, n: int = 2000) -> float:
    """tracemalloc bytes per key kept, each called once through `guard(x).key(k)`: the lane, its
    breaker and guard, the registry's entry, the cached keyed handle, the key itself."""
    engine = policyengine.loads(text, clock=FakeClock(), default=False)
    handle = engine.guard("up")
    handle.key("warm-up").call_sync(int)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        handle.key(f"host-{i:06d}.example.com").call_sync(int)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert handle.metrics()["keys"] == n + 1
    engine.close()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / n


def test_an_idle_closed_key_costs_at_most_2_kb() -> None:
    text = "[policies.up.breaker]\n[policies.up.partition]\nmax_keys = 10000\n"
    per_key = _bytes_per_key(text)
    assert per_key <= 2048, f"{per_key:.0f} bytes per idle closed key"


def test_lanes_are_garbage_as_soon_as_they_are_dropped() -> None:
    reg = registry(FakeClock(), policy({"max_keys": 10}))
    gc.collect()
    gc.disable()  # only reference counting frees what follows
    try:
        for i in range(100):
            call(reg, f"k{i}")
        alive = sum(
            isinstance(o, Breaker) and getattr(o._emit, "registry", None) is reg
            for o in gc.get_objects()
        )  # this registry's breakers (others may live in other tests' engines)
    finally:
        gc.enable()
    assert alive == len(reg) == 10  # no cycle keeps a dropped lane's breaker


def test_threads_adding_using_and_dropping_keys_keep_the_counts_true(clock: FakeClock) -> None:
    reg = registry(clock, policy({"max_keys": 50, "idle_ttl": "1m", "max_open_ratio": 0.3}))
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        import random

        rng = random.Random(seed)
        start.wait()
        try:
            for i in range(3000):
                key = f"k{rng.randrange(200)}"
                call(reg, key, ok=rng.random() < 0.6)
                if i % 500 == 0:
                    clock.advance(7)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    states = reg.keys()
    opened = sum(state != "closed" for state in states.values())
    assert reg.stats()["keys_open"] == opened == sum(lane.open for lane in reg.lanes())
    assert len(states) <= 50 + opened


def test_a_reload_that_drops_the_breaker_leaves_no_key_counted_open(clock: FakeClock) -> None:
    pol = policy({"bulkhead": "per_key", "max_open_ratio": 1.0}, bulkhead={"max_concurrent": 2})
    reg = registry(clock, pol)
    for _ in range(3):
        call(reg, "a", ok=False)
    assert reg.stats()["keys_open"] == 1
    bare = Policy.model_validate(
        {"bulkhead": {"max_concurrent": 2}, "partition": {"bulkhead": "per_key"}}
    )
    assert bare.partition is not None
    reg.reconfigure(bare.partition, policy_factories("up", bare, clock))
    assert reg.keys() == {"a": "closed"} and reg.stats()["keys_open"] == 0
    assert reg.lane("a").breaker is None
    assert pol.partition is not None
    reg.reconfigure(pol.partition, policy_factories("up", pol, clock))  # the breaker is back
    assert reg.lane("a").breaker is not None and reg.state("a") == "closed"
