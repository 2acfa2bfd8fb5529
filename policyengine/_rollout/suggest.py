"""`policyengine suggest TRACE`: policy values derived from recorded traffic, as commented TOML.

Each value says which figure of the trace it came from, so an operator can judge it; nothing is
written anywhere (the fragment goes to stdout). The rules, per guard:

- `timeout.attempt`: the 99.9th percentile of successful attempts' durations x 1.5 (headroom
  for a slower day); rounded up to the millisecond (to 10 ms past 10 s).
- `breaker.window_size`: the calls of a median minute (20..10,000); `minimum_calls`: the calls
  of 10 s at the quietest tenth of minutes (at least 5); `failure_rate`: the baseline failure
  rate over windows of `window_size` calls, plus 3 standard deviations of it (at least
  baseline + 5 points, at most 0.95): normal variation does not trip it, an outage does.
- `retry.budget`: `ratio` twice the baseline failure rate (0.1..0.5: retries for ordinary
  failures, not for an outage); `min_per_second` 5% of the median traffic (at least 1).
  `retry.max_delay` (the default exponential backoff needs a cap) is the suggested attempt
  timeout (at least the default 100 ms initial delay): no backoff outwaits an attempt.
- hedge `delay`: the 95th percentile of successful attempts (a hedge for the slowest 5%), as a
  comment: a hedge sends a second request, so only idempotent work may have one.

Percentiles are nearest-rank over the recorded attempts (a sampled trace estimates them).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable

from .._config.units import format_duration
from .trace import Attempt

__all__ = ["percentile", "suggest"]

HEADROOM = 1.5
SIGMAS = 3.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ceil_duration(seconds: float) -> float:
    step = 0.001 if seconds < 10 else 0.01
    return max(step, math.ceil(seconds / step - 1e-9) * step)


def _ms(seconds: float) -> str:
    return format_duration(round(seconds, 6))


def _per_minute(attempts: list[Attempt]) -> list[int]:
    first = attempts[0].time
    counts = Counter(int((a.time - first) // 60) for a in attempts)
    minutes = max(counts) + 1
    full = [counts.get(m, 0) for m in range(minutes)]
    return full[:-1] if len(full) > 1 else full  # the last minute is partial


def _guard_lines(name: str, attempts: list[Attempt]) -> list[str]:
    real = [a for a in attempts if a.outcome != "rejected"]
    ok = sorted(a.duration for a in real if a.outcome == "success")
    lines = [f"# --- {name}: {len(attempts)} attempts, {len(ok)} successful"]
    if not real:
        return [*lines, "# no attempt reached the dependency: nothing to derive", ""]
    section = f"policies.{_key(name)}"
    timeout = None
    if ok:
        p999 = percentile(ok, 0.999)
        timeout = _ceil_duration(p999 * HEADROOM)
        lines += [
            f"[{section}.timeout]",
            f'attempt = "{_ms(timeout)}"  # p99.9 of {len(ok)} successful attempts '
            f"({_ms(p999)}) x {HEADROOM} headroom; p50 {_ms(percentile(ok, 0.5))}, "
            f"p99 {_ms(percentile(ok, 0.99))}",
            "",
        ]
    lines += _breaker_lines(section, real)
    lines += _budget_lines(section, real, timeout)
    if ok:
        p95 = _ceil_duration(percentile(ok, 0.95))
        why = f"p95 of successful attempts: hedge the slowest 5% (p50 {_ms(percentile(ok, 0.5))})"
        # commented out: a hedge sends a second request, for idempotent work only
        lines += [f'# [{section}.hedge] delay = "{_ms(p95)}"  # {why}; idempotent calls only', ""]
    return lines


def _breaker_lines(section: str, real: list[Attempt]) -> list[str]:
    minutes = sorted(_per_minute(real))
    median = statistics.median(minutes)
    size = int(min(10_000, max(20, median)))
    quiet = percentile([float(m) for m in minutes], 0.1)
    minimum = int(min(size, max(5, quiet / 6)))
    flags = [0 if a.outcome == "success" else 1 for a in real]
    windows = [flags[i : i + size] for i in range(0, len(flags) - size + 1, size)] or [flags]
    rates = [sum(w) / len(w) for w in windows]
    mean = statistics.fmean(rates)
    sd = statistics.pstdev(rates) if len(rates) > 1 else 0.0
    rule = f"+ {SIGMAS:g} sd"
    if mean + SIGMAS * sd < mean + 0.05:
        rule = f"+ 5 points (more than {SIGMAS:g} sd)"
    rate = min(0.95, max(mean + SIGMAS * sd, mean + 0.05))
    rate = math.ceil(rate * 100 - 1e-9) / 100
    return [
        f"[{section}.breaker]",
        f"failure_rate = {rate}  # baseline {mean:.1%} +/- {sd:.1%} (mean and sd over "
        f"{len(windows)} windows of {size} calls) {rule}",
        f"window_size = {size}  # calls in a median minute ({median:g}/min over "
        f"{len(minutes)} minutes)",
        f"minimum_calls = {minimum}  # calls in 10s of the quietest tenth of minutes "
        f"({quiet:g}/min)",
        "",
    ]


def _budget_lines(section: str, real: list[Attempt], timeout: float | None) -> list[str]:
    failures = sum(1 for a in real if a.outcome != "success")
    baseline = failures / len(real)
    ratio = min(0.5, max(0.1, math.ceil(2 * baseline * 100 - 1e-9) / 100))
    span = max(1.0, real[-1].time - real[0].start)
    per_second = len(real) / span
    floor = max(1.0, math.ceil(per_second * 0.05 * 10) / 10)
    lines = [f"[{section}.retry]"]
    if timeout is not None:
        cap = max(timeout, 0.1)
        lines.append(
            f'max_delay = "{_ms(cap)}"  # the suggested attempt timeout (at least the 100ms '
            "initial_delay): no backoff waits longer than an attempt may take"
        )
    else:
        lines.append('backoff = "constant"  # no successful attempt to size a backoff cap from')
    lines += [
        f"budget = {{ ratio = {ratio}, min_per_second = {floor} }}  # ratio: 2 x the failure "
        f"rate {baseline:.1%}, 0.1..0.5; floor: 5% of {per_second:.1f} calls/s, at least 1",
        "",
    ]
    return lines


def _key(name: str) -> str:
    bare = name.replace("_", "").replace("-", "").isalnum() and name.isascii()
    return name if bare else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def suggest(attempts: Iterable[Attempt], source: str = "the trace") -> str:
    """The commented TOML fragment for every guard of the trace."""
    by_guard: dict[str, list[Attempt]] = defaultdict(list)
    for a in sorted(attempts, key=lambda a: a.time):
        by_guard[a.guard].append(a)
    total = sum(len(v) for v in by_guard.values())
    lines = [
        f"# policyengine suggest {source}: {total} attempts of {len(by_guard)} guard(s)",
        "# Derived from recorded traffic; review each value before you copy it. Nothing was "
        "edited.",
        "",
    ]
    for name in sorted(by_guard):
        lines += _guard_lines(name, by_guard[name])
    return "\n".join(lines).rstrip() + "\n"
