"""The caller's side of recording (see `_rollout.record`): the layer each guard gets, and the
engine's switch that swaps trace writers and gives guards their recorders.

Attempt and call numbers: the layer protocol passes neither, so they are read from what the
lifecycle does in the caller's own task or thread. A "retry" event (emitted between an attempt
and the next) sets the next attempt's number in a context variable; the next `settle` reads and
clears it. A first attempt takes a new call number, which later attempts of the same context
read. Refusals no layer sees (an open breaker at the door or at a retry, the retry budget, a
layer before the recorder) come from "rejected" and "budget_exhausted" events.
"""

from __future__ import annotations

import contextvars
import itertools
import random as _random
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import BulkheadFullError, CircuitOpenError, RejectedError
from .enforce import shadow_of
from .record import RecordOptions, TraceWriter, line_head, written_outcome

if TYPE_CHECKING:
    from .._runtime.clock import Clock
    from .._runtime.layer import Outcome
    from .._telemetry.events import Event, Listeners

__all__ = ["Recorder", "Recording"]

# Which call an attempt belongs to: a first attempt takes a new number, later attempts of the
# same call (the same task or thread: a call's attempts never run in another context) read it.
_CALL: contextvars.ContextVar[int] = contextvars.ContextVar("policyengine_record_call", default=0)
_CALL_IDS = itertools.count(1)
# The number of the next attempt in this context: set by a "retry" event (the lifecycle emits it
# in the caller's task or thread, between an attempt and the next), read and cleared by the
# next attempt's settle. Unset: a first attempt.
_NEXT: contextvars.ContextVar[int] = contextvars.ContextVar("policyengine_record_next", default=1)
_REJECTED = {
    "circuit_open": CircuitOpenError,
    "bulkhead_full": BulkheadFullError,
}


class Recording:
    """The engine's switch: which writer is in force (None: not recording)."""

    __slots__ = (
        "_clock", "_closed", "_explicit", "_listening", "_lock", "_recorders", "listeners",
        "options", "writer",
    )  # fmt: skip

    def __init__(self, clock: Clock, listeners: Listeners | None = None) -> None:
        self._clock = clock
        self.listeners = listeners
        self._recorders: dict[str, Recorder] = {}
        self._listening = False
        self.writer: TraceWriter | None = None
        self.options: RecordOptions | None = None
        self._explicit = False  # engine.record() wins over the file's [record]
        self._closed = False  # a closed engine starts no thread
        self._lock = threading.Lock()  # a reload and engine.record() from another thread

    def apply(self, options: RecordOptions | None, guards: Mapping[str, Any] = {}) -> bool:
        """A (re)load's ``[record]``: swap writers if it changed, and give `guards` (the ones
        in force) their recorders while recording. True if the writer changed."""
        with self._lock:
            changed = not self._explicit and options != self.options
            if changed:
                self._swap(options)
            self._attach(guards)
        return changed

    def start(self, options: RecordOptions | None, guards: Mapping[str, Any] = {}) -> None:
        """`engine.record(...)`: from now on this, whatever the file says (None: stop)."""
        with self._lock:
            self._explicit = options is not None
            if options != self.options:
                self._swap(options)
            self._attach(guards)

    def _attach(self, guards: Mapping[str, Any]) -> None:
        """While recording: every guard gets a `Recorder` as its last layer (once; a recorder is
        never taken off a live guard: with no writer it returns at once). Appending at the end
        is safe under calls in flight: an attempt settles the layers it was admitted by, by
        count, and those are the first ones."""
        if self.writer is None:
            return
        for name, guard in guards.items():
            recorder = self._recorders.get(name) or Recorder(self, name)
            self._recorders[name] = recorder
            for runtime in (guard, shadow_of(guard)):  # a ramp's observed calls too
                if runtime is None or any(isinstance(x, Recorder) for x in runtime.layers):
                    continue
                runtime.layers = (*runtime.layers, recorder)
                runtime.clocked = True  # layers need each attempt's duration
        if not self._listening and self.listeners is not None:
            self.listeners.add(self._on_event)
            self._listening = True

    def _on_event(self, event: Event) -> None:
        """What no layer sees: retries (the next attempt's number) and refusals before the
        layers (an open breaker at the door or at a retry, the retry budget, another layer)."""
        name = event.name
        if name == "retry":
            _NEXT.set(int(event.data.get("attempt", 0)) + 1)
            return
        if self.writer is None or name not in ("rejected", "budget_exhausted"):
            return
        reason = str(event.data.get("reason", "budget_exhausted"))
        if reason == "bulkhead_full":
            return  # after the layers: the recorder settles it itself
        recorder = self._recorders.get(event.guard)
        if recorder is not None:
            kind: type[Exception] = _REJECTED.get(reason, RejectedError)
            error = kind.__new__(kind)  # (no constructor: only the type goes into the trace)
            Exception.__init__(error, reason)
            recorder.record("rejected", error, 0.0, self._clock.now(), _NEXT.get())

    def _swap(self, options: RecordOptions | None) -> None:
        if self._closed:
            return
        old = self.writer
        self.writer = None if options is None else TraceWriter(options, self._clock)
        self.options = options
        if old is not None:
            old.close()  # flushes: nothing queued before the swap is lost

    def close(self) -> None:
        self._closed = True
        if self._listening and self.listeners is not None:
            self.listeners.remove(self._on_event)
            self._listening = False
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()

    def status(self) -> dict[str, Any] | None:
        writer = self.writer
        return None if writer is None else writer.status()


class Recorder:
    """One guard's recording layer (`policyengine._runtime.layer.AttemptLayer`)."""

    __slots__ = ("_head", "_random", "guard", "key", "recording")

    def __init__(
        self,
        recording: Recording,
        guard: str,
        key: str | None = None,
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.recording = recording
        self.guard = guard
        self.key = key
        self._random = random
        self._head = line_head(guard, key)

    def admit(self, now: float, limit: float | None = None) -> float:
        return 0.0

    def settle(
        self, outcome: Outcome, error: BaseException | None, duration: float, now: float
    ) -> None:
        # the hot path of recording: a few attribute reads and one deque append (the mapping
        # of outcomes and the formatting happen on the writer's thread)
        writer = self.recording.writer
        if writer is None:
            return
        attempt = _NEXT.get()
        if attempt != 1:  # a retry: its call's number (< 0: the call is not sampled)
            _NEXT.set(1)
            call = _CALL.get()
            if call < 0:
                return
        else:
            # sampled per call, at its first attempt: a trace holds whole calls
            if writer.sample < 1.0 and self._random() >= writer.sample:
                if outcome != "success":
                    _CALL.set(-1)  # a retry may follow: it is left out too
                return
            call = next(_CALL_IDS)
            if outcome != "success":  # a retry may follow: its settle reads the number here
                _CALL.set(call)
        if outcome == "cancelled":
            return
        queue = writer._queue
        if len(queue) >= writer._limit:
            writer.dropped += 1  # (a lost increment under a race is a miscount of one, no harm)
            return
        queue.append((now, self, None, attempt, call, duration, outcome, error))

    def record(
        self,
        outcome: str,
        error: BaseException | None,
        duration: float,
        now: float,
        attempt: int | None = None,
        key: str | None = None,
    ) -> None:
        """`settle` with what the lifecycle may also know: the attempt's number in its call
        (1 = first; `simulate` groups retries into calls with it: the line gets a `call` number
        too) and the key of a keyed call. Sampled per call, as `settle`."""
        writer = self.recording.writer
        if writer is None:
            return
        call = None
        if attempt is not None and attempt > 1:
            _NEXT.set(1)
            call = _CALL.get()
            if call < 0:
                return
        elif writer.sample < 1.0 and self._random() >= writer.sample:
            if attempt is not None:
                _CALL.set(-1)
            return
        elif attempt == 1:
            call = next(_CALL_IDS)
            _CALL.set(call)
        if not written_outcome(outcome):
            return  # cancelled: nothing learned about the dependency
        writer.put((now, self, key, attempt, call, duration, outcome, error))

    def rejected(self, error: BaseException, now: float) -> None:
        """A call refused before any layer was asked (an open breaker at the door): `simulate`
        needs the demand, or a looser edit would be replayed against missing traffic."""
        self.record("rejected", error, 0.0, now, 1)
