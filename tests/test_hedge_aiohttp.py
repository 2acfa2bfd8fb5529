"""The aiohttp middleware hedges only idempotent methods (a loopback server, real timers)."""

from __future__ import annotations

import asyncio

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is an optional extra")

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

import policyengine  # noqa: E402
from policyengine.aiohttp import GuardedMiddleware  # noqa: E402

POLICY = """
[policies.search.hedge]
delay = "20ms"
max_extra_load = 1.0
"""


@pytest.mark.parametrize(("method", "hedged"), [("GET", True), ("DELETE", True), ("POST", False)])
async def test_only_idempotent_methods_are_hedged(method: str, hedged: bool) -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.method)
        n = len(seen)
        await asyncio.sleep(0.15 if n == 1 else 0.001)  # the first answer is slow
        return web.Response(text=str(n))

    app = web.Application()
    app.router.add_route("*", "/x", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    engine = policyengine.loads(POLICY, default=False)
    try:
        middleware = GuardedMiddleware("search", engine=engine)
        async with (
            aiohttp.ClientSession(middlewares=[middleware]) as session,
            session.request(method, f"http://127.0.0.1:{server.port}/x", data=b"b") as response,
        ):
            text = await response.text()
    finally:
        await server.close()
        engine.close()
    assert (text, len(seen)) == (("2", 2) if hedged else ("1", 1))
    assert engine.guard("search").metrics()["hedge_wins"] == (1 if hedged else 0)
