"""A streaming percentile estimator of attempt latency: O(1) per sample, fixed memory, decaying.

Why log buckets: a hedge delay is a latency percentile, and latencies span microseconds to
seconds, so what matters is *relative* error. Bucket i holds values in
``[LOW * GAMMA**i, LOW * GAMMA**(i+1))`` (DDSketch's layout; HdrHistogram's idea): with
``GAMMA = 1.04`` and the bucket's geometric middle reported, every estimate lies within 2% of a
true sample value of that rank. Values are clamped to [10 µs, 100 s]: 412 buckets, about 3 KiB.

Why decay: latency shifts (a deploy, a cold cache), and a hedge delay from an hour ago is wrong.
Every `HALF_LIFE` samples all counts are halved (O(buckets), so O(1) amortised): a sample's
weight falls by half per 2,048 newer samples, about 3,000 samples of effective memory. Counting
by samples, not seconds, keeps a quiet service's estimate as good as a busy one's. The object
belongs to the guard's name, not its policy version: a reload keeps what it learned.

`quantile(q)` is None until `min_samples(q)` samples were seen: ``max(100, ceil(2 / (1 - q)))``
(100 up to p98, 200 at p99, 2,000 at p99.9), so at least two samples are expected above the
percentile before it is trusted. Thread-safe: one short lock per sample.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from itertools import accumulate

__all__ = ["GAMMA", "HALF_LIFE", "LatencyQuantiles", "min_samples"]

LOW = 1e-5
HIGH = 100.0
GAMMA = 1.04
HALF_LIFE = 2048
_INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
_BUCKETS = math.ceil(math.log(HIGH / LOW) * _INV_LOG_GAMMA) + 1
_LOG = math.log
_LOG_LOW = math.log(LOW)


def min_samples(q: float) -> int:
    """Samples needed before the `q` quantile is trusted (see the module docstring)."""
    return max(100, math.ceil(2.0 / (1.0 - q) - 1e-9))


class LatencyQuantiles:
    """Decaying log-bucket histogram of latencies in seconds."""

    __slots__ = ("_counts", "_lock", "_since_decay", "seen")

    def __init__(self) -> None:
        self._counts = [0.0] * _BUCKETS
        self._lock = threading.Lock()
        self._since_decay = 0
        self.seen = 0  # samples ever added (not decayed): the warm-up test

    def add(self, seconds: float) -> None:
        if seconds <= LOW:
            index = 0
        elif seconds >= HIGH:
            index = _BUCKETS - 1
        else:
            index = int((_LOG(seconds) - _LOG_LOW) * _INV_LOG_GAMMA)
        with self._lock:
            self._counts[index] += 1.0
            self.seen += 1
            self._since_decay += 1
            if self._since_decay >= HALF_LIFE:
                self._since_decay = 0
                self._counts = [c * 0.5 for c in self._counts]

    def quantile(self, q: float) -> float | None:
        """The `q` quantile (0 < q < 1) in seconds, or None before `min_samples(q)` samples."""
        if self.seen < min_samples(q):
            return None
        with self._lock:
            cumulative = list(accumulate(self._counts))
        target = q * cumulative[-1]
        index = min(bisect_left(cumulative, target), _BUCKETS - 1)
        return float(LOW * GAMMA ** (index + 0.5))

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
