"""The cascade scenario: a web service with two HTTP downstreams, one of which starts hanging.

Shared by the end-to-end test (`test_e2e_cascade.py`, policyengine only) and the benchmark
(`bench/bench_cascade.py`, which compares it with no guard and with tenacity + circuitbreaker).

The service is a real Starlette app served by uvicorn; `/a` calls downstream A, `/b` calls
downstream B, both through **one** shared httpx client (one connection pool, as most services
have). Load is bounded request loops on 127.0.0.1: `concurrency` loops per endpoint, each
sending its next request when the last one ends. Without a guard the hung requests to B hold
the pool's connections until their timeout, and A's requests queue behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.asgi_servers import Downstream, serve
from tests.helpers.redis_server import free_port

__all__ = ["POLICIES", "Phase", "Result", "measure", "service"]

POLICIES = """
schema_version = 1

[templates.default]
timeout = { total = "2s", attempt = "500ms" }  # loop lag counts: a loaded CI machine has some

[templates.default.retry]
max_attempts = 2
initial_delay = "20ms"
max_delay = "100ms"
retry_on = ["httpx.TransportError", { type = "httpx.HTTPStatusError", status = [502, 503, 504] }]

[templates.default.breaker]
consecutive_failures = 5
open_duration = "30s"

[templates.default.bulkhead]
max_concurrent = 5               # a hung dependency holds at most half the pool's connections
max_queue = 16
max_wait = "500ms"

[policies.a]
[policies.b]
"""

POOL = 10  # connections of the shared httpx client (fewer than the callers of B)
CLIENT_TIMEOUT = 5.0  # httpx's own default, for the unguarded service


@dataclass
class Phase:
    """What the load loops saw on one endpoint during one phase."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    retry_after: int = 0  # answers with a Retry-After header

    @property
    def ok_per_s(self) -> float:
        return self.statuses.get(200, 0) / self.seconds

    def p(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


@dataclass
class Result:
    healthy: dict[str, Phase]
    degraded: dict[str, Phase]  # from the moment B hangs: the breaker opens during it
    open: dict[str, Phase]  # after it: B still hangs, its breaker is open
    status: dict[str, Any] | None  # /ops/status after the run (policyengine only), with
    # "before_open_phase": the same, taken before the last phase

    @property
    def kept(self) -> float:
        """A's throughput with B hanging, as a share of its healthy throughput."""
        base = self.healthy["a"].ok_per_s
        return self.degraded["a"].ok_per_s / base if base else 0.0


def _policyengine(urls: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], Any]]:
    import policyengine
    from policyengine.httpx import GuardedTransport

    engine = policyengine.loads(POLICIES)  # the default engine: /ops/status reports it
    hosts = {httpx.URL(u).netloc.decode(): name for name, u in urls.items()}
    transport = GuardedTransport(
        hosts, httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=POOL)), engine=engine
    )
    client = httpx.AsyncClient(transport=transport, timeout=CLIENT_TIMEOUT)

    async def get(name: str) -> httpx.Response:
        return await client.get(urls[name])

    async def close() -> None:
        await client.aclose()
        engine.close()
        policyengine.set_default_engine(None)

    return get, close


def _unguarded(urls: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], Any]]:
    client = httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=httpx.Limits(max_connections=POOL))

    async def get(name: str) -> httpx.Response:
        return await client.get(urls[name])

    return get, client.aclose


def _tenacity(urls: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], Any]]:
    """The usual hand-rolled stack: a per-request timeout, tenacity retries, a breaker per
    dependency (circuitbreaker), same numbers as the policy."""
    import circuitbreaker
    import tenacity

    client = httpx.AsyncClient(timeout=0.5, limits=httpx.Limits(max_connections=POOL))
    calls = {}
    for name in urls:
        breaker = circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=30, expected_exception=httpx.TransportError,
            name=f"cascade-{name}-{id(client)}",
        )  # fmt: skip

        async def once(url: str = urls[name]) -> httpx.Response:
            response = await client.get(url)
            if response.status_code in (502, 503, 504):
                response.raise_for_status()
            return response

        calls[name] = tenacity.retry(
            stop=tenacity.stop_after_attempt(2),
            wait=tenacity.wait_exponential(multiplier=0.02, max=0.1),
            retry=tenacity.retry_if_exception_type(httpx.TransportError),
            reraise=True,
        )(breaker(once))

    async def get(name: str) -> httpx.Response:
        response: httpx.Response = await calls[name]()
        return response

    return get, client.aclose


VARIANTS: dict[str, Callable[[dict[str, str]], tuple[Callable[[str], Any], Callable[[], Any]]]] = {
    "none": _unguarded,
    "tenacity+circuitbreaker": _tenacity,
    "policyengine": _policyengine,
}


def service(variant: str, urls: dict[str, str]) -> Any:
    """The Starlette app: GET /a and /b call the downstreams; guard errors become 503/504."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from policyengine.asgi import GuardErrorMiddleware

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["get"], close = VARIANTS[variant](urls)
        try:
            yield
        finally:
            await close()

    async def call(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            response = await state["get"](name)
        except Exception as exc:  # what an unguarded service does: a 502 naming the error
            from policyengine import GuardTimeoutError, RejectedError

            if isinstance(exc, RejectedError | GuardTimeoutError):
                raise  # the middleware answers 503 / 504
            return JSONResponse({"error": type(exc).__name__}, status_code=502)
        return JSONResponse(response.json(), status_code=response.status_code)

    async def ping(request: Request) -> Response:
        return Response("pong")

    routes: list[Any] = [Route("/ping", ping), Route("/{name}", call)]
    if variant == "policyengine":
        from starlette.routing import Mount

        from policyengine.asgi import status_app

        routes.insert(0, Mount("/ops", app=status_app()))  # the default engine, once loaded
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(GuardErrorMiddleware)
    return app


def _serve_child(variant: str, url_a: str, url_b: str, port: int) -> None:
    """In the service's own process: serve until SIGTERM."""
    import uvicorn

    app = service(variant, {"a": url_a, "b": url_b})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def _child_service(variant: str, url_a: str, url_b: str) -> Iterator[str]:
    """The service in a process of its own, so that it does not share a core (and the GIL)
    with the load loops and the downstreams."""
    port = free_port()
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parents[2])!r}); "
        "from tests.helpers import cascade; "
        f"cascade._serve_child({variant!r}, {url_a!r}, {url_b!r}, {port})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {variant} service did not start on port {port}")
            time.sleep(0.02)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running(variant: str) -> Iterator[tuple[str, dict[str, Downstream]]]:
    """The downstreams (threads of this process) and the service (a process of its own), each
    on its own loopback port. On exit B stops hanging first, so that every request ends."""
    downs = {"a": Downstream("a"), "b": Downstream("b")}
    with serve(downs["a"]) as url_a, serve(downs["b"]) as url_b:
        try:
            with _child_service(variant, url_a, url_b) as url:
                yield url, downs
        finally:
            downs["b"].mode = "ok"


async def _load(url: str, seconds: float, concurrency: int) -> dict[str, Phase]:
    phases = {name: Phase(seconds) for name in ("a", "b")}
    limits = httpx.Limits(max_connections=4 * concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        deadline = time.monotonic() + seconds

        async def loop(name: str) -> None:
            phase = phases[name]
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                hinted = False
                try:
                    response = await client.get(f"/{name}")
                    status, hinted = response.status_code, "retry-after" in response.headers
                except httpx.HTTPError:
                    status = 0
                if time.monotonic() <= deadline:  # a request past the end is not counted
                    phase.latencies.append(time.monotonic() - t0)
                    phase.statuses[status] = phase.statuses.get(status, 0) + 1
                    phase.retry_after += hinted

        await asyncio.gather(*(loop(n) for n in ("a", "b") for _ in range(concurrency)))
    return phases


def measure(
    variant: str,
    *,
    seconds: float = 2.0,
    concurrency: int = 16,
    during: Callable[[str], None] | None = None,
) -> Result:
    """Healthy load for `seconds`, then B hangs and the same load runs again, then once more
    for half as long (B's breaker, if any, is open by then). `during(url)` runs while the
    service is still up, after the load."""
    with running(variant) as (url, downs):
        asyncio.run(_load(url, 0.3, concurrency))  # warm up: connections, first calls
        if variant == "policyengine":  # /ops/status keeps events from its first request on
            httpx.get(f"{url}/ops/status").raise_for_status()
        healthy = asyncio.run(_load(url, seconds, concurrency))
        downs["b"].mode = "hang"
        degraded = asyncio.run(_load(url, seconds, concurrency))
        before = httpx.get(f"{url}/ops/status").json() if variant == "policyengine" else None
        opened = asyncio.run(_load(url, seconds / 2, concurrency))
        status = None
        if variant == "policyengine":
            status = httpx.get(f"{url}/ops/status").json()
            status["before_open_phase"] = before
        if during is not None:
            during(url)
    return Result(healthy, degraded, opened, status)
