"""Real HTTP servers on loopback for the web tests: an ASGI app served by uvicorn in a thread
of its own (its own event loop), and a downstream whose behaviour a test switches.

    with serve(app) as url: ...          # "http://127.0.0.1:PORT"; stopped on exit
    down = Downstream(); down.mode = "hang" | "ok" | "503"
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from tests.helpers.redis_server import free_port

__all__ = ["Downstream", "serve"]


@contextlib.contextmanager
def serve(app: Any, *, lifespan: str = "auto") -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port until the block ends."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan=lifespan,
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class Downstream:
    """A dependency: ``ok`` answers 200 JSON at once, ``hang`` answers nothing until the mode
    changes, ``503`` answers 503 with ``Retry-After: 7``. Counts the requests it got."""

    def __init__(self, name: str = "downstream") -> None:
        self.name = name
        self.mode = "ok"
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        self.requests += 1
        mode = self.mode
        while mode == "hang":  # until the test sets another mode (then answer as that mode)
            await asyncio.sleep(0.02)
            mode = self.mode
        status, headers = (200, []) if mode == "ok" else (503, [(b"retry-after", b"7")])
        body = b'{"from": "%s", "status": %d}' % (self.name.encode(), status)
        headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
