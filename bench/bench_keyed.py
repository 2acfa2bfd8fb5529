"""Keyed guards: what a call through a key's lane costs against an unkeyed call of the same policy,
and what an idle closed key costs in memory (tracemalloc).

    .venv/bin/python bench/bench_keyed.py [--quick]

Timing: many short interleaved rounds (the order rotating); the figure is the median of the
per-round ratios, so the machine's drift cancels (these machines are noisy). Unkeyed:
`guard(x).call(ok)` of a policy; keyed: `guard(x_keyed).key(host).call(ok)` of the same settings
with a `partition` (the handle's kept keyed handle, the registry lookup, the lane's guard); and
the partitioned policy called without a key (the lane ""). Keys rotate over 100 hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ok, timed

import policyengine
from policyengine.testing import FakeClock

BASE = {
    "breaker_only": "[policies.{name}.breaker]\nconsecutive_failures = 5\n",
    "full": """
[policies.{name}]
timeout = {{ total = "10s", attempt = "2s" }}
[policies.{name}.retry]
max_attempts = 3
backoff = "exponential"
initial_delay = "100ms"
max_delay = "1s"
[policies.{name}.breaker]
consecutive_failures = 5
failure_rate = 0.5
window_size = 100
minimum_calls = 20
[policies.{name}.bulkhead]
max_concurrent = 100
max_queue = 100000
""",
}
PARTITION = "[policies.{name}.partition]\nmax_keys = 1000\n"

# each policy twice: as it is (unkeyed) and with a partition (keyed), the same settings
POLICIES = "".join(
    body.format(name=name)
    + body.format(name=f"{name}_keyed")
    + PARTITION.format(name=f"{name}_keyed")
    for name, body in BASE.items()
)

MEMORY = {
    "consecutive (default breaker)": {"breaker": {}},
    "count window of 100": {"breaker": {"failure_rate": 0.5}},
    "time window of 60s": {"breaker": {"failure_rate": 0.5, "window": "time"}},
    "count window of 20": {
        "breaker": {"failure_rate": 0.5, "window_size": 20, "minimum_calls": 10}
    },
    "default breaker + own bulkhead": {
        "breaker": {},
        "bulkhead": {"max_concurrent": 10},
        "partition": {"bulkhead": "per_key"},
    },
}


async def timing(n: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    """Per policy: (us per unkeyed call of the plain policy, keyed call of the partitioned one /
    that, unkeyed call of the partitioned one / that), through the public handles."""
    engine = policyengine.loads(POLICIES, default=False)
    out: dict[str, tuple[float, float, float]] = {}
    hosts = [f"api-{i}.example.com" for i in range(100)]
    for name in BASE:
        plain, keyed = engine.guard(name), engine.guard(f"{name}_keyed")
        rotation = itertools.cycle(hosts)  # the caller's key: the same work in every body

        async def unkeyed(plain: Any = plain, rotation: Any = rotation) -> object:
            next(rotation)
            return await plain.call(ok)

        async def by_key(keyed: Any = keyed, rotation: Any = rotation) -> object:
            return await keyed.key(next(rotation)).call(ok)

        async def no_key(keyed: Any = keyed, rotation: Any = rotation) -> object:
            next(rotation)
            return await keyed.call(ok)

        a: list[float] = []
        b: list[float] = []
        c: list[float] = []
        for i in range(rounds):  # the order rotates, so no body always runs first or last
            bodies = [(a, unkeyed), (b, by_key), (c, no_key)]
            for times, body in bodies[i % 3 :] + bodies[: i % 3]:
                times.append(await timed(body, n))
        # the ratio of each round's adjacent timings (drift cancels), then their median
        keyed = statistics.median(y / x for x, y in zip(a, b, strict=True))
        plain = statistics.median(z / x for x, z in zip(a, c, strict=True))
        out[name] = (statistics.median(a), keyed, plain)
    engine.close()
    return out


def bytes_per_key(sections: dict[str, Any], n: int = 5000) -> float:
    """tracemalloc bytes per key kept, each called once through `guard(x).key(k).call_sync`."""
    text = _toml("m", {**sections, "partition": {**sections.get("partition", {}), "max_keys": n}})
    engine = policyengine.loads(text, clock=FakeClock(), default=False)
    handle = engine.guard("m")
    handle.key("warm-up").call_sync(int)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        handle.key(f"host-{i:06d}.example.com").call_sync(int)  # idle, closed, kept
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert handle.metrics()["keys"] == n
    engine.close()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / n


def _toml(name: str, sections: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v)

    return "".join(
        f"[policies.{name}.{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items())
        for section, body in sections.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (2000, 9) if args.quick else (3000, 61)
    print(f"through the handles: median ratio of {rounds} interleaved rounds of {n} calls")
    for name, (plain, keyed, no_key) in asyncio.run(timing(n, rounds)).items():
        print(
            f"  {name:13s} unkeyed {plain:6.2f} us   keyed / unkeyed x{keyed:.3f}"
            f"   (partitioned, no key: x{no_key:.3f})"
        )
    print("memory per idle closed key (tracemalloc, 5000 keys, each called once)")
    for label, sections in MEMORY.items():
        print(f"  {label:32s} {bytes_per_key(sections):7.0f} B")


if __name__ == "__main__":
    main()
