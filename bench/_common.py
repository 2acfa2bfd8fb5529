"""What the hot-path benchmarks share: the policies they time and the timing loop.

`bench_guard` and `bench_exporters` time the same guards, so their figures can be compared:
``full`` (total + attempt timeout, retry, breaker with a rate window, bulkhead),
``bulkhead_only``, ``tripped`` (opens on the first failure, for an hour) and ``failing``
(counts failures, never trips).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

POLICIES = """
[policies.full]
timeout = { total = "10s", attempt = "2s" }
[policies.full.retry]
max_attempts = 3
backoff = "exponential"
initial_delay = "100ms"
max_delay = "1s"
[policies.full.breaker]
consecutive_failures = 5
failure_rate = 0.5
window_size = 100
minimum_calls = 20
[policies.full.bulkhead]
max_concurrent = 100
max_queue = 100000

[policies.bulkhead_only.bulkhead]
max_concurrent = 100
max_queue = 100000

[policies.tripped.breaker]
consecutive_failures = 1
open_duration = "1h"

[policies.failing.breaker]
consecutive_failures = 1000000
"""

Body = Callable[[], Awaitable[object]]


async def ok(*_: object) -> int:
    return 1


async def timed(body: Body, n: int) -> float:
    """Microseconds per call of `n` sequential awaits of `body`."""
    t0 = time.perf_counter()
    for _ in range(n):
        await body()
    return (time.perf_counter() - t0) / n * 1e6


async def per_call_us(body: Body, n: int, repeats: int) -> float:
    """The median of `repeats` runs of `timed`."""
    return statistics.median([await timed(body, n) for _ in range(repeats)])
