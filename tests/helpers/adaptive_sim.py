"""A deterministic simulation of a dependency with capacity C, on a fake clock (no sleeping).

`clients` callers each call again as soon as their call ends (a closed loop). A call admitted
while `n` calls run (itself included) takes ``base * (1 + max(0, n - C))``: one slot's worth
of extra wait per call beyond capacity, so latency rises sharply past C. A call longer than
`timeout` ends at `timeout` as a drop. A caller the bulkhead refuses tries again after `think`.
Events are processed in time order from a heap; everything is reproducible.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from policyengine._patterns.adaptive import AdaptiveLimit
from policyengine._patterns.bulkhead import Bulkhead


@dataclass
class Run:
    limits: list[int] = field(default_factory=list)  # the limit after each sample
    max_active: int = 0
    max_over_limit: int = 0  # admissions beyond the limit in force (must stay 0)
    done: int = 0
    drops: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)


def simulate(
    limiter: AdaptiveLimit,
    capacity: Callable[[int], int],
    *,
    clients: int,
    samples: int,
    base: float = 0.01,
    timeout: float = 0.03,
    think: float = 0.0025,
) -> Run:
    """Run until `samples` calls ended; `capacity(i)` is C while the i-th sample is taken."""
    bulkhead: Bulkhead = limiter.bulkhead
    run = Run()
    now = 0.0
    seq = 0
    heap: list[tuple[float, int, int, float, bool]] = []  # (time, seq, kind, start, dropped)
    for _ in range(clients):
        heap.append((0.0, seq, 0, 0.0, False))
        seq += 1
    heapq.heapify(heap)
    while run.done < samples:
        now, _, kind, start, dropped = heapq.heappop(heap)
        if kind == 1:  # a call ends
            rtt = now - start
            limiter.settle("timeout" if dropped else "success", None, rtt, now)
            bulkhead.release()
            run.done += 1
            run.drops += dropped
            run.latencies.append(rtt)
            run.limits.append(bulkhead.max_concurrent)
            heapq.heappush(heap, (now, seq, 0, 0.0, False))
        elif bulkhead.try_acquire():  # a caller tries
            n = bulkhead.active
            run.max_active = max(run.max_active, n)
            run.max_over_limit = max(run.max_over_limit, n - bulkhead.max_concurrent)
            cap = capacity(run.done)
            latency = base * (1 + max(0, n - cap))
            late = latency > timeout
            heapq.heappush(heap, (now + min(latency, timeout), seq, 1, now, late))
        else:
            run.rejected += 1
            heapq.heappush(heap, (now + think, seq, 0, 0.0, False))
        seq += 1
    return run
