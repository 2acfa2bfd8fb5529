"""Reload semantics through real files and `engine.reload()`: all or nothing, state carried over,
bulkheads resized under load, removed policies, `force`, failures reported once, status()."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import policyengine
from policyengine import CircuitOpenError, Engine, Event, PolicyValidationError
from policyengine._config.loader import load_text
from policyengine._patterns.breaker import Breaker
from policyengine.testing import FakeClock

BREAKER = """
[policies.api.breaker]
consecutive_failures = 3
open_duration = "30s"

[policies.other.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "10ms"
jitter = "none"
"""


class Events:
    """Collects the engine's reload events."""

    def __init__(self, engine: Engine) -> None:
        self.items: list[Event] = []
        engine.add_listener(self._on)

    def _on(self, event: Event) -> None:
        if event.name in ("reload", "reload_failed", "policy_removed"):
            self.items.append(event)

    def names(self) -> list[str]:
        return [e.name for e in self.items]


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    return tmp_path / "policies.toml"


@pytest.fixture
def load(policy_file: Path, clock: FakeClock) -> Iterator[Callable[[str], tuple[Engine, Events]]]:
    """Write `text` to the policy file and load it (no watching: tests call `reload()`)."""
    engines: list[Engine] = []

    def make(text: str) -> tuple[Engine, Events]:
        policy_file.write_text(text)
        engine = policyengine.load(policy_file, clock=clock, default=False)
        engines.append(engine)
        return engine, Events(engine)

    yield make
    for engine in engines:
        engine.close()


async def fail() -> None:
    raise ConnectionError("down")


async def ok() -> str:
    return "ok"


def raise_down() -> None:
    raise ConnectionError("down")


def breaker_of(engine: Engine, name: str = "api") -> Breaker:
    breaker = engine.guards[name].breaker
    assert breaker is not None
    return breaker


async def trip(engine: Engine, name: str = "api", n: int = 3) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            await engine.guard(name).call(fail)


# ------------------------------------------------------------------------ state carried over
async def test_unchanged_policy_keeps_its_guard_and_a_changed_one_its_breaker(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, events = load(BREAKER)
    api, other = engine.guards["api"], engine.guards["other"]
    await trip(engine, n=2)
    policy_file.write_text(BREAKER.replace("max_attempts = 2", "max_attempts = 3"))
    assert engine.reload() is True
    assert engine.guards["api"] is api  # unchanged: the very same guard, counts and all
    assert engine.guards["other"] is not other
    assert breaker_of(engine).snapshot()["consecutive_failures"] == 2
    changes = events.items[-1].data["changes"]
    assert changes == {"api": "unchanged", "other": "kept state"}


async def test_an_open_breaker_stays_open_when_open_duration_is_edited(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path, clock: FakeClock
) -> None:
    engine, events = load(BREAKER)
    breaker = engine.guards["api"].breaker
    await trip(engine)
    assert engine.guard("api").state == "open"
    policy_file.write_text(BREAKER.replace('open_duration = "30s"', 'open_duration = "5s"'))
    assert engine.reload() is True
    g = engine.guard("api")
    assert g.current().breaker is breaker and g.state == "open"
    assert events.items[-1].data["changes"]["api"] == "kept state"
    with pytest.raises(CircuitOpenError) as info:
        await g.call(ok)
    assert info.value.retry_after == pytest.approx(30.0)  # the current open deadline is kept
    clock.advance(30)
    assert await g.call(ok) == "ok" and g.state == "closed"
    await trip(engine)
    clock.advance(5)  # the new duration applies from the next open
    assert g.state == "half_open"


async def test_a_lower_threshold_judges_the_counts_already_kept(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, _ = load(BREAKER.replace("consecutive_failures = 3", "consecutive_failures = 5"))
    await trip(engine, n=2)
    policy_file.write_text(BREAKER)
    engine.reload()
    await trip(engine, n=1)  # 2 kept + 1 = the new threshold of 3
    assert engine.guard("api").state == "open"


WINDOWED = """
[policies.api.breaker]
window = "count"
window_size = 10
minimum_calls = 4
failure_rate = 0.5
open_duration = "30s"
"""


async def test_a_new_window_shape_rebuilds_the_window_but_keeps_open_or_closed(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, events = load(WINDOWED)
    g = engine.guard("api")
    await trip(engine, n=4)
    assert g.state == "open"
    policy_file.write_text(WINDOWED.replace("window_size = 10", "window_size = 20"))
    engine.reload()
    assert g.state == "open"
    assert events.items[-1].data["changes"]["api"] == "kept state, new window"

    engine2, _ = load(WINDOWED)  # closed, with outcomes in the window
    await trip(engine2, n=2)
    assert breaker_of(engine2).snapshot()["window_calls"] == 2
    policy_file.write_text(
        WINDOWED.replace('window = "count"', 'window = "time"\nwindow_duration = "60s"').replace(
            "window_size = 10\n", ""
        )
    )
    engine2.reload()
    snap = breaker_of(engine2).snapshot()
    assert (snap["state"], snap["window_calls"]) == ("closed", 0)


async def test_a_breaker_that_changes_kind_is_reported_as_reset_state(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, events = load(BREAKER)
    await trip(engine)
    policy_file.write_text(
        BREAKER.replace('open_duration = "30s"', 'open_duration = "30s"\nshared = true')
    )
    engine.reload()
    assert events.items[-1].data["changes"]["api"] == "reset state"
    assert engine.status()["policies"]["api"] == "reset state"
    assert engine.guard("api").state == "closed"


# --------------------------------------------------------------------------- bulkhead resize
BULKHEAD = """
[policies.db.bulkhead]
max_concurrent = {n}
max_queue = 10
max_wait = "10s"
"""


class Gate:
    """Calls that run until released; counts how many run at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0
        self.release = asyncio.Queue[None]()
        self.entered = asyncio.Event()

    async def __call__(self) -> str:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        self.entered.set()
        try:
            await self.release.get()
        finally:
            self.inside -= 1
        return "done"

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not predicate():
                await asyncio.sleep(0.001)

    async def reach(self, read: Callable[[], object], value: object) -> None:
        await self.until(lambda: read() == value)


async def test_a_shrunk_bulkhead_admits_nothing_until_in_flight_calls_drain(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, _ = load(BULKHEAD.format(n=3))
    g = engine.guard("db")
    bulkhead = g.current().bulkhead
    assert bulkhead is not None
    gate = Gate()
    running = [asyncio.create_task(g.call(gate)) for _ in range(3)]
    await gate.until(lambda: gate.inside == 3)
    policy_file.write_text(BULKHEAD.format(n=1))
    engine.reload()
    assert g.current().bulkhead is bulkhead and bulkhead.max_concurrent == 1
    assert bulkhead.active == 3  # permits held by calls in flight stay counted
    late = [asyncio.create_task(g.call(gate)) for _ in range(3)]
    await gate.until(lambda: bulkhead.queued == 3)
    for left in (2, 1):
        gate.release.put_nowait(None)
        await gate.reach(lambda: gate.inside, left)
        await asyncio.sleep(0.01)
        assert bulkhead.queued == 3 and gate.inside == left  # nobody admitted over the limit
    gate.peak = 0
    for waiting in (2, 1, 0):  # drained to 0: then one at a time, in order
        gate.release.put_nowait(None)
        await gate.reach(lambda: (bulkhead.queued, gate.inside), (waiting, 1))
    gate.release.put_nowait(None)
    results = await asyncio.gather(*running, *late)
    assert results == ["done"] * 6
    assert gate.inside == 0 and bulkhead.active == 0 and bulkhead.queued == 0
    assert gate.peak == 1


async def test_a_grown_bulkhead_wakes_queued_callers_at_once(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, _ = load(BULKHEAD.format(n=1))
    g = engine.guard("db")
    bulkhead = g.current().bulkhead
    assert bulkhead is not None
    gate = Gate()
    tasks = [asyncio.create_task(g.call(gate)) for _ in range(4)]
    await gate.until(lambda: gate.inside == 1 and bulkhead.queued == 3)
    policy_file.write_text(BULKHEAD.format(n=5))
    engine.reload()
    await gate.until(lambda: gate.inside == 4)
    assert bulkhead.active == 4 and bulkhead.queued == 0
    for _ in range(4):
        gate.release.put_nowait(None)
    assert await asyncio.gather(*tasks) == ["done"] * 4
    assert bulkhead.active == 0 and gate.peak == 4


# ------------------------------------------------------------------ in flight, removed, force
async def test_a_call_in_flight_finishes_under_the_policy_it_started_with(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, _ = load(BREAKER)
    g = engine.guard("other")
    started, go = asyncio.Event(), asyncio.Event()
    attempts = 0

    async def flaky_once() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            started.set()
            await go.wait()
            raise ConnectionError("first attempt fails")
        return "second attempt"

    task = asyncio.create_task(g.call(flaky_once))
    await started.wait()
    policy_file.write_text(BREAKER.replace("max_attempts = 2", "max_attempts = 1"))
    engine.reload()
    assert g.current().max_attempts == 1
    go.set()
    assert await task == "second attempt"  # retried under the policy it started with
    with pytest.raises(ConnectionError):  # a new call: no retry under the new policy
        await g.call(fail)
    assert g.metrics()["retries"] == 1


async def test_a_removed_policy_keeps_serving_its_handles_with_one_warning(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, events = load(BREAKER)
    g = engine.guard("other")
    old = g.current()
    policy_file.write_text(BREAKER.split("[policies.other.retry]")[0])
    assert engine.reload() is True
    assert events.names() == ["policy_removed", "reload"]
    assert events.items[0].guard == "other"
    assert events.items[1].data["changes"] == {"api": "unchanged", "other": "removed"}
    assert g.current() is old and await g.call(ok) == "ok"
    status = engine.status()
    assert status["removed"] == ["other"] and status["policies"]["other"] == "removed"
    policy_file.write_text(BREAKER.split("[policies.other.retry]")[0] + "\n# an edit\n")
    engine.reload()
    assert events.names().count("policy_removed") == 1  # warned once, not at every reload
    assert "other" not in engine.names()
    policy_file.write_text(BREAKER)  # back again: the guard its handles kept using, state and all
    engine.reload()
    assert engine.status()["removed"] == [] and "other" in engine.names()
    assert g.current() is old and events.items[-1].data["changes"]["other"] == "unchanged"


async def test_force_open_isolates_on_the_next_call_and_removing_it_restores(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, _ = load(BREAKER)
    g = engine.guard("api")
    assert await g.call(ok) == "ok"
    policy_file.write_text(
        BREAKER.replace('open_duration = "30s"', 'open_duration = "30s"\nforce = "open"')
    )
    engine.reload()
    assert g.state == "forced_open"
    with pytest.raises(CircuitOpenError):
        await g.call(ok)
    policy_file.write_text(BREAKER)
    engine.reload()
    assert g.state == "closed" and await g.call(ok) == "ok"


# ------------------------------------------------------------------------ failures, status
def test_a_bad_file_at_start_up_fails_fast(policy_file: Path) -> None:
    policy_file.write_text("[policies.api.retry]\nmax_attempts = 0\n")
    with pytest.raises(PolicyValidationError) as info:
        policyengine.load(policy_file, watch=True, default=False)
    issue = info.value.errors[0]
    assert issue.file == str(policy_file) and issue.path.startswith("policies.api.retry")
    assert not [t for t in threading.enumerate() if t.name.startswith("policyengine-watch")]


async def test_a_bad_edit_keeps_the_policies_and_is_loud_and_the_next_good_edit_applies(
    load: Callable[[str], tuple[Engine, Events]],
    policy_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, events = load(BREAKER)
    before = engine.status()
    guards = engine.guards
    policy_file.write_text(BREAKER.replace("consecutive_failures = 3", "consecutive_failures = -1"))
    with caplog.at_level(logging.ERROR, logger="policyengine"):
        assert engine.reload() is False
    assert engine.guards is guards  # nothing swapped
    status = engine.status()
    assert status["version"] == before["version"] and status["failed_reloads"] == 1
    assert "policies.api.breaker.consecutive_failures" in status["last_error"]
    failed = events.items[-1]
    assert failed.name == "reload_failed" and failed.data["version"] == before["version"]
    issue = failed.data["issues"][0]
    assert (issue["file"], issue["path"], issue["line"]) == (
        str(policy_file),
        "policies.api.breaker.consecutive_failures",
        3,
    )
    assert any(
        r.levelno == logging.ERROR and str(policy_file) in r.getMessage() for r in caplog.records
    )
    policy_file.write_text(BREAKER.replace("max_attempts = 2", "max_attempts = 4"))
    assert engine.reload() is True
    assert engine.status()["last_error"] is None and engine.status()["reloads"] == 1


def test_last_error_clears_when_the_files_are_back_to_the_policy_in_force(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, _ = load(BREAKER)
    version = engine.status()["version"]
    policy_file.write_text("this is = = not toml")
    engine.reload()
    assert engine.status()["last_error"] is not None
    policy_file.write_text(BREAKER)  # reverted by hand: the same content as in force
    engine.reload()
    status = engine.status()
    assert status["last_error"] is None and status["version"] == version


def test_the_same_failure_is_reported_once(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, events = load(BREAKER)
    policy_file.unlink()
    for _ in range(5):
        assert engine.reload() is False
    assert events.names() == ["reload_failed"] and engine.status()["failed_reloads"] == 1
    assert "no such file" in engine.status()["last_error"]
    policy_file.write_text("[policies.x]\nmode = 'nope'\n")  # a different error is new
    engine.reload()
    assert events.names() == ["reload_failed", "reload_failed"]
    policy_file.write_text(BREAKER)
    assert engine.reload() is True and engine.status()["last_error"] is None


def test_touching_without_a_change_does_nothing(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, events = load(BREAKER)
    guards = engine.guards
    policy_file.touch()
    policy_file.write_text(BREAKER)
    assert engine.reload() is False
    assert engine.guards is guards and events.items == [] and engine.status()["reloads"] == 0


def test_status_reports_version_time_sources_and_changes(
    load: Callable[[str], tuple[Engine, Events]], policy_file: Path
) -> None:
    engine, events = load(BREAKER)
    first = engine.status()
    assert first["version"] == load_text(BREAKER).version
    assert first["sources"] == [str(policy_file)] and first["watching"] is False
    text = BREAKER + '\n[policies.new.timeout]\ntotal = "1s"\n'
    policy_file.write_text(text)
    engine.reload()
    status = engine.status()
    assert status["version"] == load_text(text).version != first["version"]
    assert status["loaded_at"] >= first["loaded_at"]
    assert status["policies"] == {"api": "unchanged", "other": "unchanged", "new": "new"}
    reload = events.items[-1]
    assert reload.data["previous"] == first["version"]
    assert reload.data["version"] == status["version"]


def test_a_strict_engine_reloads_strictly(policy_file: Path, clock: FakeClock) -> None:
    good = '[policies.api.timeout]\ntotal = "1s"\nattempt = "1s"\n'
    # the worst case of this retry schedule does not fit in `total`: a warning, an error if strict
    slow = (
        good
        + '\n[policies.api.retry]\nmax_attempts = 5\nbackoff = "constant"\ninitial_delay = "1s"\n'
    )
    policy_file.write_text(good)
    with policyengine.load(policy_file, clock=clock, default=False, strict=True) as engine:
        policy_file.write_text(slow)
        assert engine.reload() is False and engine.status()["failed_reloads"] == 1
    with policyengine.load(policy_file, clock=clock, default=False) as lenient:
        assert lenient.status()["warnings"]


def test_settle_waits_out_a_save_in_progress(
    load: Callable[[str], tuple[Engine, Events]],
    policy_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from policyengine._registry import reloads as _engine

    engine, events = load(BREAKER)
    finished = BREAKER.replace("max_attempts = 2", "max_attempts = 3")
    # the writer finishes while the reload waits: simulate it in the engine's sleep
    monkeypatch.setattr(
        _engine, "time", types.SimpleNamespace(sleep=lambda s: policy_file.write_text(finished))
    )
    policy_file.write_text("[policies.api.brea")  # half written: invalid
    assert engine.reload(settle=0.1) is True
    assert events.names() == ["reload"] and engine.status()["failed_reloads"] == 0
    policy_file.write_text("")  # every policy gone at once: also waited out
    assert engine.reload(settle=0.1) is False  # the "writer" restored `finished`
    assert engine.names() == ["api", "other"]


def test_a_new_window_shape_is_reported_as_kept_state_with_a_new_window(clock: FakeClock) -> None:
    base = "[policies.api.breaker]\nfailure_rate = 0.5\nminimum_calls = 5\nwindow_size = {n}\n"
    engine = policyengine.loads(base.format(n=10), clock=clock, default=False)
    try:
        engine.apply(load_text(base.format(n=20)))
        assert engine.status()["policies"]["api"] == "kept state, new window"
        engine.apply(load_text(base.format(n=20).replace("0.5", "0.6")))
        assert engine.status()["policies"]["api"] == "kept state"
    finally:
        engine.close()


def test_a_state_section_change_applies_without_restart(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """`[state]` applies on reload. With the memory backend its other settings mean nothing, so
    changing them changes nothing else; `status()` has no `state_pending_restart` any more."""
    text = "[policies.api.breaker]\nconsecutive_failures = 1\nshared = true\n"
    engine = policyengine.loads(text, clock=clock, default=False)
    seen: list[Event] = []
    engine.add_listener(seen.append)
    try:
        assert engine.status()["state"] == {"backend": "memory"}
        assert "state_pending_restart" not in engine.status()
        with pytest.raises(ConnectionError):
            engine.guard("api").call_sync(raise_down)
        breaker = breaker_of(engine)
        with caplog.at_level(logging.INFO, logger="policyengine"):
            engine.apply(load_text('[state]\nprefix = "other"\non_error = "open"\n' + text))
        status = engine.status()
        assert status["state"] == {"backend": "memory"}
        assert status["policies"] == {"api": "unchanged"}
        assert breaker_of(engine) is breaker and breaker.state == "open"  # state kept
        assert "restart" not in caplog.text
        assert [e.name for e in seen] == ["state_change", "reload"]  # nothing else changed
    finally:
        engine.close()


def test_a_state_backend_that_cannot_be_built_fails_the_reload(
    load: Callable[[str], tuple[Engine, Events]],
    policy_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Moving to Redis without redis-py installed: rejected like any bad edit, located where
    `[state]` says so; the policies and the memory backend in force stay, breaker state too."""
    text = "[policies.api.breaker]\nconsecutive_failures = 1\nshared = true\n"
    engine, events = load(text)
    with pytest.raises(ConnectionError):
        engine.guard("api").call_sync(raise_down)
    breaker = breaker_of(engine)
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    redis_state = '[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:1/0"\n\n'
    policy_file.write_text(redis_state + text.replace("= 1", "= 2"))
    assert engine.reload() is False
    status = engine.status()
    assert status["failed_reloads"] == 1 and status["reloads"] == 0
    where = f"{policy_file}:2: state.backend: error: the state backend cannot be set up"
    assert where in status["last_error"]
    assert "pip install" in status["last_error"]
    assert events.names() == ["reload_failed"]
    assert events.items[0].data["issues"][0]["path"] == "state.backend"
    assert status["state"] == {"backend": "memory"}
    assert engine.policy_set.state.backend == "memory"
    assert breaker_of(engine) is breaker and breaker.state == "open"
    with pytest.raises(PolicyValidationError, match=r"state\.backend"):  # apply() raises it
        engine.apply(load_text(redis_state + text))
    assert engine.status()["failed_reloads"] == 1  # (apply reports nothing: it raised)
    policy_file.write_text(text.replace("= 1", "= 2"))  # the operator backs out
    assert engine.reload() is True
    assert engine.status()["last_error"] is None and breaker_of(engine) is breaker


def test_a_forced_state_is_told_after_the_reload_that_caused_it(clock: FakeClock) -> None:
    text = "[policies.api.breaker]\nconsecutive_failures = 3\n"
    engine = policyengine.loads(text, clock=clock, default=False)
    seen: list[Event] = []
    engine.add_listener(seen.append)
    try:
        engine.apply(load_text(text + 'force = "open"\n'))
        assert [e.name for e in seen] == ["reload", "state_change"]
        assert seen[1].data["to"] == "forced_open"
        assert engine.guard("api").state == "forced_open"
    finally:
        engine.close()
