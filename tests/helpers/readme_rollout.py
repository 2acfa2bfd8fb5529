"""The README's worked example of record -> suggest -> simulate -> edit: the files its
transcripts read, made by a real guard on virtual time (`rollout_live`), so the README shows
what the commands really print. `test_readme` registers the scenarios (`register`)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.rollout_live import run_live

IN_FORCE = """\
[policies.payments.timeout]
attempt = "2s"
[policies.payments.retry]
max_attempts = 3
backoff = "exponential"
initial_delay = "100ms"
max_delay = "1s"
jitter = "none"
[policies.payments.breaker]
consecutive_failures = 5
open_duration = "30s"
"""

EDITED = """\
# the policy in force with what `policyengine suggest traces/payments.jsonl` proposed
[policies.payments.timeout]
attempt = "360ms"
[policies.payments.retry]
max_attempts = 3
backoff = "exponential"
initial_delay = "100ms"
max_delay = "360ms"
jitter = "none"
budget = { ratio = 0.1, min_per_second = 1.0 }
[policies.payments.breaker]
failure_rate = 0.06
window_size = 609
minimum_calls = 93
open_duration = "30s"
"""


def _dependency(slow: bool) -> Callable[[float], tuple[float, str, type[Exception]]]:
    """Log-normal latency (median 80 ms), 1% refused connections; with `slow`, one bad minute
    five minutes in (1.2 s more per answer)."""
    rng = random.Random(11 + slow)

    def answer(t: float) -> tuple[float, str, type[Exception]]:
        if rng.random() < 0.01:
            return 0.005, "failure", ConnectionError
        latency = rng.lognormvariate(math.log(0.08), 0.35)
        if slow and 300 <= t - 1000.0 < 360:
            latency += 1.2
        return latency, "success", Exception

    return answer


def make_trace(directory: Path, name: str, slow: bool) -> Path:
    """traces/NAME.jsonl: ten minutes of 10 calls/s through the policy in force."""
    path = directory / "traces" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rng = random.Random(5)
    starts, t = [], 1000.0
    while t < 1600.0:
        starts.append(t)
        t += rng.expovariate(10.0)
    run_live(IN_FORCE, _dependency(slow), starts, path, guard="payments")
    return path


def _suggest(directory: Path) -> None:
    make_trace(directory, "payments", slow=False)


def _simulate(directory: Path) -> None:
    make_trace(directory, "incident", slow=True)
    (directory / "rollout").mkdir(exist_ok=True)
    (directory / "rollout" / "payments.toml").write_text(IN_FORCE)
    (directory / "rollout" / "payments-edited.toml").write_text(EDITED)


def register(scenario: Callable[[str, str], Callable[[Any], Any]]) -> None:
    """Add this example's `output` scenarios to the README test's."""
    scenario("output", "rollout-suggest")(_suggest)
    scenario("output", "rollout-simulate")(_simulate)
