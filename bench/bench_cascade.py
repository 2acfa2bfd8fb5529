"""The cascade: one downstream hangs; does the healthy endpoint keep its throughput?

A Starlette service (uvicorn, a process of its own) with `/a` and `/b` calling two downstreams
through one shared httpx pool of 10 connections; 16 request loops per endpoint on 127.0.0.1.
Healthy load, then B hangs, then B stays hung (a breaker, if any, is open by then). Compared:

- ``none``: httpx's own 5 s timeout and nothing else;
- ``tenacity+circuitbreaker``: the usual hand-rolled stack, same numbers as the policy
  (500 ms per attempt, 2 attempts, a breaker per dependency opening after 5 failures);
- ``policyengine``: `GuardedTransport` per host with the policy of `tests/cascade.py`
  (the same timeouts, retry and breaker, plus a bulkhead of 5 per dependency).

Rounds are interleaved (variant after variant, twice by default); the table gives medians. On
a shared machine absolute rates are noise: compare the "kept" ratios.

    python bench/bench_cascade.py [--rounds 2] [--seconds 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import cascade


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    logging.getLogger("policyengine").setLevel(logging.ERROR)
    results: dict[str, list[cascade.Result]] = {v: [] for v in cascade.VARIANTS}
    for r in range(args.rounds):
        for variant in cascade.VARIANTS:
            print(f"round {r + 1}/{args.rounds}: {variant} ...", file=sys.stderr, flush=True)
            results[variant].append(cascade.measure(variant, seconds=args.seconds))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(
        "| guard | A healthy (ok/s) | A with B hanging (ok/s) | kept | A errors while B hangs "
        "| B answers while B hangs | B p50 once settled |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for variant, runs in results.items():
        healthy = med([x.healthy["a"].ok_per_s for x in runs])
        degraded = med([x.degraded["a"].ok_per_s for x in runs])
        kept = med([x.kept for x in runs])
        errors = med(
            [sum(n for s, n in x.degraded["a"].statuses.items() if s != 200) for x in runs]
        )
        answers: dict[int, int] = {}
        for x in runs:
            for status, n in {**x.degraded["b"].statuses}.items():
                answers[status] = answers.get(status, 0) + n
        shown = ", ".join(f"{n} x {s or 'none'}" for s, n in sorted(answers.items())) or "none"
        settled = [x.open["b"].p50 for x in runs if x.open["b"].latencies]
        p50 = f"{med(settled) * 1000:.0f} ms" if settled else "never answered"
        print(
            f"| {variant} | {healthy:.0f} | {degraded:.0f} | **{kept:.2f}** | {errors:.0f} "
            f"| {shown} | {p50} |"
        )


if __name__ == "__main__":
    main()
