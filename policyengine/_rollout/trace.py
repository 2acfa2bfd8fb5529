"""Reading attempt traces (JSON lines written by `_rollout.record`) into calls, for `simulate` and
`suggest`.

A trace has one line per attempt. A call is its first attempt plus the retries that followed it:
lines with the same `call` number (and guard) are one call. Without `call` (a trace written by
something else), a line with ``"attempt": n`` (n > 1) joins the earliest call of the same guard
and key whose last attempt was n - 1 and ended before this one started (a guess: a call that
stopped retrying can take a later call's retry). Lines without `attempt` each start a call.

A bad line is an error naming the file and line, not a silent skip: a replay of a partly read
trace would look like a quieter service.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Attempt", "Call", "TraceError", "group_calls", "read_trace"]

OUTCOMES = ("success", "failure", "timeout", "rejected")


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded attempt. `time` is when it ended (Unix seconds)."""

    time: float
    guard: str
    duration: float
    outcome: str
    error: str | None = None
    status: int | None = None
    key: str | None = None
    attempt: int | None = None
    call: int | None = None

    @property
    def start(self) -> float:
        return self.time - self.duration


@dataclass(slots=True)
class Call:
    """One caller's call: its attempts in order, and what stands in for a refused attempt (the
    dependency as last seen before it by the same guard: the trace cannot say what a call that
    was never made would have met)."""

    guard: str
    key: str | None
    start: float
    attempts: list[Attempt] = field(default_factory=list)
    stand_in: Attempt | None = None

    @property
    def retries(self) -> int:
        """Attempts after the first, a refused one included (as the guard's metrics count)."""
        return len(self.attempts) - 1


def _number(value: object, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TraceError(f"{where}: {name!r} must be a number, not {value!r}")
    return float(value)


def _parse(line: str, where: str) -> Attempt:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: not a JSON line ({exc.msg}); is this a trace file?") from None
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a JSON object, one attempt per line")
    missing = [k for k in ("time", "guard", "duration", "outcome") if k not in data]
    if missing:
        raise TraceError(f"{where}: missing {', '.join(missing)}")
    outcome = data["outcome"]
    if outcome not in OUTCOMES:
        raise TraceError(f"{where}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    duration = _number(data["duration"], "duration", where)
    if duration < 0:
        raise TraceError(f"{where}: duration must not be negative")
    attempt = data.get("attempt")
    if attempt is not None and (not isinstance(attempt, int) or attempt < 1):
        raise TraceError(f"{where}: attempt must be a whole number from 1")
    status = data.get("status")
    call = data.get("call")
    return Attempt(
        time=_number(data["time"], "time", where),
        guard=str(data["guard"]),
        duration=duration,
        outcome=outcome,
        error=None if data.get("error") is None else str(data["error"]),
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        key=None if data.get("key") is None else str(data["key"]),
        attempt=attempt,
        call=call if isinstance(call, int) and not isinstance(call, bool) else None,
    )


def read_trace(path: str | Path) -> list[Attempt]:
    """Every attempt of a trace file, in the order written; TraceError on a bad line."""
    p = Path(path)
    out = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                out.append(_parse(line, f"{p}:{n}"))
    if not out:
        raise TraceError(f"{p}: the trace is empty (was recording on? see [record])")
    return out


def group_calls(attempts: Iterable[Attempt]) -> list[Call]:
    """Attempts grouped into calls (see the module docstring), in the order calls started."""
    ordered = sorted(attempts, key=lambda a: (a.start, a.time))
    calls: list[Call] = []
    waiting: dict[tuple[str, str | None, int], deque[Call]] = defaultdict(deque)
    numbered: dict[tuple[str, int], Call] = {}
    for a in ordered:
        n = a.attempt or 1
        call = None
        if a.call is not None:
            call = numbered.get((a.guard, a.call))
            if call is None:
                call = numbered[(a.guard, a.call)] = Call(a.guard, a.key, a.start)
                calls.append(call)
            call.attempts.append(a)
            continue
        if n > 1:
            queue = waiting.get((a.guard, a.key, n))
            while queue and call is None:
                candidate = queue.popleft()
                if candidate.attempts[-1].time <= a.start + 1e-6:
                    call = candidate
        if call is None:
            call = Call(a.guard, a.key, a.start)
            calls.append(call)
        call.attempts.append(a)
        if a.outcome in ("failure", "timeout"):
            waiting[(a.guard, a.key, n + 1)].append(call)
    _stand_ins(ordered, calls)
    return calls


def _stand_ins(ordered: list[Attempt], calls: list[Call]) -> None:
    last: dict[str, Attempt] = {}
    first: dict[str, Attempt] = {}
    seen_before: dict[int, Attempt] = {}
    for a in sorted(ordered, key=lambda a: a.time):
        if a.outcome == "rejected":
            if a.guard in last:
                seen_before[id(a)] = last[a.guard]
        else:
            last[a.guard] = a
            first.setdefault(a.guard, a)
    for call in calls:
        for a in call.attempts:
            if a.outcome == "rejected":
                call.stand_in = seen_before.get(id(a)) or first.get(call.guard)
                break
