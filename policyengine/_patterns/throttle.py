"""Client-side adaptive throttling (``[policies.X.throttle]``), as in Google's SRE book.

Each attempt is rejected locally, before it is sent, with probability

    p = max(0, (requests - k * accepts) / (requests + 1)), capped at `max_reject`

where `requests` and `accepts` are counted over the last `window` of the engine's clock. While
the dependency accepts at least one attempt in k, p is 0; as it refuses more, the client sheds
that excess itself instead of sending it (and the dependency's load falls with it). Probes keep
flowing (p < 1), so as soon as the dependency accepts again, p falls back to 0 within a window.

What counts (settled attempts; see `_runtime.layer.Outcome`):

- a request: every attempt that reached the dependency: ``success``, ``failure``, ``ignored``,
  ``timeout``. Not an attempt a later step refused (``rejected``: bulkhead, rate limit) or whose
  caller was cancelled before an answer, and not one this throttle rejected itself (its `admit`
  raised, so it is never settled): our own refusals say nothing about the dependency;
- an accept: the dependency did the work or answered on purpose: ``success``; a ``failure`` or
  ``ignored`` error carrying an HTTP status below 500 other than 429 (a 404 or 409 is an answer);
  an ``ignored`` error without a status (the policy says it tells nothing about health). Not: a
  timeout, a 429 or any 5xx, or a counted failure without a status (a refused connection).

The window is `BUCKETS` slots of ``window / BUCKETS`` each; the oldest slot leaves whole, so the
counts span between 19/20 of the window and all of it. Every operation is O(1) (amortised).
`rng` (a ``() -> float`` in [0, 1)) is injectable for tests.
"""

from __future__ import annotations

import os
import random
import threading
import weakref
from collections.abc import Callable

from .._config.admission_models import ThrottleOptions
from .._config.matchers import status_of
from .._runtime.layer import Outcome
from .._telemetry.events import Event
from ..exceptions import ThrottledError

__all__ = ["BUCKETS", "Throttle", "accepted"]

BUCKETS = 20
_COUNTED = frozenset({"success", "failure", "ignored", "timeout"})


def accepted(outcome: Outcome, error: BaseException | None) -> bool:
    """Did the dependency accept this attempt? (see the module docstring)"""
    if outcome == "success":
        return True
    if outcome == "timeout" or error is None:
        return False
    code = status_of(error)
    if code is None:
        return outcome == "ignored"
    return code < 500 and code != 429


class Throttle:
    """One guard's adaptive throttle: an `AttemptLayer` (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_acc",
        "_active",
        "_cur",
        "_cur_acc",
        "_cur_req",
        "_emit",
        "_k",
        "_lock",
        "_max",
        "_old_acc",
        "_old_req",
        "_req",
        "_rng",
        "_slot_end",
        "_width",
        "name",
        "options",
    )

    def __init__(
        self,
        name: str,
        options: ThrottleOptions,
        *,
        rng: Callable[[], float] | None = None,
        emit: Callable[[Event], None] | None = None,
    ) -> None:
        self.name = name
        self._rng = rng if rng is not None else random.random
        self._emit = emit
        self._lock = threading.Lock()
        # closed slots: a ring of counts and their sums; the current slot: two counters
        self._req = [0] * BUCKETS
        self._acc = [0] * BUCKETS
        self._old_req = self._old_acc = 0
        self._cur_req = self._cur_acc = 0
        self._cur = 0
        self._slot_end = float("-inf")  # engine time the current slot ends
        self._active = False
        self._configure(options)
        _live.add(self)

    def _configure(self, options: ThrottleOptions) -> None:
        self.options = options
        self._k = options.k
        self._max = options.max_reject
        self._width = options.window / BUCKETS

    def reconfigure(self, options: ThrottleOptions, now: float) -> None:
        """A reload: a new `k` or `max_reject` applies to the counts so far; a new `window`
        starts the counts afresh (their slots no longer mean the same span)."""
        with self._lock:
            if options.window != self.options.window:
                self._req = [0] * BUCKETS
                self._acc = [0] * BUCKETS
                self._old_req = self._old_acc = self._cur_req = self._cur_acc = 0
                self._cur = int(now // (options.window / BUCKETS))
            self._configure(options)
            self._slot_end = (self._cur + 1) * self._width

    def admit(self, now: float, limit: float | None = None, key: str | None = None) -> float:
        """0.0, or raise `ThrottledError` with probability `p` (`limit`, `key`: unused).

        The two totals are read without the lock: a settle racing with this read can only
        shift p by one attempt's worth, and the hot path stays a few float operations."""
        if now >= self._slot_end:
            with self._lock:
                self._advance(now)
        requests = self._old_req + self._cur_req
        excess = requests - self._k * (self._old_acc + self._cur_acc)
        if excess <= 0.0:
            if self._active:
                self._flip(0.0)
            return 0.0
        p = excess / (requests + 1)
        if p > self._max:
            p = self._max
        if not self._active:
            self._flip(p)
        if self._rng() < p:
            raise ThrottledError(self.name, p)
        return 0.0

    def settle(
        self,
        outcome: Outcome,
        error: BaseException | None,
        duration: float,
        now: float,
        key: str | None = None,
    ) -> None:
        if outcome == "success":
            ok = True
        elif outcome in _COUNTED:
            ok = accepted(outcome, error)
        else:
            return
        with self._lock:
            if now >= self._slot_end:
                self._advance(now)
            self._cur_req += 1
            if ok:
                self._cur_acc += 1

    def probability(self, now: float) -> float:
        """The rejection probability an attempt would meet now."""
        with self._lock:
            self._advance(now)
            requests, accepts = self._old_req + self._cur_req, self._old_acc + self._cur_acc
        excess = requests - self._k * accepts
        if excess <= 0.0:
            return 0.0
        return min(self._max, excess / (requests + 1))

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, accepts) in the window now."""
        with self._lock:
            self._advance(now)
            return self._old_req + self._cur_req, self._old_acc + self._cur_acc

    def _advance(self, now: float) -> None:
        """(Lock held.) Empty the slots that left the window since the last call."""
        index = int(now // self._width)
        steps = index - self._cur
        if steps <= 0:
            return  # the same slot (or a clock read from before the last one)
        self._slot_end = (index + 1) * self._width
        if steps >= BUCKETS:
            for i in range(BUCKETS):
                self._req[i] = self._acc[i] = 0
            self._old_req = self._old_acc = 0
        else:
            closing = self._cur % BUCKETS  # the current slot joins the closed ones
            self._req[closing] = self._cur_req
            self._acc[closing] = self._cur_acc
            self._old_req += self._cur_req
            self._old_acc += self._cur_acc
            for i in range(self._cur + 1, index + 1):
                slot = i % BUCKETS  # holds slot i - BUCKETS, which leaves the window now
                self._old_req -= self._req[slot]
                self._old_acc -= self._acc[slot]
                self._req[slot] = self._acc[slot] = 0
        self._cur_req = self._cur_acc = 0
        self._cur = index

    def _flip(self, p: float) -> None:
        """Throttling started (p > 0) or stopped: an event, if anybody listens (once per
        change, whichever thread saw it first)."""
        with self._lock:
            active = p > 0.0
            if self._active == active:
                return
            self._active = active
            counts = (self._old_req + self._cur_req, self._old_acc + self._cur_acc)
        if self._emit is not None:
            name = "throttling" if active else "throttling_stopped"
            data = {"requests": counts[0], "accepts": counts[1], "probability": round(p, 4)}
            self._emit(Event(name, self.name, data))

    def __repr__(self) -> str:
        o = self.options
        return f"Throttle({self.name!r}, k={o.k}, window={o.window}s, max_reject={o.max_reject})"


_live: weakref.WeakSet[Throttle] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child: a lock another thread of the parent held would stay locked forever."""
    for throttle in list(_live):
        throttle._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
