"""Enforcement ramps and chaos drills: fractions that hold, drills that trip breakers and end on
time on a fake clock, and what `validate` says about a drill."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path

import pytest

import policyengine
from policyengine._commands.cli import main
from policyengine._config.loader import load_text
from policyengine._rollout.chaos import Chaos, ChaosOptions, make_chaos
from policyengine._rollout.ramp import Ramp, RampOptions, make_ramp
from policyengine.testing import FakeClock


def _share(ramp: Ramp, now: float, rng: random.Random, n: int = 10_000) -> float:
    return sum(ramp.enforced(now, rng.random()) for _ in range(n)) / n


def test_enforce_holds_its_fraction_over_10000_calls() -> None:
    rng = random.Random(3)
    ramp = make_ramp(0.1, None, 1000.0)
    assert ramp is not None
    assert _share(ramp, 1000.0, rng) == pytest.approx(0.1, abs=0.02)
    assert _share(ramp, 99_999.0, rng) == pytest.approx(0.1, abs=0.02)  # no ramp: no growth


def test_a_ramp_grows_linearly_from_when_it_is_in_force() -> None:
    rng = random.Random(4)
    ramp = make_ramp(0.1, RampOptions(to=1.0, over="30m"), 1000.0)
    assert ramp is not None
    for elapsed, want in [(0, 0.1), (600, 0.4), (900, 0.55), (1800, 1.0), (7200, 1.0)]:
        assert _share(ramp, 1000.0 + elapsed, rng) == pytest.approx(want, abs=0.02)


def test_a_reload_that_keeps_the_ramp_does_not_restart_it() -> None:
    ramp = make_ramp(0.1, RampOptions(to=1.0, over="30m"), 1000.0)
    same = make_ramp(0.1, RampOptions(to=1.0, over="30m"), 1900.0, previous=ramp)
    assert same is ramp and ramp.share(1900.0) == pytest.approx(0.55)
    changed = make_ramp(0.2, RampOptions(to=1.0, over="30m"), 1900.0, previous=ramp)
    assert changed is ramp and ramp.start == 1900.0 and ramp.share(1900.0) == pytest.approx(0.2)
    assert make_ramp(None, None, 1000.0) is None  # a policy without one pays nothing


def test_ramp_options_are_policy_fields() -> None:
    ps = load_text('[policies.p]\nenforce = "10%"\nramp = { to = 1.0, over = "30m" }\n')
    policy = ps.policies["p"]
    assert policy.enforce == 0.1 and policy.ramp == RampOptions(to=1.0, over="30m")
    with pytest.raises(policyengine.PolicyValidationError, match=r"policies\.p\.ramp\.over"):
        load_text("[policies.p]\nenforce = 0.1\nramp = { to = 1.0, over = 30 }\n")


def _drill(**kw: object) -> ChaosOptions:
    return ChaosOptions.model_validate(kw)


def test_a_drill_injects_at_its_rate_and_ends_on_time() -> None:
    clock = FakeClock()
    chaos = Chaos(
        _drill(
            **{"for": "15m"},
            fault={"rate": 0.05, "error": "ConnectionError"},
            latency={"rate": 0.1, "delay": "500ms"},
        ),
        clock.now(),
    )
    rng = random.Random(5)
    draws = [chaos.draw(clock.now(), rng.random(), rng.random()) for _ in range(10_000)]
    faults = [d for d in draws if isinstance(d, BaseException)]
    delays = [d for d in draws if isinstance(d, float)]
    assert len(faults) / 10_000 == pytest.approx(0.05, abs=0.01)
    assert len(delays) / 10_000 == pytest.approx(0.95 * 0.1, abs=0.01)
    assert all(type(f) is ConnectionError and f.injected for f in faults)  # type: ignore[attr-defined]
    assert set(delays) == {0.5}
    clock.advance(15 * 60 - 0.001)
    assert chaos.active(clock.now())
    clock.advance(0.001)
    assert not chaos.active(clock.now())
    assert all(chaos.draw(clock.now(), 0.0, 0.0) is None for _ in range(100))


def test_until_is_turned_into_clock_time_once() -> None:
    clock = FakeClock(start=50.0)
    until = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
    wall = until.timestamp() - 120.0  # two minutes before the end
    chaos = Chaos(_drill(until=until, fault={"rate": 1.0}), clock.now(), wall=lambda: wall)
    assert chaos.end == pytest.approx(170.0)
    kept = make_chaos(chaos.options, 999.0, previous=chaos)
    assert kept is chaos  # a reload that keeps the drill does not move its end


async def test_a_drill_trips_the_breaker_and_stops_at_its_end() -> None:
    clock = FakeClock()
    engine = policyengine.loads(
        '[policies.pay.breaker]\nconsecutive_failures = 3\nopen_duration = "10s"\n',
        clock=clock,
        default=False,
    )
    chaos = Chaos(_drill(**{"for": "1m"}, fault={"rate": 1.0}), clock.now())

    async def charge() -> str:
        return "ok"

    drilled = chaos.wrap(charge, clock, random=lambda: 0.0)
    for _ in range(3):
        with pytest.raises(ConnectionError, match="injected by a chaos drill"):
            await engine.guard("pay").call(drilled)
    assert engine.guard("pay").state == "open"
    with pytest.raises(policyengine.CircuitOpenError):
        await engine.guard("pay").call(drilled)
    clock.advance(60)  # the drill is over: the probe reaches the dependency and closes it
    assert await engine.guard("pay").call(drilled) == "ok"
    assert engine.guard("pay").state == "closed"
    engine.close()


def test_a_sync_function_is_drilled_too() -> None:
    clock = FakeClock()
    chaos = Chaos(_drill(**{"for": "1m"}, latency={"rate": 1.0, "delay": "2s"}), clock.now())
    drilled = chaos.wrap(lambda: "ok", clock, random=lambda: 0.0)
    assert drilled() == "ok" and clock.sleeps == [2.0]


def _in(hours: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def test_validate_warns_about_a_drill_and_errors_on_a_stale_or_far_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def check(until: str, *flags: str) -> tuple[int, str]:
        path = tmp_path / "p.toml"
        path.write_text(f'[policies.pay.chaos]\nuntil = "{until}"\nfault = {{ rate = 0.05 }}\n')
        code = main(["validate", str(path), *flags])
        return code, capsys.readouterr().out

    code, out = check(_in(1))
    assert code == 0 and "warning" in out and "a chaos drill is in this file" in out
    assert check(_in(1), "--strict")[0] == 1
    code, out = check(_in(-1))
    assert code == 1 and "policies.pay.chaos.until" in out and "remove the chaos section" in out
    code, out = check(_in(25))
    assert code == 1 and "at most 24h ahead" in out
    with pytest.raises(policyengine.PolicyValidationError, match="a drill needs an end"):
        load_text("[policies.pay.chaos]\nfault = { rate = 0.05 }\n")
    with pytest.raises(policyengine.PolicyValidationError, match="not an exception type"):
        load_text('[policies.pay.chaos]\nfor = "1m"\nfault = { rate = 0.1, error = "len" }\n')


def test_an_ended_drill_left_in_the_file_does_not_stop_a_load_or_reload(tmp_path: Path) -> None:
    """validate refuses it, but a service that restarts (or reloads another edit) with an
    ended drill still in its file must load: the drill injects nothing, a warning says so."""
    path = tmp_path / "p.toml"
    path.write_text('[policies.pay.retry]\nmax_attempts = 2\nbackoff = "constant"\n')
    engine = policyengine.load(path, default=False)
    try:
        path.write_text(
            '[policies.pay.retry]\nmax_attempts = 3\nbackoff = "constant"\n'
            f'[policies.pay.chaos]\nuntil = "{_in(-1)}"\nfault = {{ rate = 1.0 }}\n'
        )
        assert engine.reload()
        assert engine.guards["pay"].max_attempts == 3
        assert engine.status()["last_error"] is None

        async def ok() -> str:
            return "ok"

        for _ in range(20):  # a live drill at rate 1.0 would fail every attempt
            assert asyncio.run(engine.guard("pay").call(ok)) == "ok"
        again = policyengine.load(path, default=False)  # a restart
        again.close()
    finally:
        engine.close()
    assert main(["validate", str(path)]) == 1


DRILLED = """
[policies.pay.breaker]
consecutive_failures = 3
open_duration = "10s"
[policies.pay.chaos]
for = "1m"
fault = { rate = 1.0, error = "ConnectionError" }
"""


async def test_a_drill_in_the_file_trips_the_breaker_and_ends_on_time() -> None:
    clock = FakeClock()
    engine = policyengine.loads(DRILLED, clock=clock, default=False)
    pay = engine.guard("pay")
    reached = []

    async def charge() -> str:
        reached.append(clock.now())
        return "ok"

    for _ in range(3):
        with pytest.raises(ConnectionError, match="injected by a chaos drill") as info:
            await pay.call(charge)
        assert info.value.injected  # type: ignore[attr-defined]
    assert pay.state == "open" and reached == []
    clock.advance(30)
    with pytest.raises(ConnectionError):  # a probe during the drill meets the drill too
        await pay.call(charge)
    clock.advance(30)  # the drill is over (no reload): the probe reaches the dependency
    clock.advance(10)
    assert await pay.call(charge) == "ok"
    assert pay.state == "closed" and len(reached) == 1
    engine.close()


async def test_a_drill_runs_retries_and_serves_the_fallback() -> None:
    text = """
[policies.pay.retry]
max_attempts = 3
backoff = "constant"
initial_delay = "10ms"
[policies.pay.fallback]
value = "cached"
[policies.pay.chaos]
for = "15m"
fault = { rate = 0.05, error = "TimeoutError" }
latency = { rate = 0.1, delay = "500ms" }
"""
    clock = FakeClock()
    engine = policyengine.loads(text, clock=clock, default=False)
    pay = engine.guard("pay")

    async def charge() -> str:
        return "ok"

    results = [await pay.call(charge) for _ in range(10_000)]
    metrics = pay.metrics()
    # a fault on each of 3 attempts: 0.05^3 of calls fall back; 5% of attempts are retried
    assert metrics["retries"] / 10_000 == pytest.approx(0.05 * 1.05, abs=0.01)
    assert results.count("cached") <= 10
    delays = [s for s in clock.sleeps if s == 0.5]  # on each attempt not faulted, 10%
    attempts = 10_000 + metrics["retries"]
    assert len(delays) / attempts == pytest.approx(0.1 * 0.95, abs=0.01)
    engine.close()


async def test_a_reload_that_keeps_the_drill_keeps_its_end(tmp_path: Path) -> None:
    from policyengine._rollout.drill import drill_of

    clock = FakeClock()
    engine = policyengine.loads(DRILLED, clock=clock, default=False)
    drill = drill_of(engine.guards["pay"])
    assert drill is not None and drill.end == pytest.approx(clock.now() + 60)
    clock.advance(20)
    engine.apply(load_text(DRILLED.replace('open_duration = "10s"', 'open_duration = "5s"')))
    assert drill_of(engine.guards["pay"]) is drill  # not restarted by an unrelated edit
    engine.apply(load_text(DRILLED.replace('for = "1m"', 'for = "2m"')))
    again = drill_of(engine.guards["pay"])
    assert again is not drill and again is not None
    assert again.end == pytest.approx(clock.now() + 120)
    engine.apply(load_text(DRILLED.split("[policies.pay.chaos]")[0]))
    assert drill_of(engine.guards["pay"]) is None  # a drill removed: gone at once
    engine.close()


RAMPED = """
[policies.pay]
enforce = 0.1
ramp = { to = 1.0, over = "30m" }
[policies.pay.breaker]
force = "open"
"""


async def _refused_share(pay: policyengine.GuardHandle, n: int = 10_000) -> float:
    async def charge() -> str:
        return "ok"

    refused = 0
    for _ in range(n):
        try:
            await pay.call(charge)
        except policyengine.CircuitOpenError:
            refused += 1
    return refused / n


async def test_a_ramp_enforces_its_share_of_calls_end_to_end() -> None:
    clock = FakeClock()
    engine = policyengine.loads(RAMPED, clock=clock, default=False)
    pay = engine.guard("pay")
    assert await _refused_share(pay) == pytest.approx(0.1, abs=0.02)
    # the other calls ran as observed: not refused, counted as would-be rejections
    assert pay.metrics()["observed"]["would_reject"] == pytest.approx(9000, abs=200)
    clock.advance(15 * 60)
    assert await _refused_share(pay) == pytest.approx(0.55, abs=0.02)
    # a reload that keeps enforce and ramp (another key changed) does not restart the ramp
    engine.apply(load_text(RAMPED + 'open_duration = "5s"\n'))
    assert await _refused_share(pay) == pytest.approx(0.55, abs=0.02)
    engine.apply(load_text(RAMPED.replace("enforce = 0.1", "enforce = 0.2")))
    assert await _refused_share(pay) == pytest.approx(0.2, abs=0.02)  # a new ramp starts
    clock.advance(3600)
    assert await _refused_share(pay, 1000) == 1.0
    engine.close()


async def test_observed_calls_feed_the_one_breaker() -> None:
    text = "[policies.pay]\nenforce = 0.0\n[policies.pay.breaker]\nconsecutive_failures = 4\n"
    clock = FakeClock()
    engine = policyengine.loads(text, clock=clock, default=False)
    pay = engine.guard("pay")

    async def down() -> None:
        raise ConnectionError("down")

    for _ in range(4):  # every call observed: never refused, but each failure counts
        with pytest.raises(ConnectionError):
            await pay.call(down)
    assert pay.state == "open"
    with pytest.raises(ConnectionError):  # observed: let through to the dependency
        await pay.call(down)
    assert pay.metrics()["observed"]["would_reject"] == 1
    engine.close()


def test_until_without_a_zone_says_how_to_write_one() -> None:
    for until in ['"2026-12-04T12:00:00"', "2026-12-04T12:00:00"]:  # a string, a TOML datetime
        with pytest.raises(policyengine.PolicyValidationError, match="`until` needs a zone"):
            load_text(f"[policies.pay.chaos]\nuntil = {until}\nfault = {{ rate = 0.1 }}\n")


async def test_observed_calls_and_injected_faults_are_recorded(tmp_path: Path) -> None:
    import json

    text = '[policies.pay]\nenforce = 0.0\n[policies.pay.chaos]\nfor = "1m"\n'
    text += "fault = { rate = 1.0 }\n"
    clock = FakeClock()
    engine = policyengine.loads(text, clock=clock, default=False)
    engine.record(tmp_path / "t.jsonl")

    async def charge() -> str:
        return "ok"

    for _ in range(5):
        with pytest.raises(ConnectionError):
            await engine.guard("pay").call(charge)
    engine.close()
    lines = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(x["injected"] and x["outcome"] == "failure" for x in lines)


def test_call_sync_meets_the_ramp_and_the_drill_too() -> None:
    """Blocking calls bypass `call`'s entry; they met neither ramps nor drills before."""
    clock = FakeClock()
    engine = policyengine.loads(RAMPED, clock=clock, default=False)
    pay = engine.guard("pay")
    refused = 0
    for _ in range(10_000):
        try:
            pay.call_sync(lambda: "ok")
        except policyengine.CircuitOpenError:
            refused += 1
    assert refused / 10_000 == pytest.approx(0.1, abs=0.02)
    engine.close()

    engine = policyengine.loads(DRILLED, clock=clock, default=False)
    pay = engine.guard("pay")
    events: list[policyengine.Event] = []
    engine.add_listener(events.append)
    for _ in range(3):  # rate 1.0: every attempt fails as if the dependency did
        with pytest.raises(ConnectionError, match="chaos drill"):
            pay.call_sync(lambda: "ok")
    assert pay.state == "open"  # the breaker tripped on injected faults
    m = pay.metrics()
    assert (m["injected"], m["failures"]) == (3, 3)
    assert [e.data for e in events if e.name == "injected"] == [{"kind": "fault"}] * 3
    clock.advance(120)  # past the drill's end (for = "1m") and the open period
    assert pay.call_sync(lambda: "ok") == "ok"
    engine.close()


async def test_injected_faults_are_counted_in_metrics() -> None:
    clock = FakeClock()
    engine = policyengine.loads(DRILLED, clock=clock, default=False)
    pay = engine.guard("pay")

    async def ok() -> str:
        return "ok"

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await pay.call(ok)
    assert pay.metrics()["injected"] == 3
    engine.close()
