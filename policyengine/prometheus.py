"""Prometheus metrics for every guard of an engine, read from the guards' own counters at scrape
time (extra ``resilience-policyengine[prometheus]``)::

    from prometheus_client import REGISTRY
    from policyengine.prometheus import PolicyEngineCollector

    REGISTRY.register(PolicyEngineCollector(engine))   # engine=None: the default engine

Nothing is added to the guarded call: the collector walks the guards in force when Prometheus
scrapes, so the hot path pays nothing for exporting. Counters keep counting across reloads that
keep a policy; a policy removed by a reload leaves the scrape.

Metrics (every guard metric carries a ``guard`` label):

==============================================  ==========  ===================================
``policyengine_calls_started_total``            counter     guarded calls begun
``policyengine_calls_total{outcome}``           counter     calls ended: ``success``, ``failure``,
                                                            ``ignored`` (neither: cancelled, or
                                                            rejected before any attempt ran)
``policyengine_rejections_total{reason}``       counter     ``circuit_open``, ``bulkhead_full``,
                                                            ``budget_exhausted``
``policyengine_retries_total``                  counter     retries (attempts after the first)
``policyengine_timeouts_total``                 counter     timed-out attempts
``policyengine_fallbacks_total``                counter     fallback values or handlers used
``policyengine_observed_total{event}``          counter     observe mode: ``would_reject``,
                                                            ``would_retry``, ``would_timeout``
``policyengine_in_flight``                      gauge       calls running now
``policyengine_queued``                         gauge       callers waiting for a bulkhead slot
``policyengine_breaker_state``                  gauge       0 closed, 1 open, 2 half-open,
                                                            3 forced open, 4 disabled
``policyengine_call_duration_seconds``          histogram   whole guarded calls (retries, sleeps
                                                            and queueing included; a call an
                                                            open circuit turns away at once is
                                                            not timed)
``policyengine_key_state{key}``                 gauge       partitioned policies: the state of at
                                                            most ``keys_per_guard`` keys (open
                                                            ones first), the rest folded into
                                                            ``key="other"`` (their highest state)
``policyengine_keys{state}``                    gauge       partitioned policies: keys kept, by
                                                            state
``policyengine_keys_would_trip_total``          counter     trips past ``max_open_ratio``, only
                                                            observed
``policyengine_reloads_total{result}``          counter     ``success`` / ``failure`` (no guard
                                                            label)
``policyengine_policy_version_info{version}``   info        content hash of the policies in force
==============================================  ==========  ===================================

Every guard is present from the first scrape, its state gauge included. Two engines can share
a registry when one is given another ``prefix``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric

from ._keys.keyed_export import KEYS_SHOWN, key_counts, key_states, would_trips
from ._telemetry.metrics import STATE_VALUES

if TYPE_CHECKING:
    from ._registry.engine import Engine
    from ._runtime.guard import Guard

__all__ = ["STATE_VALUES", "PolicyEngineCollector"]


_REASONS = ("circuit_open", "bulkhead_full", "budget_exhausted")
_OBSERVED = ("would_reject", "would_retry", "would_timeout")
_INF = float("inf")


class PolicyEngineCollector:
    """A prometheus_client collector for one engine (None: the default engine, at each scrape)."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        prefix: str = "policyengine",
        keys_per_guard: int = KEYS_SHOWN,
    ) -> None:
        self._engine = engine
        self._prefix = prefix
        self._keys_shown = keys_per_guard

    @property
    def engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        from ._registry.default import default_engine

        return default_engine()

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (lets the registry detect name clashes)."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        fams = self._families()
        by_name = {f.name: f for f in fams}

        def fam(name: str) -> Any:
            return by_name[f"{self._prefix}_{name}"]

        for name, guard in sorted(engine.guards.items()):
            m = guard.snapshot()
            g = [name]
            fam("calls_started").add_metric(g, m["calls"])
            fam("calls").add_metric([name, "success"], m["successes"])
            fam("calls").add_metric([name, "failure"], m["failures"])
            fam("calls").add_metric([name, "ignored"], m["ignored"])
            for reason, count in m["rejections"].items():
                fam("rejections").add_metric([name, reason], count)
            fam("retries").add_metric(g, m["retries"])
            fam("timeouts").add_metric(g, m["timeouts"])
            fam("fallbacks").add_metric(g, m["fallbacks"])
            for event, count in m["observed"].items():
                fam("observed").add_metric([name, event], count)
            fam("in_flight").add_metric(g, m["in_flight"])
            fam("queued").add_metric(g, m["queued"])
            fam("breaker_state").add_metric(g, STATE_VALUES.get(m["state"], 0))
            duration = m["duration"]
            buckets: list[tuple[str, float]] = []
            seen = 0
            for bound, count in duration["buckets"]:
                seen += count
                if bound != _INF:  # the snapshot's last bucket is +Inf: one +Inf, below
                    buckets.append((repr(float(bound)), seen))
            buckets.append(("+Inf", duration["count"]))
            fam("call_duration_seconds").add_metric(g, buckets, duration["sum"])
            self._keyed(fam, name, guard)
        status = engine.status()
        fam("reloads").add_metric(["success"], status["reloads"])
        fam("reloads").add_metric(["failure"], status["failed_reloads"])
        fam("policy_version").add_metric([], {"version": str(status["version"])})
        return iter(fams)

    def _keyed(self, fam: Callable[[str], Any], name: str, guard: Guard) -> None:
        """The bounded per-key view of a partitioned policy (`_keys.keyed_export`)."""
        trips = would_trips(guard)
        if trips is None:
            return
        for key, value in key_states(guard, self._keys_shown):
            fam("key_state").add_metric([name, key], value)
        for state, count in key_counts(guard).items():
            fam("keys").add_metric([name, state], count)
        fam("keys_would_trip").add_metric([name], trips)

    def _families(self) -> list[Metric]:
        p = self._prefix
        guard = ["guard"]
        return [
            CounterMetricFamily(f"{p}_calls_started", "Guarded calls begun.", labels=guard),
            CounterMetricFamily(
                f"{p}_calls",
                "Guarded calls ended, by outcome (success, failure, ignored).",
                labels=["guard", "outcome"],
            ),
            CounterMetricFamily(
                f"{p}_rejections",
                "Calls or retries refused by the guard, by reason.",
                labels=["guard", "reason"],
            ),
            CounterMetricFamily(
                f"{p}_retries", "Retries (attempts after the first).", labels=guard
            ),
            CounterMetricFamily(f"{p}_timeouts", "Timed-out attempts.", labels=guard),
            CounterMetricFamily(
                f"{p}_fallbacks", "Fallbacks used instead of raising.", labels=guard
            ),
            CounterMetricFamily(
                f"{p}_observed",
                "Observe mode: what enforcement would have done.",
                labels=["guard", "event"],
            ),
            GaugeMetricFamily(f"{p}_in_flight", "Guarded calls running now.", labels=guard),
            GaugeMetricFamily(f"{p}_queued", "Callers waiting for a bulkhead slot.", labels=guard),
            GaugeMetricFamily(
                f"{p}_breaker_state",
                "Breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled.",
                labels=guard,
            ),
            HistogramMetricFamily(
                f"{p}_call_duration_seconds",
                "Duration of whole guarded calls (retries, sleeps and queueing included).",
                labels=guard,
            ),
            GaugeMetricFamily(
                f"{p}_key_state",
                "Keyed guards: a key's breaker state (at most N keys, the rest as key=other).",
                labels=["guard", "key"],
            ),
            GaugeMetricFamily(
                f"{p}_keys", "Keyed guards: keys kept, by state.", labels=["guard", "state"]
            ),
            CounterMetricFamily(
                f"{p}_keys_would_trip", "Keyed guards: trips past max_open_ratio.", labels=guard
            ),
            CounterMetricFamily(f"{p}_reloads", "Policy reloads, by result.", labels=["result"]),
            InfoMetricFamily(f"{p}_policy_version", "The policies in force (content hash)."),
        ]
