"""ASGI glue for web services (FastAPI, Starlette, any ASGI 3 framework); no dependency::

    from policyengine.asgi import GuardErrorMiddleware, status_app

    app = FastAPI()
    app.add_middleware(GuardErrorMiddleware)      # RejectedError -> 503, GuardTimeoutError -> 504
    app.mount("/ops", status_app())               # GET /ops/status (JSON), GET /ops/metrics

`GuardErrorMiddleware` turns the guard's own errors, raised out of a request handler, into the
answers a client and a load balancer understand: a `RejectedError` (open circuit, full bulkhead,
and any later rejection such as a rate limit) into **503 Service Unavailable** with a
``Retry-After`` header when the error carries a ``retry_after`` (seconds, rounded up), and a
`GuardTimeoutError` into **504 Gateway Timeout**. The body is JSON: ``{"error": reason, "guard":
name, "detail": message}`` (plus ``retry_after``). Any other exception passes through untouched,
and so does an error raised after the response has started (nothing can be said any more).

`status_app(engine)` is a small ASGI app for operators: ``/status`` gives the engine's
`status()`, every guard's state, mode, metrics and bulkhead use, and the recent engine events
(state changes, reloads, rejected edits) as JSON (what ``policyengine top URL`` reads);
``/metrics`` gives the Prometheus text exposition when ``prometheus_client`` is installed (404
with a hint otherwise). Recent events are kept by one listener on the engine, which makes guards
build an event per rejection; ``events=0`` keeps no listener (``top`` then infers state changes
from successive samples).
"""

from __future__ import annotations

import collections
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ._telemetry.events import Event
from .exceptions import GuardTimeoutError, RejectedError

if TYPE_CHECKING:
    from ._registry.engine import Engine

__all__ = ["GuardErrorMiddleware", "StatusApp", "error_response", "status_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Per-call events arrive at the rate of calls; /status keeps only the ones an operator reads.
_KEPT_EVENTS = frozenset(
    {"state_change", "reload", "reload_failed", "policy_removed", "state_backend_changed"}
    | {"store_degraded", "store_recovered"}
)


def _guard_error(exc: BaseException) -> RejectedError | GuardTimeoutError | None:
    """The guard error `exc` is, or wraps alone (an exception group of one, as task groups
    raise)."""
    if isinstance(exc, RejectedError | GuardTimeoutError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _guard_error(exc.exceptions[0])
    return None


def error_response(
    exc: RejectedError | GuardTimeoutError,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, JSON body) for a guard error: 503 (+ Retry-After) or 504."""
    body: dict[str, Any] = {"guard": getattr(exc, "guard", None), "detail": str(exc)}
    headers: list[tuple[str, str]] = []
    if isinstance(exc, GuardTimeoutError):
        status = 504
        body["error"] = "timeout"
        body["kind"] = exc.kind
    else:
        status = 503
        body["error"] = exc.reason
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and math.isfinite(retry_after):
            seconds = max(0, math.ceil(retry_after))
            headers.append(("retry-after", str(seconds)))
            body["retry_after"] = retry_after
    return status, headers, json.dumps(body).encode()


async def _send(
    send: Send, status: int, headers: list[tuple[str, str]], body: bytes, *, head: bool = False
) -> None:
    """One whole response (`head`: the headers of a HEAD request's answer, without the body)."""
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


class GuardErrorMiddleware:
    """ASGI middleware: `RejectedError` -> 503 with Retry-After, `GuardTimeoutError` -> 504."""

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            error = _guard_error(exc)
            if error is None or started:
                raise
            status, headers, body = error_response(error)
            await _send(send, status, [("content-type", "application/json"), *headers], body)


def _route(scope: Scope) -> str:
    """The path below where the app is mounted (Starlette's `Mount` sets root_path)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


class StatusApp:
    """``/status`` (JSON) and ``/metrics`` (Prometheus text) of one engine (None: the default
    engine, looked up at each request)."""

    def __init__(self, engine: Engine | None = None, *, events: int = 50) -> None:
        self._engine = engine
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(events, 1))
        self._keep = events > 0
        self._seq = 0
        self._lock = threading.Lock()
        self._listening: Engine | None = None
        self._registry: Any = None
        self._bound = self.listener  # one bound method: the engine removes listeners by identity
        if engine is not None:
            self._listen(engine)

    @property
    def engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        from ._registry.default import default_engine

        return default_engine()

    def _listen(self, engine: Engine) -> None:
        """Keep the engine's recent events (from the first request on; `events=0`: never)."""
        if not self._keep or self._listening is engine:
            return
        if self._listening is not None:
            self._listening.remove_listener(self._bound)
        self._listening = engine
        engine.add_listener(self._bound)

    def listener(self, event: Event) -> None:
        """Engine listener (any thread): keeps the events an operator reads."""
        if event.name not in _KEPT_EVENTS:
            return
        data = {k: v for k, v in event.data.items() if k != "issues"}
        with self._lock:
            self._seq += 1
            self._events.append(
                {"seq": self._seq, "at": time.time(), "name": event.name, "guard": event.guard}
                | {"data": data}
            )

    def close(self) -> None:
        """Stop keeping events."""
        if self._listening is not None:
            self._listening.remove_listener(self._bound)
            self._listening = None

    def status(self) -> dict[str, Any]:
        """What ``/status`` answers, as a dict."""
        engine = self.engine
        self._listen(engine)
        guards: dict[str, dict[str, Any]] = {}
        for name, guard in sorted(engine.guards.items()):
            guards[name] = {**guard.snapshot(), "mode": guard.mode}
        with self._lock:
            events = list(self._events)
        return {
            "engine": engine.status(),
            "guards": guards,
            "events": events,
            "time": time.time(),
        }

    def metrics(self) -> bytes | None:
        """The Prometheus exposition, or None without prometheus_client."""
        try:
            from prometheus_client import CollectorRegistry, generate_latest
        except ImportError:
            return None
        if self._registry is None:
            from .prometheus import PolicyEngineCollector

            registry = CollectorRegistry()
            registry.register(PolicyEngineCollector(self._engine))
            self._registry = registry
        out: bytes = generate_latest(self._registry)
        return out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        route, method = _route(scope), scope.get("method", "GET")
        if route not in ("/status", "/metrics"):
            await _send(send, 404, [("content-type", "text/plain")], b"try /status or /metrics\n")
            return
        if method not in ("GET", "HEAD"):
            await _send(send, 405, [("allow", "GET, HEAD")], b"")
            return
        head = method == "HEAD"
        if route == "/status":
            body = json.dumps(self.status(), default=str).encode()
            await _send(send, 200, [("content-type", "application/json")], body, head=head)
            return
        text = self.metrics()
        if text is None:
            hint = b"prometheus_client is not installed: pip install prometheus_client\n"
            await _send(send, 404, [("content-type", "text/plain")], hint, head=head)
            return
        content_type = "text/plain; version=0.0.4; charset=utf-8"
        await _send(send, 200, [("content-type", content_type)], text, head=head)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served on its own (not mounted), the app has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def status_app(engine: Engine | None = None, *, events: int = 50) -> StatusApp:
    """The operator's ASGI app: ``/status`` and ``/metrics`` of `engine` (None: the default
    engine). `events`: how many recent engine events ``/status`` lists (0: no listener)."""
    return StatusApp(engine, events=events)
