"""The scripted timeline: what the flaky dependency does, phase by phase.

The story is a loop of phases with relative lengths. At the default speed one loop takes
`CYCLE_SECONDS`; a run shorter than that (`--duration`) squeezes the whole loop into the run, so
even a 5-second run shows a trip and a recovery. Each phase sets, per endpoint, the failure rate,
the latency and the share of requests that hang (which only an attempt timeout ends).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["CYCLE_SECONDS", "ENDPOINTS", "Conditions", "Phase", "Story", "default_phases"]

CYCLE_SECONDS = 40.0
ENDPOINTS = ("checkout", "stock", "catalog")


@dataclass(frozen=True, slots=True)
class Conditions:
    """How one endpoint behaves: `error_rate` of fast 503s, `hang_rate` of requests that never
    answer, and a latency drawn uniformly from [latency, latency + jitter] seconds."""

    error_rate: float = 0.0
    latency: float = 0.015
    jitter: float = 0.015
    hang_rate: float = 0.0

    def draw_latency(self, rng: random.Random) -> float:
        return self.latency + rng.random() * self.jitter


HEALTHY = Conditions(error_rate=0.01)


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of the story: a short name, a caption for the view, its relative length, and
    the conditions of each endpoint (endpoints not listed are healthy)."""

    name: str
    caption: str
    weight: float
    endpoints: dict[str, Conditions] = field(default_factory=dict)

    def conditions(self, endpoint: str) -> Conditions:
        return self.endpoints.get(endpoint, HEALTHY)


def default_phases() -> tuple[Phase, ...]:
    """healthy -> slow (bulkhead fills, retries) -> outage (trip, fallback, probes) -> recovery."""
    return (
        Phase(
            "healthy",
            "All healthy: every call succeeds on the first attempt; the breakers are closed.",
            1.5,
        ),
        Phase(
            "slow",
            "Stock slows down: its bulkhead fills and sheds load; checkout errors get retried.",
            1.5,
            {
                "stock": Conditions(error_rate=0.02, latency=0.18, jitter=0.12),
                "checkout": Conditions(error_rate=0.12, latency=0.02, jitter=0.03),
                "catalog": Conditions(error_rate=0.05, latency=0.12, jitter=0.15),
            },
        ),
        Phase(
            "outage",
            "Checkout is down: the breaker trips, the fallback answers, half-open probes fail.",
            3.0,
            {
                "checkout": Conditions(error_rate=0.85, hang_rate=0.15),
                "catalog": Conditions(error_rate=0.9, hang_rate=0.05),
            },
        ),
        Phase(
            "recovery",
            "Checkout is back: after open_duration a half-open probe succeeds and it closes.",
            4.0,
        ),
    )


class Story:
    """Maps elapsed run time to the phase in force, looping every `cycle` seconds."""

    def __init__(
        self,
        phases: tuple[Phase, ...] | None = None,
        *,
        cycle: float = CYCLE_SECONDS,
    ) -> None:
        self.phases = phases if phases is not None else default_phases()
        if not self.phases or cycle <= 0:
            raise ValueError("a story needs phases and a positive cycle")
        self.cycle = cycle
        total = sum(p.weight for p in self.phases)
        self._ends: list[float] = []
        end = 0.0
        for phase in self.phases:
            end += phase.weight / total * cycle
            self._ends.append(end)

    @classmethod
    def for_run(cls, duration: float | None, speed: float = 1.0) -> Story:
        """The default story at `speed`, squeezed so one loop fits in `duration` seconds."""
        cycle = CYCLE_SECONDS / speed
        if duration is not None and 0 < duration < cycle:
            cycle = duration
        return cls(cycle=cycle)

    def index_at(self, elapsed: float) -> int:
        t = elapsed % self.cycle
        for i, end in enumerate(self._ends):
            if t < end:
                return i
        return len(self.phases) - 1

    def phase_at(self, elapsed: float) -> Phase:
        return self.phases[self.index_at(elapsed)]

    def span(self, index: int) -> tuple[float, float]:
        """Start and end (seconds into a loop) of phase `index`."""
        return (self._ends[index - 1] if index else 0.0, self._ends[index])
