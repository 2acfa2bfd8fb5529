"""Recording attempt traces: one JSON line per attempt, written off the caller's path.

Why: an operator who edits a policy should learn what the edit does before it is in force.
`policyengine simulate` replays recorded traffic through the edited policies, and
`policyengine suggest` derives values from it; both read what this module writes.

Parts:

- `RecordOptions`: the top-level ``[record]`` table (`path`, `sample`, rotation, queue size).
- `TraceWriter`: one per engine. Callers append a small tuple to a bounded deque (no lock, no
  I/O, no formatting on the caller's thread); a daemon thread drains it every `flush_interval`,
  formats each entry as JSON and appends to the file, rotating it at `max_bytes` (``path.1`` ...
  ``path.N``). A full queue drops the entry and counts it (`dropped`): recording never blocks a
  call, and never grows memory without bound. `close()` drains what is queued and stops.
- `_rollout.recorder.Recorder`: the `AttemptLayer` of one guard (and key). `admit` returns 0.0;
  `settle` samples and enqueues. It reads its writer through a `Recording` at each attempt, so a
  reload that changes ``[record]`` swaps the writer under every guard at once, with no recompile.
- `_rollout.recorder.Recording`: the engine's switch: the writer in force, from ``[record]`` or
  `engine.record()`, and what gives guards their recorders.

A line: ``{"time": 1764842400.123456, "guard": "payments", "key": "eu", "attempt": 1, "call":
17, "duration": 0.0123, "outcome": "failure", "error": "builtins.ConnectionError", "status":
503}`` (`time` is when the attempt ended, in Unix seconds; `call` numbers the calls of this
process, so that retries are grouped with their call; `key`, `attempt`, `call`, `error` and
`status` are left out when unknown). Outcomes: success, failure (an exception, counted or
ignored by the breaker), timeout (the guard's deadline), rejected (refused before it ran).
Cancelled attempts are not written: a cancellation says nothing about the dependency.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from .._config.matcher_models import FrozenModel
from .._config.matchers import status_of
from .._config.units import Duration, Ratio

if TYPE_CHECKING:
    from .._runtime.clock import Clock

__all__ = ["RecordOptions", "TraceWriter", "line_head", "written_outcome"]

_WRITTEN = {"success": "success", "failure": "failure", "ignored": "failure"}
_WRITTEN.update(timeout="timeout", rejected="rejected")


class RecordOptions(FrozenModel):
    """Attempt traces as JSON lines (`policyengine simulate` and `suggest` read them)."""

    path: str = Field(min_length=1, description="The trace file (JSON lines), appended to.")
    sample: Ratio = Field(default=1.0, description="Share of calls written (whole calls).")
    max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, strict=True, description="Rotate past this size."
    )
    backups: int = Field(default=3, ge=0, strict=True, description="Rotated files kept.")
    queue: int = Field(
        default=65536, ge=1, strict=True, description="Entries waiting to be written (past: drop)."
    )
    flush_interval: Duration = Field(default=0.1, description="How often the queue is drained.")


def line_head(guard: str, key: str | None) -> str:
    """The guard (and key) of a trace line, as JSON members."""
    head = f'"guard":{json.dumps(guard)}'
    return head if key is None else f'{head},"key":{json.dumps(key)}'


def _type_name(error: BaseException | None) -> str | None:
    if error is None:
        return None
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


# one queued entry: (end time on the engine clock, the recorder (guard and key), key of this
# call, attempt, call, duration, outcome as the lifecycle said it, error)
_Entry = tuple[
    float, Any, "str | None", "int | None", "int | None", float, str, "BaseException | None"
]


class TraceWriter:
    """The file side: a bounded queue drained by a daemon thread (see the module docstring)."""

    def __init__(
        self,
        options: RecordOptions,
        clock: Clock,
        *,
        wall: Callable[[], float] = time.time,
        start: bool = True,
    ) -> None:
        self.options = options
        self.path = Path(options.path)
        self._limit = options.queue
        self.sample = options.sample
        self._queue: deque[_Entry] = deque()
        self.dropped = 0
        self.written = 0
        self.rotations = 0
        # engine-clock seconds to Unix seconds, fixed once: no wall-clock read per attempt
        self._offset = wall() - clock.now()
        self._stop = threading.Event()
        self._io_lock = threading.Lock()  # one drain at a time (the thread, close, flush)
        self._file: Any = None
        self._size = 0
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._run, name="policyengine-record", daemon=True
            )
            self._thread.start()

    # ---------------------------------------------------------- caller side
    def put(self, entry: _Entry) -> None:
        """Queue one entry, or drop and count it when the queue is full. Never blocks."""
        queue = self._queue
        if len(queue) >= self._limit:
            self.dropped += 1  # (a lost increment under a race is a miscount of one, no harm)
            return
        queue.append(entry)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------ file side
    def _run(self) -> None:
        interval = self.options.flush_interval
        while not self._stop.wait(interval):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Write everything queued now (the thread calls this; tests and `close` may too)."""
        with self._io_lock:
            queue = self._queue
            lines = []
            while queue:
                line = self._line(queue.popleft())
                if line is not None:
                    lines.append(line)
            if lines:
                self._write(lines)

    def _line(self, entry: _Entry) -> str | None:
        now, recorder, key, attempt, call, duration, outcome, error = entry
        written = _WRITTEN.get(outcome)
        if written is None:
            return None  # an outcome this format does not know (a newer lifecycle's)
        # formatted by hand, one f-string for the usual line: this thread shares the GIL with
        # the callers, so its cost per line is part of what recording costs
        head = recorder._head if key is None else line_head(recorder.guard, key)
        numbers = ""
        if attempt is not None:
            numbers = (
                f',"attempt":{attempt:d},"call":{call:d}' if call else f',"attempt":{attempt:d}'
            )
        line = (
            f'{{"time":{now + self._offset:.6f},{head}{numbers},'
            f'"duration":{duration:.6f},"outcome":"{written}"'
        )
        if error is None:
            return line + "}\n"
        status = status_of(error)
        tail = "" if status is None else f',"status":{status:d}'
        if getattr(error, "injected", False):
            tail += ',"injected":true'  # by a chaos drill (simulate replays it as recorded)
        return f'{line},"error":{json.dumps(_type_name(error))}{tail}}}\n'

    def _write(self, lines: list[str]) -> None:
        if self._file is None:
            self._open()
        batch = "".join(lines).encode("utf-8")
        if self._size + len(batch) <= self.options.max_bytes:  # the usual case: one write
            self._file.write(batch)
            self._size += len(batch)
            self._file.flush()
            self.written += len(lines)
            return
        for line in lines:
            data = line.encode("utf-8")
            if self._file is not None and self._size + len(data) > self.options.max_bytes:
                self._rotate()
            if self._file is None:
                self._open()
            self._file.write(data)
            self._size += len(data)
        self._file.flush()
        self.written += len(lines)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 (kept open across drains)
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        backups = self.options.backups
        if backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.flush()
        with self._io_lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _after_fork(self) -> bool:
        """In a forked child: a new lock and thread (the parent's thread is not here)."""
        self._io_lock = threading.Lock()
        self._file = None  # the parent's handle: the child reopens (appends) on its own
        if self._thread is not None and not self._stop.is_set():
            self._thread = threading.Thread(
                target=self._run, name="policyengine-record", daemon=True
            )
            self._thread.start()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sample": self.options.sample,
            "written": self.written,
            "dropped": self.dropped,
            "queued": len(self._queue),
            "rotations": self.rotations,
        }


def written_outcome(outcome: str) -> bool:
    """Whether an attempt's outcome goes into a trace (a cancellation does not)."""
    return outcome in _WRITTEN
