"""The flaky dependency: a tiny HTTP/1.0 server on 127.0.0.1, and the client the demo guards.

The server answers `GET /<endpoint>` after a latency, with 200 or 503, or never (a hang, which
only the caller's attempt timeout ends), as the story's current phase says. The client raises
`policyengine._demo.errors.ServiceUnavailable` for a 503 and `ConnectionError` for a broken
connection, like a real HTTP client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from ._story import Conditions
from .errors import HTTPError, ServiceUnavailable

__all__ = ["FlakyService"]

_HANG_LIMIT = 30.0  # a hanging request gives up on its own after this long


class FlakyService:
    """`async with FlakyService(conditions) as svc: await svc.get("checkout")`."""

    def __init__(self, conditions: Callable[[str], Conditions], *, seed: int | None = None):
        self._conditions = conditions
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> FlakyService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=1.0)
        await server.wait_closed()

    # ------------------------------------------------------------------ server
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        parts = request.split(b" ", 2)
        endpoint = parts[1].decode("ascii", "replace").strip("/") if len(parts) > 1 else ""
        cond = self._conditions(endpoint)
        draw = self._rng.random()
        if draw < cond.hang_rate:
            # Hang until the client gives up (closes) or the limit passes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), _HANG_LIMIT)
            return
        await asyncio.sleep(cond.draw_latency(self._rng))
        if draw < cond.hang_rate + cond.error_rate:
            status, body = "503 Service Unavailable", b"down"
        else:
            status, body = "200 OK", b"ok"
        head = f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode("ascii") + body)
        await writer.drain()

    # ------------------------------------------------------------------ client
    async def get(self, endpoint: str) -> str:
        """One request: the body, or ServiceUnavailable / HTTPError / ConnectionError."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"GET /{endpoint} HTTP/1.0\r\n\r\n".encode("ascii"))
            await writer.drain()
            try:
                response = await reader.read()
            except asyncio.IncompleteReadError as exc:
                raise ConnectionError("connection closed mid-response") from exc
        finally:
            writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        fields = head.split(b" ", 2)
        if len(fields) < 2 or not fields[1].isdigit():
            raise ConnectionError("connection closed without a response")
        status = int(fields[1])
        if status == 503:
            raise ServiceUnavailable()
        if status >= 400:
            raise HTTPError(status)
        return body.decode("ascii", "replace")
