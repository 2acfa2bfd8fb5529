"""Running a check in a forked child: `run_in_child(body)` forks, runs `body` in the child and
returns what it returned (JSON through a pipe). The child always ends with `os._exit`, so a
failing child never goes on running pytest; the parent waits with a deadline and kills a child
that hangs (a deadlock in the child fails the test instead of hanging the suite)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["CHILD_TIMEOUT", "run_in_child"]

CHILD_TIMEOUT = 30.0  # the whole child, after which it is killed


def run_in_child(
    body: Callable[[], dict[str, Any]],
    *,
    then: Callable[[], None] | None = None,
    timeout: float = CHILD_TIMEOUT,
) -> dict[str, Any]:
    """Fork; run `body` in the child and return what it returned. `then` runs in the parent
    right after the fork (while the child works)."""
    r, w = os.pipe()
    with warnings.catch_warnings():  # 3.12+: "this process is multi-threaded, fork() may..."
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never leaves this block
        code = 70
        try:
            os.close(r)
            try:
                report: dict[str, Any] = {"ok": True, "result": body()}
            except BaseException:
                report = {"ok": False, "error": traceback.format_exc()}
            data = json.dumps(report, default=repr).encode()
            while data:
                data = data[os.write(w, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        if then is not None:
            then()
        raw = _read_all(pid, r, time.monotonic() + timeout)
        code = _wait_exit(pid, time.monotonic() + timeout)
    finally:
        os.close(r)
    assert code == 0, f"the child exited with {code}"
    report = json.loads(raw)
    if not report["ok"]:
        pytest.fail(f"the child failed:\n{report['error']}")
    result: dict[str, Any] = report["result"]
    return result


def _kill(pid: int, why: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(why)


def _read_all(pid: int, fd: int, deadline: float) -> bytes:
    """Everything the child writes, until it closes the pipe (its exit)."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid, "the child did not finish in time (deadlocked or hung?)")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _wait_exit(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            _kill(pid, "the child did not exit in time")
        time.sleep(0.002)
