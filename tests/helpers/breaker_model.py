"""A reference model of the circuit breaker: the rules of POLICY-FORMAT.md in plain Python.

Written from the contract and the `_patterns.breaker` module docstring, not from the implementation:
no windows in buckets, no permits packed in integers, no lock, no fast paths. Each rule is a
few lines, so a disagreement with the real `Breaker` is easy to judge. `test_breaker_model`
drives both with random sequences and compares them after every step.

The model covers count windows (time windows are checked against a naive model in
`test_breaker`). Durations are seconds; `now` is passed in by the caller.

Exceptions the model knows, by kind (the tests raise instances of the builtin types named):

- ``"failure"``: ``ConnectionError`` (recorded when `record` is set: it lists ``OSError``)
- ``"ignored"``: ``KeyError`` (matched by ``ignore = ["LookupError"]`` when set)
- ``"other"``: ``ValueError`` (a failure, or a success when `record` is set)
- ``"timeout"``: ``GuardTimeoutError`` (always a failure, whatever `record` says)
- ``"base"``: ``KeyboardInterrupt`` (never counted: a release)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from policyengine.exceptions import GuardTimeoutError

__all__ = [
    "EXCEPTIONS",
    "BreakerModel",
    "Config",
    "Rejection",
    "Token",
]

EXCEPTIONS: dict[str, type[BaseException]] = {
    "failure": ConnectionError,
    "ignored": KeyError,
    "other": ValueError,
    "timeout": GuardTimeoutError,
    "base": KeyboardInterrupt,
}


def public(state: str) -> str:
    """The state's name as the breaker reports it: a forced close reads "closed"."""
    return "closed" if state == "forced_closed" else state


def make_exception(kind: str) -> BaseException:
    if kind == "timeout":
        return GuardTimeoutError("svc", "attempt", 1.0)
    return EXCEPTIONS[kind]()


@dataclass(frozen=True)
class Config:
    """The options of one breaker, as the contract defines them (from a plain dict)."""

    trip_after: int | None  # consecutive failures; None: no such rule
    failure_rate: float | None
    slow_rate: float | None
    slow_after: float  # math.inf without a slow rule
    window_size: int | None  # None: no rate rule, no window
    minimum_calls: int
    open_duration: float
    backoff_multiplier: float
    backoff_max: float
    half_open_calls: int
    max_wait: float | None
    ignore_lookup: bool  # ignore = ["LookupError"]
    record_os: bool  # record = ["OSError"]: other exceptions count as successes
    force: str | None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """`raw` uses seconds for durations (the test turns them into "Ns" strings)."""
        failure_rate = raw.get("failure_rate")
        slow_rate = raw.get("slow_call_rate")
        has_rate = failure_rate is not None or slow_rate is not None
        trip_after = raw.get("consecutive_failures")
        if trip_after is None and not has_rate:
            trip_after = 5  # "the classic rule", the default when no rate rule is set
        open_duration = float(raw.get("open_duration", 30.0))
        backoff = raw.get("open_backoff")
        return cls(
            trip_after=trip_after,
            failure_rate=failure_rate,
            slow_rate=slow_rate,
            slow_after=float(raw.get("slow_call_duration") or math.inf),
            window_size=int(raw.get("window_size", 100)) if has_rate else None,
            minimum_calls=int(raw.get("minimum_calls", 20)),
            open_duration=open_duration,
            backoff_multiplier=1.0 if backoff is None else float(backoff["multiplier"]),
            backoff_max=open_duration if backoff is None else float(backoff["max"]),
            half_open_calls=int(raw.get("half_open_calls", 1)),
            max_wait=raw.get("half_open_max_wait"),
            ignore_lookup=bool(raw.get("ignore")),
            record_os=raw.get("record") is not None,
            force=raw.get("force"),
        )


@dataclass(frozen=True)
class Token:
    """What the model hands out for an admitted call: a closed call of a generation, a probe,
    or an observe-mode call enforcement would have rejected (kind ``"observed"``)."""

    kind: str  # "closed" | "probe" | "observed"
    number: int  # the generation (closed) or the probe id (probe)


@dataclass(frozen=True)
class Rejection:
    state: str
    retry_after: float


class BreakerModel:
    """The breaker's rules, one small method per rule."""

    def __init__(self, raw: dict[str, Any], now: float, *, observe: bool = False) -> None:
        self.cfg = Config.from_dict(raw)
        self.observe = observe
        self.state = "closed"
        self.generation = 0
        self.consecutive = 0
        self.window: deque[tuple[bool, bool]] | None = self._new_window()
        self.open_until = 0.0
        self.reopens = 0
        self.probes: dict[int, float] = {}  # probe id -> start time
        self.next_probe = 0
        self.probe_successes = 0
        self.probe_slow = 0
        self.options_since = now  # when the options in force took effect
        # Every transition, as (from, to) of the public names: one `state_change` event each.
        self.transitions: list[tuple[str, str]] = []
        if self.cfg.force is not None:
            self._enter("forced_open" if self.cfg.force == "open" else "forced_closed")
            self.transitions.clear()  # a breaker built forced emits nothing

    # -- helpers ---------------------------------------------------------------------------

    def _new_window(self) -> deque[tuple[bool, bool]] | None:
        size = self.cfg.window_size
        return None if size is None else deque(maxlen=size)

    def _shape(self) -> int | None:
        return self.cfg.window_size

    def _enter(self, state: str) -> None:
        """Every transition: a new generation, no probes, and an event unless the public name
        stays the same (closed <-> forced closed both read "closed")."""
        before, after = (public(s) for s in (self.state, state))
        if before != after:
            self.transitions.append((before, after))
        self.state = state
        self.generation += 1
        self.probes.clear()
        self.probe_successes = 0
        self.probe_slow = 0

    def _reset_counts(self) -> None:
        self.reopens = 0
        self.consecutive = 0
        if self.window is not None:
            self.window.clear()

    def _open_for(self) -> float:
        base = self.cfg.open_duration
        if self.reopens == 0 or self.cfg.backoff_multiplier == 1.0:
            return base
        try:
            grown = base * self.cfg.backoff_multiplier**self.reopens
        except OverflowError:
            grown = math.inf
        return max(base, min(self.cfg.backoff_max, grown))

    def _open(self, now: float) -> None:
        self.open_until = now + self._open_for()
        self._enter("open")

    def _trip(self, now: float) -> None:
        self.reopens = 0
        self._open(now)

    def _reopen(self, now: float) -> None:
        self.reopens += 1
        self._open(now)

    def _close(self) -> None:
        self._reset_counts()
        self._enter("closed")

    def _valid_closed(self, token: Token) -> bool:
        return (
            token.kind == "closed"
            and self.state in ("closed", "forced_closed")
            and token.number == self.generation
        )

    def _slow(self, duration: float) -> bool:
        return duration >= self.cfg.slow_after

    # -- the lazy, clock-driven rules --------------------------------------------------------

    def _hung_at(self) -> float | None:
        """When the half-open period ends for a hung probe: max_wait after the oldest probe
        started, but not before the options that set this max_wait took effect."""
        if self.state != "half_open" or self.cfg.max_wait is None or not self.probes:
            return None
        return max(min(self.probes.values()) + self.cfg.max_wait, self.options_since)

    def refresh(self, now: float) -> bool:
        """open -> half_open once open_duration has passed; a hung probe re-opens.

        Applied when anything looks at the clock: an admission, a read of the state, a
        probe's outcome or release, a reload. Every transition due by `now` happens, one after
        the other, each at the time it fell due (not at `now`): a hung probe re-opens at
        `_hung_at`, and if that open period is over by `now` too, half_open follows.
        True if a transition happened.
        """
        changed = False
        while True:
            hung_at = self._hung_at()
            if self.state == "open" and now >= self.open_until:
                self._enter("half_open")
            elif hung_at is not None and now >= hung_at:
                self._reopen(hung_at)
            else:
                return changed
            changed = True

    # -- admission ---------------------------------------------------------------------------

    def acquire(self, now: float) -> Token | Rejection:
        if self.state in ("closed", "forced_closed"):
            return Token("closed", self.generation)
        if self.state == "forced_open":
            return self._reject("forced_open", self.cfg.open_duration)
        self.refresh(now)
        if self.state == "half_open":
            if len(self.probes) + self.probe_successes < self.cfg.half_open_calls:
                self.next_probe += 1
                self.probes[self.next_probe] = now
                return Token("probe", self.next_probe)
            return self._reject("half_open", self._probe_wait_left(now))
        return self._reject("open", self.open_until - now)

    def _reject(self, state: str, retry_after: float) -> Token | Rejection:
        if self.observe:
            return Token("observed", -1)
        return Rejection(state, max(retry_after, 0.0))

    def _probe_wait_left(self, now: float) -> float:
        """Until the oldest probe counts as hung; without a max wait, until it has run one
        open_duration, then one open_duration again (never 0: no call can go)."""
        if not self.probes:
            return 0.0
        if self.cfg.max_wait is not None:
            return min(self.probes.values()) + self.cfg.max_wait - now
        left = min(self.probes.values()) + self.cfg.open_duration - now
        return left if left > 0 else self.cfg.open_duration

    # -- outcomes ----------------------------------------------------------------------------

    def success(self, token: Token, duration: float, now: float) -> None:
        slow = self._slow(duration)
        if self._valid_closed(token):
            self.consecutive = 0
            if self.window is not None:
                self.window.append((False, slow))
                self._judge(now)
        elif token.kind == "probe" and not self.refresh(now) and token.number in self.probes:
            del self.probes[token.number]
            self.probe_successes += 1
            self.probe_slow += slow
            if self.probe_successes >= self.cfg.half_open_calls:
                self._settle(now)

    def failure(self, token: Token, kind: str, duration: float, now: float) -> None:
        """An exception of `kind` (see the module docstring) ended the call."""
        if kind == "base" or (kind == "ignored" and self.cfg.ignore_lookup):
            self.release(token, now)
            return
        recorded = kind in ("failure", "timeout") or not self.cfg.record_os
        if not recorded:
            self.success(token, duration, now)
            return
        slow = self._slow(duration)
        if self._valid_closed(token):
            self.consecutive += 1
            if self.window is not None:
                self.window.append((True, slow))
            if self.state == "forced_closed":
                return
            if self.cfg.trip_after is not None and self.consecutive >= self.cfg.trip_after:
                self._trip(now)
            else:
                self._judge(now)
        elif token.kind == "probe" and not self.refresh(now) and token.number in self.probes:
            del self.probes[token.number]
            self._reopen(now)

    def release(self, token: Token, now: float) -> None:
        """A cancelled call (or an ignored error): a probe gives its permit back."""
        if token.kind == "probe" and not self.refresh(now):
            self.probes.pop(token.number, None)

    def _judge(self, now: float) -> None:
        window = self.window
        if window is None or self.state != "closed" or len(window) < self.cfg.minimum_calls:
            return
        calls = len(window)
        failure_ratio = sum(f for f, _ in window) / calls
        slow_ratio = sum(s for _, s in window) / calls
        fr, sr = self.cfg.failure_rate, self.cfg.slow_rate
        if (fr is not None and failure_ratio >= fr) or (sr is not None and slow_ratio >= sr):
            self._trip(now)

    def _settle(self, now: float) -> None:
        """All K probes succeeded: close, unless they were too slow."""
        rate = self.cfg.slow_rate
        if rate is not None and self.probe_slow / max(self.probe_successes, 1) >= rate:
            self._reopen(now)
        else:
            self._close()

    # -- reloads -----------------------------------------------------------------------------

    def reconfigure(self, raw: dict[str, Any], now: float) -> str:
        self.refresh(now)  # what fell due under the old options happens first
        old_force, old_shape = self.cfg.force, self._shape()
        self.cfg = Config.from_dict(raw)
        self.options_since = now
        result = "kept"
        if self._shape() != old_shape:
            self.window = self._new_window()
            result = "window_reset"
        if self.cfg.force != old_force:
            if self.cfg.force == "open":
                self._enter("forced_open")
            else:
                self._reset_counts()
                self._enter("forced_closed" if self.cfg.force == "closed" else "closed")
        elif self.state == "half_open" and self.probe_successes >= self.cfg.half_open_calls:
            self._settle(now)
        return result

    # -- reading -----------------------------------------------------------------------------

    def public_state(self, now: float) -> str:
        self.refresh(now)
        return public(self.state)

    def retry_after(self, now: float) -> float:
        if self.state in ("closed", "forced_closed"):
            return 0.0
        if self.state == "forced_open":
            return self.cfg.open_duration
        self.refresh(now)
        if self.state == "open":
            return max(self.open_until - now, 0.0)
        full = len(self.probes) + self.probe_successes >= self.cfg.half_open_calls
        if self.state == "half_open" and full:
            return max(self._probe_wait_left(now), 0.0)
        return 0.0

    def failure_rate(self) -> float | None:
        window = self.window
        if window is None or len(window) < self.cfg.minimum_calls:
            return None
        return sum(f for f, _ in window) / len(window)

    def snapshot(self, now: float) -> dict[str, object]:
        """The same keys as `Breaker.snapshot()` (the ones the contract gives a meaning)."""
        state = self.public_state(now)
        window = self.window if self.window is not None else ()
        return {
            "state": state,
            "generation": self.generation,
            "consecutive_failures": self.consecutive,
            "window_calls": len(window),
            "window_failures": sum(f for f, _ in window),
            "window_slow": sum(s for _, s in window),
            "open_until": self.open_until if self.state == "open" else None,
            "reopens": self.reopens,
            "probes_in_flight": len(self.probes),
            "probe_successes": self.probe_successes,
        }
