"""Workers for the shared rate-limit tests, run in spawned processes (importable by name)."""

from __future__ import annotations

import time
import traceback
from typing import Any

__all__ = ["hammer"]


def hammer(url: str, prefix: str, rates: list[str], processes: int, secs: float, q: Any) -> None:
    """Offer an attempt every millisecond for `secs` once `processes` are live; report the start
    times admitted, and any error other than a rate-limit rejection."""
    from policyengine import RateLimitedError
    from policyengine._config.admission_models import RateLimitOptions
    from policyengine._runtime.clock import MonotonicClock
    from policyengine._shared._limiter import LimiterStore, SharedRateLimiter

    ready, go, out = q
    store = LimiterStore(url, prefix, 0.05)
    limiter = SharedRateLimiter("svc", RateLimitOptions(rates=rates), store, MonotonicClock())
    deadline = time.monotonic() + 20
    while limiter.live < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    ready.put(limiter.live)
    go.wait(30)
    starts: list[float] = []
    errors: list[str] = []
    t0 = time.monotonic()
    while (now := time.monotonic()) < t0 + secs:
        try:
            starts.append(now + limiter.admit(now))
        except RateLimitedError:
            pass
        except Exception:
            errors.append(traceback.format_exc())
        time.sleep(0.001)
    out.put(
        {
            "starts": [s - t0 for s in starts],
            "errors": errors,
            "status": limiter.status(),
            "store": store.status(),
        }
    )
    store.close()
