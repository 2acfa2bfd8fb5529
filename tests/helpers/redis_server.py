"""A throwaway `redis-server` on a free loopback port, for the shared-state tests and benchmark.

    server = RedisServer.start_new(tmp_dir)   # None if the binary is missing
    server.url, server.pause(), server.resume(), server.stop(), server.restart()

No persistence (``--save '' --appendonly no``): a restart comes back empty, as after a failover
to a fresh node. Also holds the worker functions the tests run in spawned processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["RedisServer", "free_port", "policies"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `restart` keeps the port."""

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_new(cls, directory: Path) -> RedisServer | None:
        binary = shutil.which("redis-server")
        if binary is None:
            return None
        server = cls(binary, directory, free_port())
        server.start()
        return server

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory), "--logfile", ""]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One raw command (RESP), for assertions that must not go through our client."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload.encode())
            time.sleep(0.02)
            return s.recv(65536)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def policies(
    url: str, prefix: str, breaker: str, *, on_error: str = "local", timeout: str = "50ms"
) -> str:
    """A policy file with one shared breaker `svc` (the `breaker` lines are its settings). The
    store `timeout` is short by default (tests of a hung store wait for it); tests that count
    store errors on a loaded machine pass a generous one."""
    return f"""
[state]
backend = "redis"
url = "{url}"
prefix = "{prefix}"
timeout = "{timeout}"
on_error = "{on_error}"

[policies.svc.breaker]
shared = true
{breaker}
"""


# -- workers, run in spawned processes -----------------------------------------------------------


def _engine(text: str) -> Any:
    import policyengine

    return policyengine.loads(text, default=False)


def _wait_connected(engine: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not engine._state_backend.status()["connected"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the backend did not connect")
        time.sleep(0.01)


def trip_worker(text: str, role: str, ready: Any, go: Any, out: Any) -> None:
    """`trip`: fail until the shared breaker opens. `watch`: report when it is seen open."""
    from policyengine import CircuitOpenError

    engine = _engine(text)
    guard = engine.guard("svc")
    _wait_connected(engine)
    opened = []
    engine.add_listener(
        lambda e: (
            opened.append(time.monotonic())
            if e.name == "state_change" and e.data.get("to") == "open"
            else None
        )
    )
    ready.put(os.getpid())
    go.wait(10)

    def boom() -> None:
        raise ConnectionError("down")

    result: dict[str, Any] = {"role": role, "pid": os.getpid()}
    deadline = time.monotonic() + 10
    if role == "trip":
        while guard.state != "open" and time.monotonic() < deadline:
            with contextlib.suppress(ConnectionError, CircuitOpenError):
                guard.call_sync(boom)
        result["tripped_at"] = time.monotonic()
    else:
        while not opened and time.monotonic() < deadline:
            time.sleep(0.001)
        result["seen_at"] = opened[0] if opened else None
        try:
            guard.call_sync(lambda: None)
            result["rejected"] = False
        except CircuitOpenError:
            result["rejected"] = True
    result["state"] = guard.state
    out.put(result)
    engine.close()


def probe_worker(text: str, coroutines: int, hold: float, ready: Any, go: Any, out: Any) -> None:
    """Wait for half-open, then start `coroutines` calls at once; count the admitted ones."""
    from policyengine import CircuitOpenError

    engine = _engine(text)
    guard = engine.guard("svc")
    _wait_connected(engine)
    ready.put(guard.state)
    go.wait(30)
    deadline = time.monotonic() + 10
    while guard.state != "half_open" and time.monotonic() < deadline:
        time.sleep(0.002)

    async def probe() -> None:
        await asyncio.sleep(hold)

    async def burst() -> list[str]:
        # On the event loop a lease is fetched in the background (the calls meanwhile are
        # refused with retry_after = one round trip), so each call retries for a second: far
        # less than the probes hold, so no call can come after the probes closed the breaker.
        until = time.monotonic() + 1.0

        async def one() -> str:
            while True:
                try:
                    await guard.call(probe)
                    return "admitted"
                except CircuitOpenError as exc:
                    if time.monotonic() >= until:
                        return "rejected"
                    await asyncio.sleep(min(max(exc.retry_after, 0.002), 0.02))

        return list(await asyncio.gather(*(one() for _ in range(coroutines))))

    outcomes = asyncio.run(burst())
    state_deadline = time.monotonic() + 5
    while guard.state != "closed" and time.monotonic() < state_deadline:
        time.sleep(0.005)
    out.put({"admitted": outcomes.count("admitted"), "state": guard.state})
    engine.close()
