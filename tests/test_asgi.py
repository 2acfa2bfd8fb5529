"""policyengine.asgi: the middleware and the status app inside real Starlette and FastAPI apps
(requests through httpx's ASGI transport; `test_e2e_cascade.py` serves them with uvicorn)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="starlette is not installed: pip install '.[dev]'")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Mount, Route

from policyengine import BulkheadFullError, CircuitOpenError, Engine, GuardTimeoutError
from policyengine.asgi import GuardErrorMiddleware, status_app
from policyengine.testing import FakeClock

MakeEngine = Callable[[str], Engine]

POLICIES = """
schema_version = 1
[policies.api.retry]
max_attempts = 1
[policies.api.breaker]
consecutive_failures = 2
open_duration = "30s"

[policies.pool.bulkhead]
max_concurrent = 2
max_queue = 0

[policies.slow.timeout]
total = "50ms"
"""


def app_raising(error: BaseException) -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        raise error

    async def streaming(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            raise error

        return StreamingResponse(body())

    app = Starlette(routes=[Route("/", endpoint), Route("/stream", streaming)])
    app.add_middleware(GuardErrorMiddleware)
    return app


def client(app: Any, *, raise_errors: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
    return httpx.AsyncClient(transport=transport, base_url="http://service")


async def test_an_open_circuit_is_a_503_with_retry_after_rounded_up() -> None:
    async with client(app_raising(CircuitOpenError("payments", 12.2))) as c:
        response = await c.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "13"
    assert response.json() == {
        "guard": "payments",
        "detail": "circuit 'payments' is open; retry after 12.200s",
        "error": "circuit_open",
        "retry_after": 12.2,
    }


async def test_a_rejection_without_a_hint_has_no_retry_after() -> None:
    async with client(app_raising(BulkheadFullError("pool", 4, 0))) as c:
        response = await c.get("/")
    assert response.status_code == 503
    assert "retry-after" not in response.headers
    assert response.json()["error"] == "bulkhead_full"


async def test_a_guard_error_alone_in_an_exception_group_is_answered() -> None:
    group = ExceptionGroup("task group", [CircuitOpenError("payments", 0.2)])
    async with client(app_raising(group)) as c:
        response = await c.get("/")
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    mixed = ExceptionGroup("task group", [CircuitOpenError("a", 1.0), ValueError("b")])
    with pytest.raises(ExceptionGroup):
        async with client(app_raising(mixed)) as c:
            await c.get("/")


async def test_a_guard_timeout_is_a_504() -> None:
    async with client(app_raising(GuardTimeoutError("search", "total", 2.0))) as c:
        response = await c.get("/")
    assert response.status_code == 504
    assert response.json()["error"] == "timeout" and response.json()["kind"] == "total"


async def test_other_errors_and_errors_after_the_response_started_pass_through() -> None:
    async with client(app_raising(ValueError("a bug")), raise_errors=False) as c:
        assert (await c.get("/")).status_code == 500  # Starlette's own answer
    with pytest.raises(ValueError, match="a bug"):
        async with client(app_raising(ValueError("a bug"))) as c:
            await c.get("/")
    late = app_raising(CircuitOpenError("payments", 1.0))
    with pytest.raises(CircuitOpenError):  # the 200 had gone out: nothing to turn into a 503
        async with client(late) as c:
            await c.get("/stream")


async def test_fastapi_with_real_guards(make_engine: MakeEngine, clock: FakeClock) -> None:
    fastapi = pytest.importorskip("fastapi", reason="fastapi is not installed")
    engine = make_engine(POLICIES)
    app = fastapi.FastAPI()
    app.add_middleware(GuardErrorMiddleware)

    async def refused() -> None:
        raise ConnectionError("refused")

    @app.get("/api")
    async def api() -> dict[str, str]:
        await engine.guard("api").call(refused)
        return {"never": "reached"}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await engine.guard("slow").call(asyncio.sleep, 10)
        return {"never": "reached"}

    async with client(app, raise_errors=False) as c:
        assert (await c.get("/api")).status_code == 500  # the dependency's own error: a bug
        assert (await c.get("/api")).status_code == 500  # second failure: the breaker opens
        response = await c.get("/api")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        clock.advance(29.5)
        assert (await c.get("/api")).headers["retry-after"] == "1"
        assert (await c.get("/slow")).status_code == 504


async def test_status_app_mounted_in_starlette(make_engine: MakeEngine, clock: FakeClock) -> None:
    engine = make_engine(POLICIES)
    ops = status_app(engine)
    app = Starlette(routes=[Mount("/ops", app=ops)])

    async def refused() -> None:
        raise ConnectionError("refused")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await engine.guard("api").call(refused)
    async with client(app) as c:
        response = await c.get("/ops/status")
        assert response.status_code == 200
        body = response.json()
        assert body["engine"]["version"] == engine.status()["version"]
        assert set(body["guards"]) == {"api", "pool", "slow"}
        api = body["guards"]["api"]
        assert (api["state"], api["mode"], api["failures"], api["calls"]) == (
            "open",
            "enforce",
            2,
            2,
        )
        assert body["guards"]["pool"]["bulkhead"]["max_concurrent"] == 2
        [event] = body["events"]
        assert (event["name"], event["guard"], event["data"]["to"]) == (
            "state_change",
            "api",
            "open",
        )
        metrics = await c.get("/ops/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'policyengine_breaker_state{guard="api"} 1.0' in metrics.text
        head = await c.head("/ops/status")
        assert (
            head.status_code == 200
            and head.content == b""
            and int(head.headers["content-length"]) > 0
        )
        assert (await c.get("/ops/nothing")).status_code == 404
        assert (await c.post("/ops/status")).status_code == 405
    ops.close()
    assert ops.listener not in engine.listeners._items


async def test_status_app_follows_the_default_engine(clock: FakeClock) -> None:
    import policyengine

    engine = policyengine.loads(POLICIES, clock=clock)
    try:
        async with client(status_app()) as c:
            body = json.loads((await c.get("/status")).text)
        assert body["engine"]["version"] == engine.status()["version"]
        assert body["events"] == []
    finally:
        engine.close()
