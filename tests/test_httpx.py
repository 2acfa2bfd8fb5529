"""GuardedTransport / GuardedSyncTransport against httpx.MockTransport."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

import policyengine
from policyengine import CircuitOpenError, Engine
from policyengine.httpx import (
    GuardedSyncTransport,
    GuardedTransport,
    RetryableStatusError,
    UnusableFallbackError,
)
from policyengine.testing import FakeClock

MakeEngine = Callable[[str], Engine]

POLICIES = """
[policies.http.retry]
max_attempts = 3
backoff = "constant"
initial_delay = "100ms"
jitter = "none"
respect_retry_after = true
retry_on = ["httpx.TransportError", { type = "httpx.HTTPStatusError", status = [429, "5xx"] }]
never_retry = [{ type = "httpx.HTTPStatusError", status = [501] }]

[policies.plain.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "50ms"
jitter = "none"

[policies.fragile.breaker]
consecutive_failures = 1
open_duration = "30s"

[policies.with_fallback.fallback]
value = "not a response"
on = ["circuit_open"]

[policies.with_fallback.breaker]
force = "open"
"""


class Server:
    """Answers with the scripted responses in turn (the last one repeats); counts requests."""

    def __init__(self, *script: int | tuple[int, dict[str, str]] | type[Exception]) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, type):
            raise step("connection refused", request=request)  # type: ignore[call-arg]
        status, headers = step if isinstance(step, tuple) else (step, {})
        return httpx.Response(status, headers=headers, text=f"answer {len(self.requests)}")


@pytest.fixture
def engine(make_engine: MakeEngine) -> Engine:
    return make_engine(POLICIES)


def client(
    engine: Engine, server: Server, guard: str = "http", **options: object
) -> httpx.AsyncClient:
    transport = GuardedTransport(guard, httpx.MockTransport(server), engine=engine, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://api.test")


async def test_503_with_retry_after_is_retried_after_the_hint(
    engine: Engine, clock: FakeClock
) -> None:
    server = Server((503, {"Retry-After": "2"}), 200)
    async with client(engine, server) as c:
        response = await c.get("/charge")
    assert response.status_code == 200
    assert response.text == "answer 2"
    assert len(server.requests) == 2
    assert clock.sleeps == [2.0]
    m = engine.guard("http").metrics()
    assert (m["calls"], m["successes"], m["failures"], m["retries"]) == (1, 1, 0, 1)


async def test_the_last_retryable_response_is_returned_not_raised(
    engine: Engine, clock: FakeClock
) -> None:
    server = Server((503, {"Retry-After": "1"}))
    async with client(engine, server) as c:
        response = await c.get("/charge")
    assert response.status_code == 503
    assert response.text == "answer 3"  # the body of the last attempt, still readable
    assert len(server.requests) == 3
    assert clock.sleeps == [1.0, 1.0]
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()
    m = engine.guard("http").metrics()
    assert (m["failures"], m["retries"]) == (1, 2)


async def test_404_is_not_retried_and_not_a_failure(engine: Engine, clock: FakeClock) -> None:
    server = Server(404)
    async with client(engine, server) as c:
        response = await c.get("/missing")
    assert response.status_code == 404
    assert len(server.requests) == 1
    assert clock.sleeps == []
    assert engine.guard("http").metrics()["successes"] == 1


async def test_a_status_in_never_retry_is_not_retried(engine: Engine) -> None:
    server = Server(501)
    async with client(engine, server) as c:
        assert (await c.get("/")).status_code == 501
    assert len(server.requests) == 1


async def test_connection_errors_are_retried(engine: Engine, clock: FakeClock) -> None:
    server = Server(httpx.ConnectError, httpx.ConnectError, 200)
    async with client(engine, server) as c:
        response = await c.get("/")
    assert response.status_code == 200
    assert len(server.requests) == 3
    assert clock.sleeps == [0.1, 0.1]


async def test_a_lasting_connection_error_is_raised_as_it_is(engine: Engine) -> None:
    server = Server(httpx.ConnectError)
    async with client(engine, server) as c:
        with pytest.raises(httpx.ConnectError, match="connection refused"):
            await c.get("/")
    assert len(server.requests) == 3
    assert engine.guard("http").metrics()["failures"] == 1


async def test_post_is_not_retried(engine: Engine, clock: FakeClock) -> None:
    server = Server(503, 200)
    async with client(engine, server) as c:
        response = await c.post("/charge", json={"amount": 10})
        assert response.status_code == 503
        assert len(server.requests) == 1
        server.script = [httpx.ConnectError]
        with pytest.raises(httpx.ConnectError):
            await c.patch("/charge", json={"amount": 10})
    assert len(server.requests) == 2
    assert clock.sleeps == []
    m = engine.guard("http").metrics()
    assert (m["calls"], m["failures"], m["retries"]) == (2, 2, 0)  # the breaker still counts


async def test_post_is_retried_with_an_idempotency_key_or_when_allowed(engine: Engine) -> None:
    server = Server(503, 200)
    async with client(engine, server) as c:
        response = await c.post("/charge", json={}, headers={"Idempotency-Key": "k-1"})
    assert (response.status_code, len(server.requests)) == (200, 2)
    server = Server(503, 200)
    async with client(engine, server, retry_methods=["GET", "POST"]) as c:
        assert (await c.post("/charge", json={})).status_code == 200
    assert len(server.requests) == 2


async def test_a_streamed_body_gets_one_attempt(engine: Engine) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    server = Server(503, 200)
    async with client(engine, server) as c:
        response = await c.put("/upload", content=body())
    assert (response.status_code, len(server.requests)) == (503, 1)


async def test_default_statuses_without_status_matchers(engine: Engine, clock: FakeClock) -> None:
    server = Server(502, 200)
    async with client(engine, server, guard="plain") as c:
        assert (await c.get("/")).status_code == 200
    assert clock.sleeps == [0.05]
    server = Server(500, 200)  # not in 429/502/503/504: an answer, returned at once
    async with client(engine, server, guard="plain") as c:
        assert (await c.get("/")).status_code == 500
    assert len(server.requests) == 1
    server = Server(500, 200)
    async with client(engine, server, guard="plain", retry_statuses=[500]) as c:
        assert (await c.get("/")).status_code == 200


async def test_an_open_circuit_rejects_requests(engine: Engine) -> None:
    server = Server(503)
    async with client(engine, server, guard="fragile") as c:
        assert (await c.get("/")).status_code == 503  # counted as a failure: trips
        with pytest.raises(CircuitOpenError):
            await c.get("/")
    assert len(server.requests) == 1


FALLBACKS = """
[policies.handler.breaker]
force = "open"
[policies.handler.fallback]
handler = "tests.helpers.http_fallbacks:cached_response"

[policies.annotated_dict.fallback]
handler = "tests.helpers.http_fallbacks:cached_dict"

[policies.unannotated.breaker]
force = "open"
[policies.unannotated.fallback]
handler = "tests.helpers.http_fallbacks:unannotated"

[policies.observed]
mode = "observe"
[policies.observed.fallback]
value = "never used in observe mode"
"""


def test_a_fallback_that_cannot_give_a_response_is_refused_at_creation(
    make_engine: MakeEngine,
) -> None:
    """Regression: a fallback `value` raised TypeError only once the breaker had opened."""
    engine = make_engine(POLICIES + FALLBACKS)
    mock = httpx.MockTransport(Server(200))
    with pytest.raises(UnusableFallbackError, match=r"'with_fallback' has fallback\.value") as e:
        GuardedTransport("with_fallback", mock, engine=engine)
    assert "fallback.handler that returns an httpx.Response" in str(e.value)
    assert isinstance(e.value, TypeError)
    with pytest.raises(UnusableFallbackError, match="annotated to return something other"):
        GuardedSyncTransport({"*": "http", "x.test": "annotated_dict"}, engine=engine)
    for fine in ("handler", "unannotated", "observed", "http"):
        GuardedTransport(fine, mock, engine=engine)


async def test_a_handler_fallback_gives_the_response(make_engine: MakeEngine) -> None:
    engine = make_engine(POLICIES + FALLBACKS)
    async with client(engine, Server(200), guard="handler") as c:
        response = await c.get("/")
    assert (response.status_code, response.json()["because"]) == (202, "CircuitOpenError")


async def test_an_unannotated_handler_is_checked_when_used(make_engine: MakeEngine) -> None:
    engine = make_engine(POLICIES + FALLBACKS)
    async with client(engine, Server(200), guard="unannotated") as c:
        with pytest.raises(UnusableFallbackError, match=r"gave a fallback dict.*httpx\.Response"):
            await c.get("/")


async def test_a_reload_to_an_unusable_fallback_is_reported_and_serves_on(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES)
    engine = policyengine.load(path, clock=clock, default=False)
    events: list[policyengine.Event] = []
    engine.add_listener(events.append)
    try:
        server = Server(200)
        async with client(engine, server, guard="fragile") as c:
            assert (await c.get("/")).status_code == 200
            path.write_text(
                POLICIES + '[policies.fragile.fallback]\nvalue = "queued"\non = ["circuit_open"]\n'
            )
            assert engine.reload() is True
            assert not [e for e in events if e.name == "fallback_unusable"]  # not before a request
            with caplog.at_level("ERROR", logger="policyengine"):
                assert (await c.get("/")).status_code == 200  # the healthy dependency serves on
                assert (await c.get("/")).status_code == 200  # reported once per version
            [event] = [e for e in events if e.name == "fallback_unusable"]
            assert event.guard == "fragile" and "fallback.value = 'queued'" in event.data["problem"]
            errors = [r for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == 1 and "httpx transport" in errors[0].getMessage()
            server.script = [503]  # the breaker opens: the fallback would be used
            assert (await c.get("/")).status_code == 503
            with pytest.raises(UnusableFallbackError, match=r"fallback\.value = 'queued'"):
                await c.get("/")
    finally:
        engine.close()


async def test_a_guard_chosen_per_request_is_checked_at_its_first_request(
    engine: Engine,
) -> None:
    mock = httpx.MockTransport(Server(200))
    transport = GuardedTransport(lambda _r: "with_fallback", mock, engine=engine)  # no error yet
    events: list[policyengine.Event] = []
    engine.add_listener(events.append)
    async with httpx.AsyncClient(transport=transport) as c:
        with pytest.raises(UnusableFallbackError, match=r"'with_fallback' has fallback\.value"):
            await c.get("http://api.test/")  # forced open: the fallback is used at once
    assert [e.name for e in events].count("fallback_unusable") == 1


async def test_a_guard_per_host(engine: Engine, clock: FakeClock) -> None:
    server = Server(503, 200)
    transport = GuardedTransport(
        {"api.test": "http", "*": "fragile"}, httpx.MockTransport(server), engine=engine
    )
    async with httpx.AsyncClient(transport=transport) as c:
        assert (await c.get("http://api.test/")).status_code == 200  # "http": retried
        server.script = [503]
        assert (await c.get("http://other.test/")).status_code == 503  # "fragile": trips
        with pytest.raises(CircuitOpenError):
            await c.get("http://other.test/")
    assert engine.guard("http").metrics()["calls"] == 1

    chosen: list[str] = []

    def choose(request: httpx.Request) -> str | None:
        chosen.append(request.url.host)
        return None if request.url.host == "free.test" else "http"

    server = Server(200)
    transport = GuardedTransport(choose, httpx.MockTransport(server), engine=engine)
    async with httpx.AsyncClient(transport=transport) as c:
        await c.get("http://free.test/")
        await c.get("http://api.test/")
    assert chosen == ["free.test", "api.test"]
    assert engine.guard("http").metrics()["calls"] == 2


async def test_a_name_in_the_default_engine(clock: FakeClock) -> None:
    engine = policyengine.loads(POLICIES, clock=clock)  # the default engine
    try:
        server = Server(503, 200)
        transport = GuardedTransport("http", httpx.MockTransport(server))
        async with httpx.AsyncClient(transport=transport) as c:
            assert (await c.get("http://api.test/")).status_code == 200
        assert policyengine.guard("http").metrics()["retries"] == 1
    finally:
        engine.close()


def test_the_retryable_status_error_carries_the_response() -> None:
    request = httpx.Request("GET", "http://api.test/")
    response = httpx.Response(503, request=request, headers={"Retry-After": "3"})
    exc = RetryableStatusError(request, response)
    assert isinstance(exc, httpx.HTTPStatusError)
    assert exc.response is response
    assert "503 Service Unavailable" in str(exc)


@pytest.fixture
def sync_client(engine: Engine) -> Iterator[Callable[[Server], httpx.Client]]:
    clients: list[httpx.Client] = []

    def make(server: Server) -> httpx.Client:
        transport = GuardedSyncTransport("http", httpx.MockTransport(server), engine=engine)
        c = httpx.Client(transport=transport, base_url="http://api.test")
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def test_sync_client_retries_after_the_hint(
    sync_client: Callable[[Server], httpx.Client], clock: FakeClock
) -> None:
    server = Server((503, {"Retry-After": "2"}), 200)
    assert sync_client(server).get("/").status_code == 200
    assert clock.sleeps == [2.0]
    server = Server(httpx.ConnectError, 200)
    assert sync_client(server).get("/").status_code == 200
    assert len(server.requests) == 2


def test_sync_client_does_not_retry_post_or_404(
    sync_client: Callable[[Server], httpx.Client], engine: Engine
) -> None:
    server = Server(503, 200)
    c = sync_client(server)
    assert c.post("/", json={}).status_code == 503
    assert c.get("/nothing-here").status_code == 200
    server = Server(404, 200)
    assert sync_client(server).get("/").status_code == 404
    assert len(server.requests) == 1
    m = engine.guard("http").metrics()
    assert (m["calls"], m["failures"], m["retries"]) == (3, 1, 0)


class StreamingServer:
    """Like a real transport: responses come with an unread (gzip-encoded) body stream."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.streams: list[httpx.ByteStream] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        status = self.statuses[min(len(self.streams), len(self.statuses) - 1)]
        stream = httpx.ByteStream(gzip.compress(f"answer {len(self.streams) + 1}".encode()))
        self.streams.append(stream)
        return httpx.Response(status, headers={"Content-Encoding": "gzip"}, stream=stream)


async def test_a_returned_error_response_reads_decodes_and_times_like_any(
    engine: Engine,
) -> None:
    server = StreamingServer(503)
    transport = GuardedTransport("http", httpx.MockTransport(server), engine=engine)
    async with httpx.AsyncClient(transport=transport) as c:
        response = await c.get("http://api.test/")
        assert (response.status_code, response.text) == (503, "answer 3")
        assert response.elapsed.total_seconds() >= 0
        async with c.stream("GET", "http://api.test/") as streamed:
            assert streamed.status_code == 503
            assert b"".join([part async for part in streamed.aiter_bytes()]) == b"answer 6"
    assert len(server.streams) == 6


def test_the_sync_twin_returns_a_readable_error_response(engine: Engine) -> None:
    server = StreamingServer(503, 200)
    transport = GuardedSyncTransport("http", httpx.MockTransport(server), engine=engine)
    with httpx.Client(transport=transport) as c:
        response = c.post("http://api.test/", json={})
        assert (response.status_code, response.text) == (503, "answer 1")
        assert response.elapsed.total_seconds() >= 0
        assert c.get("http://api.test/").text == "answer 2"


async def test_a_transport_made_before_any_engine_loads_none_and_checks_later(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module-level client is made at import time, before `load()`: creating it must not load
    the default engine (a side effect, and maybe the wrong file); its guard is checked at its
    first request."""
    from policyengine._registry import default as _default

    monkeypatch.chdir(tmp_path)  # no policies/policies.toml here: loading would fail
    transport = GuardedTransport("with_fallback", httpx.MockTransport(Server(200)))
    assert _default._default is None
    engine = policyengine.loads(POLICIES, clock=clock)  # the default engine, loaded later
    events: list[policyengine.Event] = []
    engine.add_listener(events.append)
    try:
        async with httpx.AsyncClient(transport=transport) as c:
            with pytest.raises(UnusableFallbackError, match=r"'with_fallback' has fallback\.value"):
                await c.get("http://api.test/")
        assert [e.name for e in events].count("fallback_unusable") == 1
    finally:
        engine.close()
