"""`policyengine simulate`: replay recorded traffic through policies, on virtual time.

Each recorded call starts at its recorded time and goes through the REAL guard compiled from the
policies (`Engine` on a `VirtualLoop`, see `_rollout.vloop`), calling a stand-in for the dependency
that takes each attempt's recorded duration and then answers with its recorded outcome: returns,
raises an exception of the recorded type (with the recorded HTTP status), or hangs (a recorded
timeout). Breakers, retries with their backoff, budgets, bulkheads, timeouts and fallbacks all
act as they would live, and what they did is counted per guard.

What a replay cannot reproduce (its tolerance, said in every report):

- An attempt the trace does not have. A retry beyond the recorded ones meets what the call's
  last recorded attempt met; an attempt the recording guard refused (an open breaker) but the
  replayed one admits meets what the same guard last saw before it (else the first it saw).
- A recorded timeout is a dependency that did not answer within the recorded duration: in the
  replay it hangs until the new policy's timeout cuts it, or (no timeout) fails with
  TimeoutError after the recorded duration. A looser timeout is judged pessimistically.
- Load feedback: a dependency that would have recovered sooner with less traffic, or answered
  faster, is replayed as recorded. Calls start when they started live, whatever the edit.
- Jitter draws random numbers, so retry timing differs from run to run by the jitter's spread.
- Times are recorded to the microsecond, and events of one instant (a call arriving as the
  breaker trips) may be replayed in another order than they happened.
- A sampled trace (`sample < 1`) holds whole calls, but fewer: counts scale down, and streaks
  across calls (consecutive failures) and windows fill more slowly than live.
- State is in memory (no `[state]` backend) and a threads bulkhead runs as an async one with the
  same limits; `[record]`, chaos drills and enforcement ramps are left out of a replay.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .._config.imports import import_object
from .._config.loader import PolicySet
from .._config.models import Policy
from .._registry.engine import Engine
from .._telemetry.events import Event, log_listener
from ..exceptions import RejectedError
from .trace import Attempt, Call
from .vloop import LoopClock, VirtualLoop, run_virtual

__all__ = ["TOLERANCE", "GuardReport", "recorded_report", "replay"]

TOLERANCE = (
    "calls start as recorded; attempts the trace lacks meet what the guard last saw; recorded "
    "timeouts hang until the policy's timeout; no load feedback; jitter varies run to run"
)
_HANG = 365 * 86400.0
_REASONS = {"CircuitOpenError": "circuit_open", "BulkheadFullError": "bulkhead_full"}


@dataclasses.dataclass(slots=True)
class GuardReport:
    """What one guard did with the replayed calls (or what the trace recorded)."""

    calls: int = 0
    successes: int = 0
    failures: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    trips: int = 0
    time_open: float = 0.0
    retries: int = 0
    retries_added: int = 0
    timeouts: int = 0
    fallbacks: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list, repr=False)

    def quantile(self, q: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return 0.0
        return data[min(len(data) - 1, max(0, int(q * len(data) + 0.999999) - 1))]

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("calls", "successes", "failures")}
        out["rejected"] = dict(self.rejected)
        out["rejected_total"] = sum(self.rejected.values())
        for k in ("trips", "time_open", "retries", "retries_added", "timeouts", "fallbacks"):
            out[k] = getattr(self, k)
        out["time_open"] = round(self.time_open, 6)
        out["p50"] = round(self.quantile(0.5), 6)
        out["p99"] = round(self.quantile(0.99), 6)
        return out


# -- the dependency, as recorded ----------------------------------------------------------------

_TYPES: dict[str, type[Exception]] = {}


class ReplayedError(Exception):
    """Stands in for a recorded exception whose type cannot be imported here."""


class _Response:
    __slots__ = ("headers", "status_code")

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}


def _error_type(name: str | None) -> type[Exception]:
    if name is None:
        return ReplayedError
    found = _TYPES.get(name)
    if found is None:
        try:
            obj = import_object(name)
        except ValueError:
            obj = None
        if isinstance(obj, type) and issubclass(obj, Exception):
            found = obj
        else:  # a type of the recording process only: a look-alike keeps its name
            found = type(name.rpartition(".")[2] or "ReplayedError", (ReplayedError,), {})
        _TYPES[name] = found
    return found


def make_error(attempt: Attempt) -> Exception:
    """An exception as the recorded attempt's, without running its constructor."""
    kind = _error_type(attempt.error)
    try:
        error = kind.__new__(kind)
        Exception.__init__(error, f"replayed {attempt.error or 'failure'}")
    except Exception:
        error = ReplayedError(f"replayed {attempt.error}")
    if attempt.status is not None:
        try:
            error.response = _Response(attempt.status)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
    return error


class _Dependency:
    """One call's stand-in dependency: attempt i answers as the call's i-th recorded attempt."""

    __slots__ = ("call", "n", "timed")

    def __init__(self, call: Call, timed: bool) -> None:
        self.call = call
        self.n = 0
        self.timed = timed  # the policy has a timeout that will cut a hang

    async def __call__(self) -> None:
        attempts = self.call.attempts
        a = attempts[min(self.n, len(attempts) - 1)]
        self.n += 1
        if a.outcome == "rejected":
            a = self.call.stand_in or Attempt(a.time, a.guard, 0.0, "success")
        if a.outcome == "timeout":
            await asyncio.sleep(_HANG if self.timed else a.duration)
            raise TimeoutError("replayed timeout: no answer within the recorded duration")
        await asyncio.sleep(a.duration)
        if a.outcome == "failure":
            raise make_error(a)


# -- the replay ---------------------------------------------------------------------------------


def _for_replay(policy_set: PolicySet) -> PolicySet:
    def plain(policy: Policy) -> Policy:
        update: dict[str, Any] = {"chaos": None, "enforce": None, "ramp": None}
        if policy.bulkhead is not None and policy.bulkhead.kind == "threads":
            update["bulkhead"] = policy.bulkhead.model_copy(update={"kind": "async"})
        return policy.model_copy(update=update)

    policies = {name: plain(p) for name, p in policy_set.policies.items()}
    from .._config.models import StateOptions

    return dataclasses.replace(policy_set, policies=policies, state=StateOptions(), record=None)


class _Trips:
    """State changes of every guard, into trips and time open."""

    def __init__(self, loop: VirtualLoop) -> None:
        self.loop = loop
        self.trips: dict[str, int] = defaultdict(int)
        self.open: dict[str, float] = defaultdict(float)
        self._since: dict[str, tuple[float, float]] = {}

    def __call__(self, event: Event) -> None:
        if event.name != "state_change":
            return
        now, name = self.loop.time(), event.guard
        opened = self._since.pop(name, None)
        if opened is not None:
            self.open[name] += min(now - opened[0], opened[1])
        if event.data.get("to") == "open":
            self.trips[name] += 1
            self._since[name] = (now, float(event.data.get("open_for") or _HANG))

    def finish(self) -> None:
        now = self.loop.time()
        for name, (since, limit) in self._since.items():
            self.open[name] += min(now - since, limit)
        self._since.clear()


def replay(policy_set: PolicySet, calls: Iterable[Call]) -> dict[str, GuardReport]:
    """Replay `calls` through `policy_set` on virtual time; a report per guard of the trace (a
    guard the policies do not name is replayed unguarded and reported as such: no policy)."""
    calls = sorted(calls, key=lambda c: c.start)
    origin = calls[0].start - 1.0 if calls else 0.0  # virtual time is trace time - origin
    loop = VirtualLoop(1.0)
    engine = Engine(_for_replay(policy_set), clock=LoopClock(loop))
    trips = _Trips(loop)
    engine.remove_listener(log_listener)  # a replay's breakers are not the service's: no log
    engine.add_listener(trips)
    reports: dict[str, GuardReport] = defaultdict(GuardReport)
    try:
        run_virtual(loop, _drive(engine, calls, reports, origin))
    finally:
        engine.close()
    trips.finish()
    for name, report in reports.items():
        guard = engine.guards.get(name)
        report.trips, report.time_open = trips.trips[name], trips.open[name]
        if guard is not None:
            snap = guard.metrics.snapshot()
            rejections: dict[str, int] = dict(snap["rejections"])  # type: ignore[arg-type]
            report.rejected = {k: v for k, v in rejections.items() if v}
            report.retries, report.timeouts = snap["retries"], snap["timeouts"]
            report.fallbacks = snap["fallbacks"]
    for call in calls:
        reports[call.guard].retries_added -= call.retries
    for report in reports.values():
        report.retries_added += report.retries
    return dict(reports)


async def _drive(
    engine: Engine, calls: list[Call], reports: dict[str, GuardReport], origin: float
) -> None:
    loop = asyncio.get_running_loop()
    tasks = []
    for call in calls:
        wait = call.start - origin - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(loop.create_task(_one(engine, call, reports[call.guard])))
    await asyncio.gather(*tasks)


async def _one(engine: Engine, call: Call, report: GuardReport) -> None:
    loop = asyncio.get_running_loop()
    guard = engine.guards.get(call.guard)
    timed = guard is not None and guard.policy.timeout is not None
    dependency = _Dependency(call, timed)
    t0 = loop.time()
    report.calls += 1
    try:
        if guard is None:
            await dependency()
        else:
            await guard.call(dependency)
    except RejectedError:
        pass  # counted by reason from the guard's metrics
    except Exception:
        report.failures += 1
    else:
        report.successes += 1
    report.latencies.append(loop.time() - t0)


def recorded_report(calls: Iterable[Call]) -> dict[str, GuardReport]:
    """The trace's own figures, in the same shape (trips are not in a trace: left at 0)."""
    reports: dict[str, GuardReport] = defaultdict(GuardReport)
    for call in calls:
        r = reports[call.guard]
        r.calls += 1
        last = call.attempts[-1]
        if last.outcome == "success":
            r.successes += 1
        elif last.outcome == "rejected":
            reason = _REASONS.get((last.error or "").rpartition(".")[2], "rejected")
            r.rejected[reason] = r.rejected.get(reason, 0) + 1
        else:
            r.failures += 1
        r.retries += call.retries
        r.timeouts += sum(1 for a in call.attempts if a.outcome == "timeout")
        r.latencies.append(call.attempts[-1].time - call.start)
    return dict(reports)
