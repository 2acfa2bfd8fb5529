"""OpenTelemetry metrics for every guard of an engine (extra ``resilience-policyengine[otel]``)::

    from policyengine.otel import instrument

    instrument(engine)                       # the global MeterProvider
    instrument(engine, meter_provider=mp)    # or a given one

The content is that of `policyengine.prometheus`, in the shape Polly (.NET) gives its telemetry:
``resilience.*`` instruments, the policy in ``guard.name`` and what happened in ``event.name``
(with Polly's ``event.severity``). Every instrument is *observable*: its callback reads the
guards' own counters when the SDK collects, so the guarded call pays nothing for it.

========================================  ====================  ================================
``resilience.policyengine.calls.started`` counter               ``guard.name``
``resilience.policyengine.calls``         counter               ``guard.name``, ``call.outcome``
                                                                (success, failure, ignored)
``resilience.policyengine.events``        counter               ``guard.name``, ``event.name``,
                                                                ``event.severity``
``resilience.policyengine.in_flight``     up-down counter       ``guard.name``
``resilience.policyengine.queued``        up-down counter       ``guard.name``
``resilience.policyengine.breaker.state`` gauge                 ``guard.name`` (0 closed, 1 open,
                                                                2 half-open, 3 forced open,
                                                                4 disabled)
``resilience.policyengine.call.duration`` counters ``.sum`` (s), ``.count`` and ``.bucket``
                                          (cumulative, attribute ``le``, last ``"+Inf"``)
``resilience.policyengine.key.state``     gauge                 ``guard.name``, ``key``: keyed
                                                                guards, ``keys_per_guard`` keys
                                                                (open first), the rest folded
                                                                into ``key="other"``
``resilience.policyengine.keys``          gauge                 ``guard.name``, ``key.state``: keys
                                                                kept, by state
``resilience.policyengine.keys.would_trip`` counter             ``guard.name``: trips past
                                                                ``max_open_ratio``, observed
``resilience.policyengine.reloads``       counter               ``reload.result``
``resilience.policyengine.policy.version`` gauge (always 1)     ``policy.version``
========================================  ====================  ================================

``event.name`` values: ``OnRetry``, ``OnTimeout``, ``OnFallback`` (as in Polly),
``OnCircuitRejected``, ``OnBulkheadRejected``, ``OnRetryBudgetExhausted``, and in observe mode
``OnWouldReject``, ``OnWouldRetry``, ``OnWouldTimeout``.

The call duration is exported as its buckets because OpenTelemetry has no observable histogram;
recording each call into a synchronous one would put a cost on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider

from ._keys.keyed_export import KEYS_SHOWN, key_counts, key_states, would_trips
from ._telemetry.metrics import STATE_VALUES

if TYPE_CHECKING:
    from ._registry.engine import Engine
    from ._runtime.guard import Guard
    from ._telemetry.snapshot import GuardSnapshot

__all__ = ["EVENTS", "STATE_VALUES", "Instrumentation", "instrument"]


# event.name -> (severity, how to read it from a metrics snapshot)
EVENTS: dict[str, tuple[str, Callable[[GuardSnapshot], int]]] = {
    "OnRetry": ("Warning", lambda m: m["retries"]),
    "OnTimeout": ("Error", lambda m: m["timeouts"]),
    "OnFallback": ("Warning", lambda m: m["fallbacks"]),
    "OnCircuitRejected": ("Error", lambda m: m["rejections"]["circuit_open"]),
    "OnBulkheadRejected": ("Error", lambda m: m["rejections"]["bulkhead_full"]),
    "OnRetryBudgetExhausted": ("Warning", lambda m: m["rejections"]["budget_exhausted"]),
    "OnWouldReject": ("Information", lambda m: m["observed"]["would_reject"]),
    "OnWouldRetry": ("Information", lambda m: m["observed"]["would_retry"]),
    "OnWouldTimeout": ("Information", lambda m: m["observed"]["would_timeout"]),
}

_INF = float("inf")
_Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Instrumentation:
    """The instruments `instrument()` created. `close()` makes them report nothing more
    (OpenTelemetry cannot unregister an instrument)."""

    def __init__(
        self,
        engine: Engine | None,
        meter_provider: MeterProvider | None,
        keys_per_guard: int = KEYS_SHOWN,
    ) -> None:
        from . import __version__

        self._engine = engine
        self._keys_shown = keys_per_guard
        self.closed = False
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        meter = provider.get_meter("policyengine", __version__)
        p = "resilience.policyengine"
        counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
        updown = meter.create_observable_up_down_counter
        self.instruments = [
            counter(f"{p}.calls.started", [self._started], "{call}", "Guarded calls begun."),
            counter(f"{p}.calls", [self._calls], "{call}", "Guarded calls ended, by call.outcome."),
            counter(f"{p}.events", [self._events], "{event}", "Resilience events, by event.name."),
            updown(f"{p}.in_flight", [self._in_flight], "{call}", "Guarded calls running now."),
            updown(f"{p}.queued", [self._queued], "{call}", "Callers waiting for a bulkhead slot."),
            gauge(
                f"{p}.breaker.state",
                [self._state],
                "1",
                "0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled.",
            ),
            counter(
                f"{p}.call.duration.sum", [self._duration_sum], "s", "Total guarded call time."
            ),
            counter(f"{p}.call.duration.count", [self._duration_count], "{call}", "Calls timed."),
            counter(
                f"{p}.call.duration.bucket",
                [self._duration_buckets],
                "{call}",
                "Calls that took at most `le` seconds (cumulative).",
            ),
            gauge(f"{p}.key.state", [self._key_state], "1", "Keyed guards: a key's state."),
            gauge(f"{p}.keys", [self._keys], "{key}", "Keyed guards: keys kept, by key.state."),
            counter(f"{p}.keys.would_trip", [self._would_trip], "{trip}", "Trips only observed."),
            counter(f"{p}.reloads", [self._reloads], "{reload}", "Reloads, by reload.result."),
            gauge(f"{p}.policy.version", [self._version], "1", "The policies in force (1)."),
        ]

    @property
    def engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        from ._registry.default import default_engine

        return default_engine()

    def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------ callbacks
    def _guards(self) -> Iterator[tuple[dict[str, str], GuardSnapshot]]:
        if self.closed:
            return
        for name, guard in sorted(self.engine.guards.items()):
            yield {"guard.name": name}, guard.snapshot()

    def _started(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            yield Observation(m["calls"], attrs)

    def _calls(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            yield Observation(m["successes"], {**attrs, "call.outcome": "success"})
            yield Observation(m["failures"], {**attrs, "call.outcome": "failure"})
            yield Observation(m["ignored"], {**attrs, "call.outcome": "ignored"})

    def _events(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            for event, (severity, read) in EVENTS.items():
                yield Observation(
                    read(m), {**attrs, "event.name": event, "event.severity": severity}
                )

    def _in_flight(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            yield Observation(m["in_flight"], attrs)

    def _queued(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            yield Observation(m["queued"], attrs)

    def _state(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            yield Observation(STATE_VALUES.get(m["state"], 0), attrs)

    def _duration_sum(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            yield Observation(m["duration"]["sum"], attrs)

    def _duration_count(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            yield Observation(m["duration"]["count"], attrs)

    def _duration_buckets(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, m in self._guards():
            seen = 0
            for bound, count in m["duration"]["buckets"]:
                seen += count
                if bound != _INF:  # the snapshot's last bucket is +Inf: one "+Inf", below
                    yield Observation(seen, {**attrs, "le": repr(float(bound))})
            yield Observation(m["duration"]["count"], {**attrs, "le": "+Inf"})

    def _partitioned(self) -> Iterator[tuple[dict[str, str], Guard, int]]:
        if self.closed:
            return
        for name, guard in sorted(self.engine.guards.items()):
            trips = would_trips(guard)
            if trips is not None:
                yield {"guard.name": name}, guard, trips

    def _key_state(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, guard, _trips in self._partitioned():
            for key, value in key_states(guard, self._keys_shown):
                yield Observation(value, {**attrs, "key": key})

    def _keys(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, guard, _trips in self._partitioned():
            for state, count in key_counts(guard).items():
                yield Observation(count, {**attrs, "key.state": state})

    def _would_trip(self, _: CallbackOptions) -> Iterator[Observation]:
        for attrs, _guard, trips in self._partitioned():
            yield Observation(trips, attrs)

    def _reloads(self, _: CallbackOptions) -> Iterator[Observation]:
        if self.closed:
            return
        engine = self.engine
        yield Observation(engine.reloads, {"reload.result": "success"})
        yield Observation(engine.failed_reloads, {"reload.result": "failure"})

    def _version(self, _: CallbackOptions) -> Iterator[Observation]:
        if self.closed:
            return
        yield Observation(1, {"policy.version": str(self.engine.policy_set.version)})


def instrument(
    engine: Engine | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    keys_per_guard: int = KEYS_SHOWN,
) -> Instrumentation:
    """Create the observable instruments for `engine` (None: the default engine, read at each
    collection) on `meter_provider` (None: the global one). Call once per engine and provider.
    `keys_per_guard`: keys of a partitioned policy shown one by one (the rest as "other")."""
    return Instrumentation(engine, meter_provider, keys_per_guard)
