"""Events a guard or engine emits to listeners, and the logging listener installed by default.

Event names: ``state_change``, ``rejected``, ``retry``, ``timeout``, ``fallback``,
``budget_exhausted``, ``would_reject``, ``would_retry`` and ``would_timeout`` (observe mode),
``hedge`` (an extra attempt started: data ``attempt``, ``delay``),
``reload``, ``reload_failed``, ``policy_removed``, ``state_backend_changed`` (INFO: a reload
applied a new ``[state]``; data ``from``/``to`` as ``status()["state"]`` says, url redacted,
``how`` ``"retuned"`` or ``"new backend"``, ``renewed`` the policies given a new shared breaker),
and, with a Redis ``[state]``, ``store_degraded`` (WARNING: the store failed; shared breakers
fall back to ``on_error``) and ``store_recovered`` (INFO); ``rate_limit_paused`` (a 429/503 with
Retry-After paused a rate limit: ``seconds``, ``key``), ``throttling`` and ``throttling_stopped``
(adaptive throttling started or stopped shedding: ``requests``, ``accepts``, ``probability``).

`log_listener` logs to the ``policyengine`` logger:

==================  =========  ==========================================================
``state_change``    WARNING    to ``open`` or ``forced_open``; INFO to ``half_open`` or
                               ``closed``
``reload``          INFO       a new set of policies is in force
``reload_failed``   ERROR      a bad edit was rejected; the policies in force are kept
``policy_removed``  WARNING    handles still using it keep its last version
per-call events     DEBUG      ``rejected``, ``retry``, ``timeout``, ``fallback``,
                               ``budget_exhausted``, ``would_*``: never above DEBUG, so a
                               storm of calls cannot flood the log (guards build
                               rejection events only when another listener is added)
other events        INFO       (WARNING when the name says ``error``, ``failed`` or
                               ``degraded``)
==================  =========  ==========================================================

A successful call logs nothing at any level. Every record carries structured fields (read them
with ``record.guard`` etc. or a JSON formatter): ``guard`` (the policy name, ``"*"`` for the
engine), ``event``, ``reason`` (why, or None), ``event_data`` (the event's whole data), and for
``state_change`` ``state`` and ``previous_state``, for ``reload`` ``version``, for
``reload_failed`` ``error`` and ``issues`` (file, line, path, message of each problem).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

__all__ = [
    "EVENT_NAMES",
    "BudgetExhausted",
    "Event",
    "EventName",
    "FallbackUsed",
    "Listener",
    "Listeners",
    "Payload",
    "Rejected",
    "RetryScheduled",
    "TimedOut",
    "WouldReject",
    "WouldRetry",
    "WouldTimeout",
    "log_listener",
]

logger = logging.getLogger("policyengine")

EventName = Literal[
    "state_change", "rejected", "retry", "timeout", "fallback", "budget_exhausted",
    "would_reject", "would_retry", "would_timeout", "hedge", "injected",
    "reload", "reload_failed", "policy_removed", "state_backend_changed",
    "store_degraded", "store_recovered", "fallback_unusable",
    "rate_limit_paused", "throttling", "throttling_stopped", "would_trip",
]  # fmt: skip
EVENT_NAMES: frozenset[str] = frozenset(get_args(EventName))


@dataclass(frozen=True, slots=True)
class Event:
    """Something a guard or engine did, as a listener receives it.

    `name` is one of `EventName`; `guard` the policy's name (``"*"`` for the engine); `data` the
    details as a plain dict (what the log listener and JSON formatters read). `detail` gives the
    per-call events' details as a typed, frozen dataclass (`Rejected`, `RetryScheduled`, ...).
    """

    name: str
    guard: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, guard: str, payload: Payload) -> Event:
        """The event of a typed payload: `Event.of("api", Rejected("circuit_open"))`."""
        data = {f.name: getattr(payload, f.name) for f in dataclasses.fields(payload)}
        return cls(payload.name, guard, data)

    @property
    def detail(self) -> Payload | None:
        """The typed details of a per-call event (None for the engine's events)."""
        kind = _PAYLOADS.get(self.name)
        if kind is None:
            return None
        names = {f.name for f in dataclasses.fields(kind)}
        return kind(**{k: v for k, v in self.data.items() if k in names})


@dataclass(frozen=True, slots=True)
class Rejected:
    """A call or retry refused: `reason` is a key of `metrics()["rejections"]`."""

    reason: str
    name: ClassVar[EventName] = "rejected"


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """Attempt `attempt` failed with `error` (a type name); the next starts after `delay` s."""

    attempt: int
    delay: float
    error: str
    name: ClassVar[EventName] = "retry"


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Attempt `attempt` ran past the `kind` ("total" or "attempt") deadline."""

    kind: str
    attempt: int
    name: ClassVar[EventName] = "timeout"


@dataclass(frozen=True, slots=True)
class FallbackUsed:
    """The fallback served instead of raising `error` (a type name)."""

    error: str
    name: ClassVar[EventName] = "fallback"


@dataclass(frozen=True, slots=True)
class BudgetExhausted:
    """The retry budget refused the retry after attempt `attempt`."""

    attempt: int
    name: ClassVar[EventName] = "budget_exhausted"


@dataclass(frozen=True, slots=True)
class WouldReject:
    """Observe mode: enforcement would have refused this call, for `reason`."""

    reason: str
    name: ClassVar[EventName] = "would_reject"


@dataclass(frozen=True, slots=True)
class WouldTimeout:
    """Observe mode: the call took `elapsed` s, past the `limit` enforcement would apply."""

    elapsed: float
    limit: float
    name: ClassVar[EventName] = "would_timeout"


@dataclass(frozen=True, slots=True)
class WouldRetry:
    """Observe mode: enforcement would have retried after `error` (a type name)."""

    error: str
    name: ClassVar[EventName] = "would_retry"


Payload = (
    Rejected
    | RetryScheduled
    | TimedOut
    | FallbackUsed
    | BudgetExhausted
    | WouldReject
    | WouldTimeout
    | WouldRetry
)
_KINDS: tuple[type[Payload], ...] = (
    Rejected, RetryScheduled, TimedOut, FallbackUsed, BudgetExhausted,
    WouldReject, WouldTimeout, WouldRetry,
)  # fmt: skip
_PAYLOADS: dict[str, type[Payload]] = {kind.name: kind for kind in _KINDS}


Listener = Callable[[Event], None]

_PER_CALL = frozenset(
    {
        "rejected",
        "retry",
        "timeout",
        "fallback",
        "budget_exhausted",
        "would_reject",
        "would_retry",
        "would_timeout",
        "hedge",
        "injected",
        "would_trip",
    }
)
_LEVELS = {
    "reload": logging.INFO,
    "reload_failed": logging.ERROR,
    "fallback_unusable": logging.ERROR,
    "policy_removed": logging.WARNING,
    "state_backend_changed": logging.INFO,
}


def _level(event: Event) -> int:
    name = event.name
    if name in _PER_CALL:
        return logging.DEBUG
    if name == "state_change":
        to = event.data.get("to")
        return logging.WARNING if to in ("open", "forced_open") else logging.INFO
    level = _LEVELS.get(name)
    if level is not None:
        return level
    if any(word in name for word in ("error", "failed", "degraded")):
        return logging.WARNING
    return logging.INFO


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return str(seconds)
    from .._config.units import format_duration

    return format_duration(round(float(seconds), 3))


def _store(state: dict[str, Any]) -> str:
    """A `[state]` as `status()["state"]` names it, in a few words (the url is redacted)."""
    if state.get("backend") != "redis":
        return "memory"
    return (
        f"redis {state.get('url')} prefix={state.get('prefix')} "
        f"on_error={state.get('on_error')} timeout={_duration(state.get('timeout'))}"
    )


def _message(event: Event) -> tuple[str, tuple[object, ...], dict[str, Any]]:
    """The format, its arguments and the event-specific `extra` fields."""
    d, g = event.data, event.guard
    name = event.name
    if name == "state_change":
        to, before = d.get("to"), d.get("from")
        fmt = "guard %r: breaker %s -> %s (%s)"
        args: tuple[object, ...] = (g, before, to, d.get("reason"))
        if isinstance(d.get("open_for"), int | float):
            fmt += ", open for %s"
            args += (_duration(d["open_for"]),)
        return fmt, args, {"state": to, "previous_state": before}
    if name == "reload":
        return "policies reloaded: version %s", (d.get("version"),), {"version": d.get("version")}
    if name == "reload_failed":
        extra = {"error": d.get("error"), "issues": d.get("issues", [])}
        return (
            "policy reload rejected, the policies in force are kept: %s",
            (d.get("error"),),
            extra,
        )
    if name == "policy_removed":
        return (
            "policy %r removed by a reload; handles still using it keep its last version",
            (g,),
            {},
        )
    if name == "state_backend_changed":
        before, after = d.get("from") or {}, d.get("to") or {}
        renewed = d.get("renewed") or []
        return (
            "state backend %s by a reload: %s -> %s%s",
            (
                "retuned" if d.get("how") == "retuned" else "replaced",
                _store(before),
                _store(after),
                f"; new shared breakers for {', '.join(renewed)}" if renewed else "",
            ),
            {},
        )
    if name == "retry":
        return (
            "guard %r: retry %s after %s, waiting %s",
            (g, d.get("attempt"), d.get("error"), _duration(d.get("delay", 0.0))),
            {},
        )
    details = " ".join(f"{k}={v}" for k, v in d.items())
    return "guard %r: %s %s", (g, name, details), {}


def log_listener(event: Event) -> None:
    """Log state changes and reloads; per-call events at DEBUG only; never a successful call."""
    level = _level(event)
    if not logger.isEnabledFor(level):
        return
    fmt, args, extra = _message(event)
    data = event.data
    reason = data.get("reason")
    if reason is None and event.name == "reload_failed":
        reason = "invalid_policy"
    elif reason is None:
        reason = data.get("error")
    logger.log(
        level,
        fmt,
        *args,
        extra={
            "guard": event.guard,
            "event": event.name,
            "reason": reason,
            "event_data": dict(data),
            **extra,
        },
    )


class Listeners:
    """A list of listeners; a listener that raises is logged and never breaks a call.

    `hot` is False while only the default log listener is installed: guards then skip building
    events for rejections, which the log listener ignores anyway. `hold()` ... `release()` defers
    the events one thread emits (a reload's breaker transitions) so that the cause (`reload`)
    can be told first.
    """

    __slots__ = ("_held", "_holder", "_items", "hot")

    def __init__(self) -> None:
        self._items: tuple[Listener, ...] = (log_listener,)
        self.hot = False
        self._held: list[Event] | None = None
        self._holder = 0

    def add(self, listener: Listener) -> None:
        self._items = (*self._items, listener)
        self.hot = True

    def remove(self, listener: Listener) -> None:
        """Remove `listener` (the first equal one: `obj.method` is a new bound method object at
        each access, equal to, not identical with, the one that was added)."""
        items = list(self._items)
        for i, item in enumerate(items):
            if item == listener:
                del items[i]
                break
        self._items = tuple(items)
        self.hot = any(x is not log_listener for x in self._items)

    def hold(self) -> None:
        """Defer this thread's events until `release` (callers serialise holds)."""
        self._holder = threading.get_ident()
        self._held = []

    def release(self) -> list[Event]:
        """Stop deferring; the deferred events, for the caller to emit in its own order."""
        held, self._held = self._held or [], None
        return held

    def __call__(self, event: Event) -> None:
        held = self._held
        if held is not None and self._holder == threading.get_ident():
            held.append(event)
            return
        for listener in self._items:
            try:
                listener(event)
            except Exception:
                logger.exception("policyengine listener %r failed on %s", listener, event.name)
