"""How long loading a large policy file takes: 1,000 generated policies with templates and
`extends`, parsed, inherited, validated (exception types imported) and line-mapped.

    .venv/bin/python bench/bench_load.py [--policies N] [--runs R]

Prints the median of R runs of `load_text`; the goal is well under a second for 1,000 policies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policyengine._config.loader import load_text

TEMPLATES = """\
schema_version = 1

[templates.default]
timeout = { total = "10s", attempt = "2s" }

[templates.default.retry]
max_attempts = 3
backoff = "exponential"
initial_delay = "100ms"
max_delay = "2s"
jitter = "full"
budget = { ratio = 0.2, min_per_second = 10 }

[templates.read]
extends = "default"
timeout = { total = "2s", attempt = "500ms" }
breaker = { window = "time", window_duration = "30s", failure_rate = "50%", minimum_calls = 10 }
"""

POLICY = """
[policies.svc{i:04d}]
{extends}mode = "{mode}"

[policies.svc{i:04d}.retry]
max_attempts = {attempts}
retry_on = ["ConnectionError", "TimeoutError", "policyengine._demo.errors.ServiceUnavailable"]
never_retry = [
  "policyengine._demo.errors.CardDeclined",
  {{ type = "policyengine._demo.errors.HTTPError", status = ["4xx"], except_status = [408, 429] }},
]

[policies.svc{i:04d}.breaker]
consecutive_failures = {failures}
open_duration = "{open_s}s"
ignore = ["policyengine._demo.errors.CardDeclined"]

[policies.svc{i:04d}.bulkhead]
max_concurrent = {concurrent}
max_queue = 10
max_wait = "100ms"
"""


def generate(n: int) -> str:
    """A policy file with `n` policies: a third inherit `default` implicitly, a third extend the
    `read` template, a third extend the policy before them."""
    parts = [TEMPLATES]
    for i in range(n):
        kind = i % 3
        if kind == 0 or i == 0:
            extends = ""
        elif kind == 1:
            extends = 'extends = "read"\n'
        else:
            extends = f'extends = "svc{i - 1:04d}"\n'
        parts.append(
            POLICY.format(
                i=i,
                extends=extends,
                mode=("enforce", "observe")[i % 2],
                attempts=2 + i % 2,
                failures=3 + i % 5,
                open_s=10 + i % 20,
                concurrent=5 + i % 50,
            )
        )
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    text = generate(args.policies)
    assert len(load_text(text).policies) == args.policies  # also warms up the imports
    load = timed(lambda: load_text(text), args.runs)
    parse = timed(lambda: tomllib.loads(text), args.runs)
    lines = text.count("\n")
    print(
        f"load_text: {args.policies} policies ({lines} lines, {len(text) // 1024} KiB): "
        f"median {statistics.median(load) * 1000:.1f} ms over {args.runs} runs "
        f"(min {min(load) * 1000:.1f} ms, max {max(load) * 1000:.1f} ms)"
    )
    ratio = statistics.median(load) / statistics.median(parse)
    print(
        f"floor, tomllib.loads alone: median {statistics.median(parse) * 1000:.1f} ms; "
        f"the whole load is {ratio:.1f}x the bare TOML parse"
    )
    return 0


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    raise SystemExit(main())
