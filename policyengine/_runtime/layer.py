"""The contract between the attempt lifecycle and a pluggable layer (rate limit, throttle, hedge
sampling, adaptive limits, recording, chaos).

Why a protocol: every new layer would otherwise add a step to each of the guarded call's drivers
(async `call`, `call_sync`, `async with`, observe mode). Instead a compiled guard holds a tuple of
layers, empty when the policy uses none (one truthiness test on the hot path), and the lifecycle
calls each at two fixed points of every attempt:

- `admit(now, limit)` before the attempt, after the breaker permit and before the bulkhead slot.
  `limit` is the time left before the call's total deadline (None: no deadline). It returns 0.0 to
  go on, or a number of seconds (less than `limit`) the caller must wait before the attempt starts
  (the layer already holds what it reserved, e.g. a rate-limit token); the lifecycle sleeps on the
  engine's clock. It raises a `RejectedError` subclass to refuse the attempt (never retried;
  counted under the error's `reason`), taking nothing, also when the wait would not fit in
  `limit`.
- `settle(outcome, error, duration, now)` exactly once for every `admit` that returned (did not
  raise), with what happened: also when the attempt never ran because a later step refused it
  ("rejected") or the caller was cancelled while waiting ("cancelled"). `duration` is in the
  engine clock's seconds. It must be cheap and must not raise.

Layers are synchronous and thread-safe (`call_sync` uses them from worker threads); anything slow
(a store round trip, a file write) happens off the caller's thread.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["OUTCOMES", "AttemptLayer", "Outcome"]

Outcome = Literal["success", "failure", "ignored", "timeout", "rejected", "cancelled"]
"""What one attempt came to.

- success: the function returned;
- failure: it raised an Exception the breaker counts (not ignored);
- ignored: it raised an exception the breaker ignores (neither success nor failure);
- timeout: the guard's attempt or total deadline cut it short (GuardTimeoutError);
- rejected: a layer after this one refused it (breaker, bulkhead, another layer);
- cancelled: the caller was cancelled (CancelledError, KeyboardInterrupt, SystemExit).
"""

OUTCOMES: tuple[Outcome, ...] = (
    "success", "failure", "ignored", "timeout", "rejected", "cancelled",
)  # fmt: skip


class AttemptLayer(Protocol):
    """One pluggable step around each attempt (see the module docstring)."""

    def admit(self, now: float, limit: float | None = None) -> float: ...

    def settle(
        self, outcome: Outcome, error: BaseException | None, duration: float, now: float
    ) -> None: ...
