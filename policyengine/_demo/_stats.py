"""What the view shows: per-guard rates over the last second, from the guards' own metrics,
and notices (state changes, reloads, phases) from the engine's events.

Events may come from any thread (the file watcher reloads in its own); the listener only appends
to a deque, and the view's task drains it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._registry.engine import Engine
from .._telemetry.events import Event

__all__ = ["Notice", "Row", "RowBuilder", "Sampler"]

REASONS = ("circuit_open", "bulkhead_full", "budget_exhausted")
_RATE_WINDOW = 1.0  # seconds of samples behind calls/s, ok %, and the per-second counts
_LATENCY_WINDOW = 3.0  # seconds of samples behind p50 / p99 (more calls, steadier bounds)
HISTORY_STEP = 0.5  # seconds between two points of the failure history (the sparkline)

Snapshot = Mapping[str, Any]
"""A guard's metrics: a `GuardSnapshot` (the demo), or its JSON from ``/status`` (`top`)."""


@dataclass(slots=True)
class Row:
    """One guard, now."""

    name: str
    mode: str
    state: str
    calls_per_s: float = 0.0
    ok_rate: float | None = None
    rejected_per_s: dict[str, float] = field(default_factory=dict)
    retries_per_s: float = 0.0
    fallbacks_per_s: float = 0.0
    timeouts_per_s: float = 0.0
    p50: float | None = None
    p99: float | None = None
    bulkhead: tuple[int, int, int] | None = None  # (in use, max_concurrent, queued)
    history: list[float] = field(default_factory=list)  # failure share, every HISTORY_STEP s
    totals: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    """A line for the log: `kind` is "state", "reload", "rejected" or "phase"."""

    at: float
    kind: str
    subject: str
    text: str


def _quantile(buckets: Sequence[tuple[float, int]], q: float) -> float | None:
    total = sum(n for _, n in buckets)
    if not total:
        return None
    seen = 0
    for bound, n in buckets:
        seen += n
        if seen >= q * total:
            return bound
    return float("inf")


def _buckets(snapshot: Mapping[str, Any]) -> list[tuple[float, int]]:
    """Every bucket, the +Inf one included (the snapshot's list stops at the last bound)."""
    duration = snapshot["duration"]
    pairs: list[tuple[float, int]] = list(duration["buckets"])
    overflow = duration["count"] - sum(n for _, n in pairs)
    return [*pairs, (float("inf"), overflow)]


class RowBuilder:
    """Turns successive metrics snapshots of named guards into rows: rates over the last
    second, latency bounds over the last few, a failure history. The demo feeds it from its
    engine (`Sampler`), ``policyengine top`` from a service's ``/status``
    (`policyengine._commands.top`).

    A snapshot is what ``Guard.snapshot()`` gives (``/status`` lists the same per guard).
    """

    def __init__(self, names: Sequence[str], *, history: int = 24) -> None:
        self.names = list(names)
        self._samples: dict[str, collections.deque[tuple[float, Snapshot]]] = {}
        self._history: dict[str, collections.deque[float]] = {}
        self._history_at: dict[str, float] = {}
        self._history_len = history
        for name in self.names:
            self._track(name)

    def _track(self, name: str) -> None:
        self._samples[name] = collections.deque()
        self._history[name] = collections.deque(maxlen=self._history_len)
        self._history_at[name] = 0.0

    def row(self, name: str, mode: str, now: float, snap: Snapshot) -> Row:
        """The row of guard `name` from its snapshot taken at `now` (monotonic seconds)."""
        if name not in self._samples:
            self._track(name)
        samples = self._samples[name]
        samples.append((now, snap))
        while len(samples) > 2 and now - samples[1][0] >= _LATENCY_WINDOW:
            samples.popleft()
        return self._row(name, mode, now, snap, samples)

    def _row(
        self,
        name: str,
        mode: str,
        now: float,
        snap: Snapshot,
        samples: collections.deque[tuple[float, Snapshot]],
    ) -> Row:
        row = Row(name, mode, snap["state"], totals=snap)
        bulkhead = snap.get("bulkhead")
        if bulkhead is not None:
            used = bulkhead["active"] if mode == "enforce" else snap["in_flight"]
            row.bulkhead = (used, bulkhead["max_concurrent"], snap["queued"])
        history = self._history[name]
        base_t, base = next(((t, s) for t, s in samples if now - t <= _RATE_WINDOW), samples[-1])
        span = now - base_t
        if span <= 0:
            row.history = list(history)
            return row

        def rate(key: str) -> float:
            return float(snap[key] - base[key]) / span

        calls = snap["calls"] - base["calls"]
        row.calls_per_s = calls / span
        row.retries_per_s = rate("retries")
        row.fallbacks_per_s = rate("fallbacks")
        row.timeouts_per_s = rate("timeouts")
        row.rejected_per_s = {
            r: (snap["rejections"][r] - base["rejections"][r]) / span for r in REASONS
        }
        if mode == "observe":
            row.rejected_per_s["would_reject"] = (
                snap["observed"]["would_reject"] - base["observed"]["would_reject"]
            ) / span
        if calls > 0:
            row.ok_rate = min(1.0, (snap["successes"] - base["successes"]) / calls)
            if now - self._history_at[name] >= HISTORY_STEP:
                self._history_at[name] = now
                history.append(1.0 - row.ok_rate)
        row.history = list(history)
        oldest = samples[0][1]
        delta = [
            (bound, n - m)
            for (bound, n), (_, m) in zip(_buckets(snap), _buckets(oldest), strict=True)
        ]
        row.p50, row.p99 = _quantile(delta, 0.5), _quantile(delta, 0.99)
        return row


def state_notice(at: float, guard: str, data: dict[str, Any]) -> Notice:
    """The notice of a ``state_change`` event's data."""
    text = f"{data.get('from')} -> {data.get('to')} ({data.get('reason', '')})"
    return Notice(at, "state", guard, text)


def rejected_notice(at: float, error: object, version: str) -> Notice:
    """The notice of a ``reload_failed`` event: the first problems of the error."""
    lines = str(error or "").strip().splitlines()
    detail = "; ".join(line.strip() for line in lines[1:4]) or (lines[0] if lines else "")
    return Notice(at, "rejected", "*", f"edit rejected, version {version} keeps serving: {detail}")


def applied_notice(at: float, version: str, policies: dict[str, str]) -> Notice:
    """The notice of a ``reload`` event, with the policies it changed."""
    changed = [n for n, c in policies.items() if c != "unchanged"]
    what = ", ".join(changed) if changed else "no policy changed"
    return Notice(at, "reload", "*", f"applied version {version} ({what})")


class Sampler(RowBuilder):
    """Samples the engine's guards each tick and turns engine events into notices."""

    def __init__(self, engine: Engine, names: Sequence[str], *, history: int = 24) -> None:
        super().__init__(names, history=history)
        self.engine = engine
        self._events: collections.deque[Event] = collections.deque()
        self.t0 = time.monotonic()
        self.trips: dict[str, int] = dict.fromkeys(self.names, 0)
        self.recoveries: dict[str, int] = dict.fromkeys(self.names, 0)
        status = engine.status()
        self.version: str = status["version"]
        self.last_reload: Notice | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def listener(self, event: Event) -> None:
        """Engine listener: keep the events the view reports (called from any thread)."""
        if event.name in ("state_change", "reload", "reload_failed"):
            self._events.append(event)

    # ------------------------------------------------------------ notices
    def notices(self) -> list[Notice]:
        """State changes and reloads since the last call, in order."""
        out: list[Notice] = []
        while self._events:
            out.append(self._notice(self._events.popleft()))
        return out

    def _notice(self, event: Event) -> Notice:
        at, data = self.elapsed(), event.data
        if event.name == "state_change":
            before, after = data.get("from"), data.get("to")
            if after in ("open", "forced_open") and before == "closed":
                self.trips[event.guard] = self.trips.get(event.guard, 0) + 1
            if after == "closed" and before != "closed":
                self.recoveries[event.guard] = self.recoveries.get(event.guard, 0) + 1
            return state_notice(at, event.guard, data)
        if event.name == "reload":
            self.version = str(data.get("version", "?"))
            notice = applied_notice(at, self.version, self.engine.status()["policies"])
        else:
            notice = rejected_notice(at, data.get("error"), self.version)
        self.last_reload = notice
        return notice

    # ------------------------------------------------------------- rows
    def sample(self) -> list[Row]:
        """One row per guard, from the metrics now and those of about a second ago."""
        now = time.monotonic()
        rows = []
        for name in self.names:
            handle = self.engine.guard(name)
            rows.append(self.row(name, handle.current().mode, now, handle.metrics()))
        return rows
