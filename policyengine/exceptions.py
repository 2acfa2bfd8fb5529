"""Every exception policyengine raises.

Hierarchy::

    Exception
    ├── PolicyEngineError                 base of all our own errors
    │   ├── PolicyValidationError (ValueError)   a policy file is invalid; `.errors` lists all
    │   ├── UnknownGuardError (LookupError)      no policy of that name; lists the known ones
    │   └── RejectedError                        the guard refused the call without running it
    │       ├── CircuitOpenError                 breaker open (`.guard`, `.retry_after`)
    │       ├── BulkheadFullError                no slot and no room (or time) to wait
    │       ├── RateLimitedError                 no token in time (`.retry_after`)
    │       └── ThrottledError                   adaptive throttling shed the attempt
    └── TimeoutError
        └── GuardTimeoutError (PolicyEngineError)  a total or attempt deadline of the guard passed

A dependency's own exception is never wrapped: after the last attempt the original is re-raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "GuardTimeoutError",
    "PolicyEngineError",
    "PolicyIssue",
    "PolicyValidationError",
    "RateLimitedError",
    "RejectedError",
    "ThrottledError",
    "UnknownGuardError",
]


class PolicyEngineError(Exception):
    """Base class of every error raised by policyengine itself."""


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem found in a policy file.

    `path` is the dotted key path (``policies.payments.retry.max_attempts``); `line` is 1-based,
    or None when the problem belongs to no single line (a missing file, a cycle).
    """

    file: str
    line: int | None
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }


class PolicyValidationError(PolicyEngineError, ValueError):
    """A policy file (or set of files) is invalid. `.errors` lists every problem at once."""

    def __init__(self, errors: list[PolicyIssue]) -> None:
        self.errors = list(errors)
        n = len(self.errors)
        head = f"{n} problem{'s' if n != 1 else ''} in policy files"
        super().__init__(head + ":\n" + "\n".join(f"  {e}" for e in self.errors))


class UnknownGuardError(PolicyEngineError, LookupError):
    """No policy of that name is loaded."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listed = ", ".join(self.known) if self.known else "(none)"
        super().__init__(f"no policy named {name!r}; known policies: {listed}")

    def __str__(self) -> str:  # LookupError would repr() a single argument
        return str(self.args[0])


class RejectedError(PolicyEngineError):
    """The guard refused the call without running it. Never retried.

    Rejections are on the hot path of an outage, so the message is only formatted when read.
    """

    reason: str = "rejected"

    def __init__(self, guard: str) -> None:
        super().__init__(guard)
        self.guard = guard

    def __str__(self) -> str:
        return f"guard {self.guard!r} rejected the call"


class CircuitOpenError(RejectedError):
    """The breaker is open (or half-open with every probe slot taken).

    `CircuitOpenError(guard, retry_after, state="open")`. Raised on every call of an outage, so it
    is built by `Exception`'s own C constructor: the fields live in `args` and are read back
    through properties.
    """

    reason = "circuit_open"

    if TYPE_CHECKING:

        def __init__(self, guard: str, retry_after: float, state: str = "open") -> None: ...

    else:
        __init__ = Exception.__init__

    @property
    def guard(self) -> str:
        """The guard's name."""
        return str(self.args[0])

    @guard.setter
    def guard(self, value: str) -> None:
        self.args = (value, *self.args[1:])

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker lets a call through again (0.0 if it may already)."""
        seconds = float(self.args[1]) if len(self.args) > 1 else 0.0
        return seconds if seconds > 0.0 else 0.0

    @property
    def state(self) -> str:
        """``"open"``, ``"half_open"`` (every probe slot taken) or ``"forced_open"``."""
        return str(self.args[2]) if len(self.args) > 2 else "open"

    def __str__(self) -> str:
        return f"circuit {self.guard!r} is {self.state}; retry after {self.retry_after:.3f}s"


class BulkheadFullError(RejectedError):
    """Every slot of the bulkhead is busy and its queue is full (or the wait ran out)."""

    reason = "bulkhead_full"

    def __init__(self, guard: str, max_concurrent: int, max_queue: int) -> None:
        super().__init__(guard)
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue

    def __str__(self) -> str:
        return (
            f"bulkhead {self.guard!r} is full "
            f"({self.max_concurrent} running, queue of {self.max_queue})"
        )


class RateLimitedError(RejectedError):
    """No rate-limit token within `max_wait` (or the deadline), or the limiter is paused.

    `RateLimitedError(guard, retry_after)`: `retry_after` is the seconds until a token would be
    free for a caller that does not wait. Raised on every refused call of a busy service, so it
    is built by `Exception`'s own C constructor, like `CircuitOpenError`.
    """

    reason = "rate_limited"

    if TYPE_CHECKING:

        def __init__(self, guard: str, retry_after: float) -> None: ...

    else:
        __init__ = Exception.__init__

    @property
    def guard(self) -> str:
        """The guard's name."""
        return str(self.args[0])

    @guard.setter
    def guard(self, value: str) -> None:
        self.args = (value, *self.args[1:])

    @property
    def retry_after(self) -> float:
        """Seconds until a token is free (0.0 if one may already be)."""
        seconds = float(self.args[1]) if len(self.args) > 1 else 0.0
        return seconds if seconds > 0.0 else 0.0

    def __str__(self) -> str:
        return f"guard {self.guard!r} is rate limited; retry after {self.retry_after:.3f}s"


class ThrottledError(RejectedError):
    """Client-side adaptive throttling shed the attempt: the dependency has been refusing work.

    `ThrottledError(guard, probability)`: `probability` is the rejection probability in force.
    """

    reason = "throttled"

    if TYPE_CHECKING:

        def __init__(self, guard: str, probability: float) -> None: ...

    else:
        __init__ = Exception.__init__

    @property
    def guard(self) -> str:
        """The guard's name."""
        return str(self.args[0])

    @guard.setter
    def guard(self, value: str) -> None:
        self.args = (value, *self.args[1:])

    @property
    def probability(self) -> float:
        """The share of attempts being rejected when this one was."""
        return float(self.args[1]) if len(self.args) > 1 else 0.0

    def __str__(self) -> str:
        return (
            f"guard {self.guard!r} throttled the call (the dependency is refusing work; "
            f"rejecting {self.probability:.0%} of attempts)"
        )


class GuardTimeoutError(PolicyEngineError, TimeoutError):
    """A deadline of the guard passed: `kind` is ``"total"`` or ``"attempt"``."""

    def __init__(self, guard: str, kind: str, seconds: float) -> None:
        self.guard = guard
        self.kind = kind
        self.seconds = seconds
        super().__init__(f"guard {guard!r}: {kind} timeout of {seconds:g}s exceeded")
