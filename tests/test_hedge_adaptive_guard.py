"""Hedging and adaptive limits end to end, through `guard(...).call`, on a virtual-time loop.

The engine's clock reads the same virtual time, so breaker durations, budgets and attempt
durations (what the adaptive limit is fed) all follow it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import policyengine
from policyengine import Engine
from policyengine._patterns.adaptive import AdaptiveLimit
from policyengine.exceptions import GuardTimeoutError
from tests.helpers.virtual_loop import run


class LoopClock:
    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def sleep_sync(self, seconds: float) -> None:  # pragma: no cover
        raise NotImplementedError


@pytest.fixture
def engine_of(tmp_path: Path) -> Iterator[Callable[[str], Engine]]:
    engines: list[Engine] = []

    def make(text: str) -> Engine:
        path = tmp_path / "p.toml"
        path.write_text(text)
        engine = policyengine.load(path, clock=LoopClock(), default=False)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


class Service:
    """Answers after the scripted latency of each attempt (or raises the scripted error)."""

    def __init__(self, script: Callable[[int], float | BaseException]) -> None:
        self.script = script
        self.calls = 0
        self.cancelled = 0

    async def __call__(self) -> int:
        n = self.calls
        self.calls += 1
        planned = self.script(n)
        try:
            if isinstance(planned, BaseException):
                await asyncio.sleep(0.002)
                raise planned
            await asyncio.sleep(planned)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return n


HEDGED = """
[policies.search.hedge]
delay = "20ms"
max_extra_load = 1.0
"""


def test_an_extra_attempt_wins_and_the_call_counts_once(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(HEDGED + "[policies.search.bulkhead]\nmax_concurrent = 5\n")
    service = Service(lambda n: 1.0 if n == 0 else 0.01)

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        result = await engine.guard("search").call(service)
        return result, loop.time()

    result, at = run(main())
    assert (result, at) == (1, pytest.approx(0.03)) and service.cancelled == 1
    m = engine.guard("search").metrics()
    assert (m["calls"], m["successes"], m["failures"]) == (1, 1, 0)
    assert (m["hedges"], m["hedge_wins"], m["in_flight"]) == (1, 1, 0)


def test_no_hedge_section_no_hedging(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of("[policies.search.bulkhead]\nmax_concurrent = 5\n")
    service = Service(lambda n: 1.0 if n == 0 else 0.01)
    assert run(engine.guard("search").call(service)) == 0
    assert service.calls == 1 and engine.guard("search").metrics()["hedges"] == 0


def test_a_full_bulkhead_stops_hedging_not_the_call(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(HEDGED + "[policies.search.bulkhead]\nmax_concurrent = 1\n")
    service = Service(lambda n: 0.1)
    assert run(engine.guard("search").call(service)) == 0
    m = engine.guard("search").metrics()
    assert service.calls == 1 and m["successes"] == 1 and m["rejections"]["bulkhead_full"] == 1
    assert m["hedges"] == 1 and m["hedge_wins"] == 0 and m["in_flight"] == 0


def test_a_half_open_breaker_refuses_the_hedge_of_its_probe(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(
        HEDGED + '[policies.search.breaker]\nconsecutive_failures = 1\nopen_duration = "1s"\n'
    )
    service = Service(lambda n: ValueError("down") if n == 0 else 0.1)

    async def main() -> int:
        g = engine.guard("search")
        with pytest.raises(ValueError):
            await g.call(service)
        assert g.state == "open"
        await asyncio.sleep(1.5)
        return await g.call(service)  # the probe: its hedge would be a second probe

    assert run(main()) == 1
    g = engine.guard("search")
    assert g.state == "closed" and service.calls == 2
    assert g.metrics()["rejections"]["circuit_open"] == 1


def test_a_failure_is_retried_and_the_retry_is_hedged(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(
        HEDGED + '[policies.search.retry]\nmax_attempts = 2\ninitial_delay = "10ms"\n'
        'backoff = "constant"\njitter = "none"\n'
    )
    service = Service(lambda n: ConnectionError() if n == 0 else (1.0 if n == 1 else 0.01))
    assert run(engine.guard("search").call(service)) == 2
    m = engine.guard("search").metrics()
    assert (m["retries"], m["hedges"], m["hedge_wins"], m["successes"]) == (1, 1, 1, 1)


def test_hedges_and_retries_share_the_total_deadline(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(HEDGED + '[policies.search.timeout]\ntotal = "100ms"\n')
    service = Service(lambda n: 1.0)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(GuardTimeoutError):
            await engine.guard("search").call(service)
        return loop.time()

    assert run(main()) == pytest.approx(0.1)
    assert service.calls == 2 and engine.guard("search").metrics()["timeouts"] >= 1


def test_a_reload_keeps_what_the_hedge_learned(engine_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of('[policies.search.hedge]\ndelay = "p90"\n')
    hedge = engine.guards["search"].hedge
    assert hedge is not None
    for _ in range(150):
        hedge.sample(0.02)
    (tmp_path / "p.toml").write_text('[policies.search.hedge]\ndelay = "p50"\nmax_extra = 2\n')
    assert engine.reload()
    assert engine.guards["search"].hedge is hedge and hedge.max_extra == 2
    assert hedge.delay == pytest.approx(0.02, rel=0.04)


ADAPTIVE = """
[policies.db.timeout]
attempt = "50ms"

[policies.db.bulkhead]
kind = "adaptive"
algorithm = "{algorithm}"
initial_limit = 20
min_limit = 2
max_limit = {max_limit}
"""


def test_timeouts_lower_an_adaptive_limit(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(ADAPTIVE.format(algorithm="aimd", max_limit=100))
    g = engine.guard("db")
    assert g.metrics()["limit"] == 20

    async def main() -> None:
        service = Service(lambda n: 1.0)  # every attempt times out: drops
        for _ in range(10):
            results = await asyncio.gather(
                *(g.call(service) for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, Exception) for r in results)

    run(main())
    limit = g.metrics()["limit"]
    assert limit is not None and 2 <= limit < 20


def test_a_reload_keeps_the_learned_limit_clamped(engine_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(ADAPTIVE.format(algorithm="aimd", max_limit=100))
    layer = engine.guards["db"].layers[0]
    assert isinstance(layer, AdaptiveLimit)
    layer.algorithm.limit = 70.0
    layer.start()
    path = tmp_path / "p.toml"
    path.write_text(ADAPTIVE.format(algorithm="aimd", max_limit=50))
    assert engine.reload()
    assert engine.guards["db"].layers[0] is layer and engine.guard("db").metrics()["limit"] == 50
    path.write_text(ADAPTIVE.format(algorithm="vegas", max_limit=50))
    assert engine.reload()  # another algorithm: starts over at initial_limit
    assert engine.guards["db"].layers[0] is not layer
    assert engine.guard("db").metrics()["limit"] == 20


def test_a_fixed_bulkhead_has_no_layer(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of("[policies.db.bulkhead]\nmax_concurrent = 3\n")
    assert engine.guards["db"].layers == () and engine.guard("db").metrics()["limit"] == 3


# -- httpx: only idempotent methods are hedged --------------------------------------------------


@pytest.mark.parametrize(("method", "hedged"), [("GET", True), ("PUT", True), ("POST", False)])
def test_httpx_hedges_only_idempotent_methods(engine_of, method: str, hedged: bool) -> None:  # type: ignore[no-untyped-def]
    httpx = pytest.importorskip("httpx")
    from policyengine.httpx import GuardedTransport

    engine = engine_of(HEDGED)
    sent: list[str] = []

    async def handler(request):  # type: ignore[no-untyped-def]
        sent.append(request.method)
        await asyncio.sleep(1.0 if len(sent) == 1 else 0.01)
        return httpx.Response(200, text=str(len(sent)))

    async def main() -> str:
        transport = GuardedTransport("search", httpx.MockTransport(handler), engine=engine)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.request(method, "http://svc/x", content=b"body")
            return str(response.text)

    text = run(main())
    assert (text, len(sent)) == (("2", 2) if hedged else ("1", 1))
    assert engine.guard("search").metrics()["hedge_wins"] == (1 if hedged else 0)


def test_observe_mode_and_call_sync_never_hedge(engine_of) -> None:  # type: ignore[no-untyped-def]
    engine = engine_of(
        HEDGED + '[policies.watched]\nmode = "observe"\n' + HEDGED.replace("search", "watched")
    )
    service = Service(lambda n: 1.0 if n == 0 else 0.01)
    assert run(engine.guard("watched").call(service)) == 0 and service.calls == 1
    assert engine.guard("watched").metrics()["hedges"] == 0
    seen: list[int] = []
    assert engine.guard("search").call_sync(lambda: seen.append(1) or 7) == 7
    assert seen == [1] and engine.guard("search").metrics()["hedges"] == 0
