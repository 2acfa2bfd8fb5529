"""policyengine.aiohttp.GuardedMiddleware against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

aiohttp = pytest.importorskip(
    "aiohttp", reason="aiohttp is not installed: pip install '.[aiohttp]'"
)

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from policyengine import CircuitOpenError, Engine, GuardTimeoutError  # noqa: E402
from policyengine.aiohttp import (  # noqa: E402
    GuardedMiddleware,
    RetryableStatusError,
    UnusableFallbackError,
)
from policyengine.testing import FakeClock  # noqa: E402
from tests.helpers.redis_server import free_port  # noqa: E402

MakeEngine = Callable[[str], Engine]

POLICIES = """
[policies.http.retry]
max_attempts = 3
backoff = "constant"
initial_delay = "100ms"
jitter = "none"
respect_retry_after = true
retry_on = [
  "aiohttp.ClientConnectionError",
  { type = "aiohttp.ClientResponseError", status = [429, "5xx"] },
]
never_retry = [{ type = "aiohttp.ClientResponseError", status = [501] }]

[policies.plain.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "50ms"
jitter = "none"

[policies.fragile.breaker]
consecutive_failures = 1
open_duration = "30s"

[policies.slow.timeout]
attempt = "50ms"
total = "1s"
[policies.slow.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "10ms"
jitter = "none"

[policies.with_value.fallback]
value = "not a response"
"""


class Script:
    """The server's answers in turn (the last one repeats); records what it got."""

    def __init__(self, *steps: int | tuple[int, dict[str, str]] | str) -> None:
        self.steps = list(steps)
        self.requests: list[tuple[str, bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, await request.read()))
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if step == "hang":
            await asyncio.sleep(3600)
        status, headers = step if isinstance(step, tuple) else (step, {})
        assert isinstance(status, int)
        return web.Response(status=status, headers=headers, text=f"answer {len(self.requests)}")


@pytest.fixture
def engine(make_engine: MakeEngine) -> Engine:
    return make_engine(POLICIES)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Any]]:
    servers: list[TestServer] = []

    async def start(script: Script) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", script.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


def session(engine: Engine, guard: Any = "http", **options: Any) -> aiohttp.ClientSession:
    middleware = GuardedMiddleware(guard, engine=engine, **options)
    return aiohttp.ClientSession(middlewares=[middleware])


async def test_503_with_retry_after_is_retried_after_the_hint(
    engine: Engine, clock: FakeClock, serve: Any
) -> None:
    script = Script((503, {"Retry-After": "2"}), 200)
    url = await serve(script)
    async with session(engine) as s, s.get(url) as response:
        assert (response.status, await response.text()) == (200, "answer 2")
    assert clock.sleeps == [2.0]
    m = engine.guard("http").metrics()
    assert (m["calls"], m["successes"], m["failures"], m["retries"]) == (1, 1, 0, 1)


async def test_the_last_retryable_response_is_returned_readable(
    engine: Engine, clock: FakeClock, serve: Any
) -> None:
    script = Script(500)
    url = await serve(script)
    async with session(engine) as s, s.get(url) as response:
        assert response.status == 500
        assert await response.text() == "answer 3"  # the last attempt's body, already read
        with pytest.raises(aiohttp.ClientResponseError) as raised:
            response.raise_for_status()
        assert not isinstance(raised.value, RetryableStatusError)
    assert len(script.requests) == 3 and clock.sleeps == [0.1, 0.1]
    assert engine.guard("http").metrics()["failures"] == 1


async def test_never_retry_and_successes(engine: Engine, serve: Any) -> None:
    script = Script(501, 404)
    url = await serve(script)
    async with session(engine) as s:
        async with s.get(url) as response:
            assert response.status == 501  # never_retry wins: not retried, returned
        async with s.get(url) as response:
            assert response.status == 404  # not a status the policy retries
    assert len(script.requests) == 2
    m = engine.guard("http").metrics()
    assert (m["failures"], m["successes"], m["retries"]) == (0, 2, 0)  # answers, as in httpx


async def test_the_default_statuses_without_status_matchers(
    engine: Engine, clock: FakeClock, serve: Any
) -> None:
    script = Script(429, 500, 200)
    url = await serve(script)
    async with session(engine, "plain") as s, s.get(url) as response:
        assert response.status == 500  # 429 is retried by default, 500 is not
    assert len(script.requests) == 2 and clock.sleeps == [0.05]


async def test_only_idempotent_requests_are_retried(
    engine: Engine, clock: FakeClock, serve: Any
) -> None:
    script = Script(503, 200)
    url = await serve(script)
    async with session(engine) as s:
        async with s.post(url, json={"a": 1}) as response:
            assert response.status == 503  # one attempt
        async with s.post(url, json={"a": 1}, headers={"Idempotency-Key": "k1"}) as response:
            assert response.status == 200
    assert [m for m, _ in script.requests] == ["POST", "POST"]

    script = Script(503, 200)
    url = await serve(script)
    async with session(engine) as s, s.put(url, data=b"payload") as response:
        assert response.status == 200  # PUT is idempotent; bytes can be sent again
    assert script.requests == [("PUT", b"payload"), ("PUT", b"payload")]

    async def stream() -> AsyncIterator[bytes]:
        yield b"once"

    script = Script(503, 200)
    url = await serve(script)
    async with session(engine) as s, s.put(url, data=stream()) as response:
        assert response.status == 503  # a stream cannot be sent twice
    assert len(script.requests) == 1
    async with session(engine, retry_methods={"POST"}) as s:
        script.steps, script.requests = [503, 200], []
        async with s.post(url, data=b"x") as response:
            assert response.status == 200


async def test_connection_errors_are_retried_then_raised(engine: Engine, clock: FakeClock) -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    async with session(engine) as s:
        with pytest.raises(aiohttp.ClientConnectorError):
            await s.get(url)
    m = engine.guard("http").metrics()
    assert (m["failures"], m["retries"]) == (1, 2)


async def test_a_hung_attempt_times_out_and_the_breaker_opens(engine: Engine, serve: Any) -> None:
    url = await serve(Script("hang"))
    async with session(engine, "slow") as s:
        with pytest.raises(GuardTimeoutError):
            await s.get(url)
    assert engine.guard("slow").metrics()["timeouts"] == 2

    url = await serve(Script(503))
    async with session(engine, "fragile") as s:
        async with s.get(url) as response:
            assert response.status == 503  # no retry: returned, and the breaker opens
        with pytest.raises(CircuitOpenError) as raised:
            await s.get(url)
    assert raised.value.retry_after == pytest.approx(30)


async def test_a_guard_per_host(engine: Engine, clock: FakeClock, serve: Any) -> None:
    script = Script(503, 200)
    url = await serve(script)
    port = url.rsplit(":", 1)[1]
    mapping = {f"127.0.0.1:{port}": "fragile", "*": "http"}
    async with session(engine, mapping) as s:
        async with s.get(url) as response:
            assert response.status == 503
        with pytest.raises(CircuitOpenError):
            await s.get(url)
    assert engine.guard("http").metrics()["calls"] == 0
    assert GuardedMiddleware({"*": "http"}, engine=engine)._resolve is not None


def test_a_fallback_that_cannot_give_a_response_is_refused(engine: Engine) -> None:
    with pytest.raises(UnusableFallbackError, match=r"aiohttp\.ClientResponse"):
        GuardedMiddleware("with_value", engine=engine)
    with pytest.raises(TypeError, match="a name, a GuardHandle"):
        GuardedMiddleware(3, engine=engine)  # type: ignore[arg-type]
