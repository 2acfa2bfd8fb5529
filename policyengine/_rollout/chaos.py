"""Chaos drills that end themselves: injected faults and delays with a fixed end.

Why: a drill left in a policy file by mistake must not keep hurting production. Every drill has
an end, `until` (an absolute time with a zone) or `for` (a duration from when the edit is in
force), and stops there without a reload. The end is turned into engine-clock time when the
policy is compiled (from the wall clock once), so a `FakeClock` drives it in tests.

What is injected passes through the guard's layers as if the dependency produced it: a fault is
raised where the function would have been called (the breaker counts it, retries run, fallbacks
serve), a delay is slept before the function is called (attempt timeouts and slow-call rules see
it). The lifecycle calls `Chaos.draw(now, u1, u2)` at each attempt; metrics and events count what
it injected as `injected`.

`validate` warns about any drill, and errors on one whose `until` has passed or lies more than
24 h ahead (`--strict`: any drill is an error); see `drill_issue`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import inspect
import random as _random
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator

from .._config.imports import import_object
from .._config.matcher_models import FieldError, FrozenModel
from .._config.units import Duration, Ratio, format_duration

__all__ = [
    "MAX_AHEAD",
    "Chaos",
    "ChaosOptions",
    "FaultOptions",
    "LatencyOptions",
    "drill_issue",
    "make_chaos",
]

MAX_AHEAD = 24 * 3600.0
"""A drill may end at most this far ahead: a drill is an hour's work, not a standing setting."""


def _exception_type(path: str) -> type[BaseException]:
    obj = import_object(path)
    if not (isinstance(obj, type) and issubclass(obj, Exception)):
        raise ValueError(f"{path!r} is not an exception type (a subclass of Exception)")
    return obj


class FaultOptions(FrozenModel):
    """Raise `error` instead of calling the function, for a share `rate` of attempts."""

    rate: Ratio = Field(description="Share of attempts that fail.")
    error: str = Field(
        default="ConnectionError",
        description='The exception type raised, a builtin or "package.module.Name".',
    )

    @field_validator("error")
    @classmethod
    def _importable(cls, value: str) -> str:
        _exception_type(value)
        return value


class LatencyOptions(FrozenModel):
    """Sleep `delay` before calling the function, for a share `rate` of attempts."""

    rate: Ratio = Field(description="Share of attempts delayed.")
    delay: Duration = Field(description='The added delay, e.g. "500ms".')


class ChaosOptions(FrozenModel):
    """A drill: injected faults and delays until a fixed end."""

    until: AwareDatetime | None = Field(
        default=None, description='Absolute end with a zone, e.g. "2026-12-04T12:00:00Z".'
    )
    for_: Duration | None = Field(
        default=None, alias="for", description="Or: how long from when the edit is in force."
    )
    fault: FaultOptions | None = None
    latency: LatencyOptions | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("until", mode="before")
    @classmethod
    def _zoned(cls, value: object) -> object:
        when = value
        if isinstance(value, str):
            try:
                when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return value  # pydantic says what is wrong with it
        if isinstance(when, _dt.datetime) and when.tzinfo is None:
            raise ValueError(
                "`until` needs a zone, or the drill would end at a different time on every "
                'machine: write it in UTC with a "Z" ("2026-12-04T12:00:00Z") or with an '
                'offset ("2026-12-04T13:00:00+01:00")'
            )
        return value

    @model_validator(mode="after")
    def _one_end(self) -> ChaosOptions:
        if (self.until is None) == (self.for_ is None):
            raise ValueError(
                'a drill needs an end: `until = "2026-12-04T12:00:00Z"` or `for = "15m"` '
                "(one of them)"
            )
        if self.for_ is not None and not 0 < self.for_ <= MAX_AHEAD:
            raise FieldError("for", "chaos.for must be greater than 0s and at most 24h")
        if self.fault is None and self.latency is None:
            raise ValueError("a drill injects something: add `fault = {...}` or `latency = {...}`")
        return self


def drill_issue(
    options: ChaosOptions,
    strict: bool,
    now: _dt.datetime | None = None,
    *,
    validating: bool = True,
) -> tuple[Literal["error", "warning"], str, str]:
    """What a load says about a drill: (severity, key, message).

    A drill that has ended is an error for `validate` (CI should not merge a dead drill), but
    only a warning for a running service's load or reload: it injects nothing, and an ended
    drill left in the file must not stop the next edit (or a restart) from applying."""
    now = now or _dt.datetime.now(_dt.UTC)
    if options.until is not None:
        ahead = (options.until - now).total_seconds()
        when = options.until.isoformat().replace("+00:00", "Z")
        if ahead <= 0:
            severity: Literal["error", "warning"] = "error" if validating or strict else "warning"
            return severity, "until", f"this drill ended at {when}: remove the chaos section"
        if ahead > MAX_AHEAD:
            return (
                "error",
                "until",
                f"this drill ends {format_duration(round(ahead))} from now ({when}): a drill may "
                "end at most 24h ahead; set a nearer `until` or use `for`",
            )
        end = f"ends at {when}"
    else:
        end = f"runs for {format_duration(options.for_ or 0.0)} from when it is loaded"
    parts = []
    if options.fault is not None:
        parts.append(f"{options.fault.error} on {options.fault.rate:.0%} of attempts")
    if options.latency is not None:
        delay = format_duration(options.latency.delay)
        parts.append(f"+{delay} on {options.latency.rate:.0%} of attempts")
    message = f"a chaos drill is in this file ({', '.join(parts)}); it {end}"
    return ("error" if strict else "warning"), "", message


class Chaos:
    """The runtime of one drill; thread-safe (immutable)."""

    __slots__ = (
        "_error", "delay", "end", "fault_rate", "injected_delays", "injected_faults",
        "latency_rate", "message", "options",
    )  # fmt: skip

    def __init__(
        self, options: ChaosOptions, now: float, *, wall: Callable[[], float] = time.time
    ) -> None:
        self.options = options
        if options.until is not None:
            self.end = now + (options.until.timestamp() - wall())
        else:
            self.end = now + (options.for_ or 0.0)
        fault, latency = options.fault, options.latency
        self.fault_rate = fault.rate if fault is not None else 0.0
        self._error = _exception_type(fault.error) if fault is not None else None
        self.latency_rate = latency.rate if latency is not None else 0.0
        self.delay = latency.delay if latency is not None else 0.0
        self.message = "injected by a chaos drill"
        # what it injected (metrics and events count it as `injected`); a lost increment
        # under a race between threads is a miscount of one
        self.injected_faults = 0
        self.injected_delays = 0

    def active(self, now: float) -> bool:
        return now < self.end

    def draw(self, now: float, u1: float, u2: float) -> BaseException | float | None:
        """For one attempt, with two uniform draws: None (nothing), an exception to raise as if
        the dependency raised it, or seconds to sleep before calling the dependency."""
        if now >= self.end:
            return None
        if u1 < self.fault_rate and self._error is not None:
            error = self._error(self.message)
            # events and metrics count what a drill injected apart: the lifecycle reads this
            error.injected = True  # type: ignore[attr-defined]
            self.injected_faults += 1
            return error
        if u2 < self.latency_rate:
            self.injected_delays += 1
            return self.delay
        return None

    def wrap(
        self,
        fn: Callable[..., Any],
        clock: Any,
        random: Callable[[], float] = _random.random,
        sync: bool | None = None,
        told: Callable[[str], None] | None = None,
    ) -> Callable[..., Any]:
        """`fn` with this drill applied to each call, on `clock`: a blocking function (`sync`,
        by default unless `fn` is a coroutine function) sleeps with `clock.sleep_sync`."""
        if sync is False or (sync is None and inspect.iscoroutinefunction(fn)):

            @functools.wraps(fn)
            async def drilled(*args: Any, **kwargs: Any) -> Any:
                what = self.draw(clock.now(), random(), random())
                if what is not None and told is not None:
                    told("fault" if isinstance(what, BaseException) else "delay")
                if isinstance(what, BaseException):
                    raise what
                if what:
                    await clock.sleep(what)
                return await fn(*args, **kwargs)  # (whatever fn returns is awaited)

            return drilled

        @functools.wraps(fn)
        def drilled_sync(*args: Any, **kwargs: Any) -> Any:
            what = self.draw(clock.now(), random(), random())
            if what is not None and told is not None:
                told("fault" if isinstance(what, BaseException) else "delay")
            if isinstance(what, BaseException):
                raise what
            if what:
                clock.sleep_sync(what)
            return fn(*args, **kwargs)

        return drilled_sync


def make_chaos(
    options: ChaosOptions | None, now: float, previous: Chaos | None = None
) -> Chaos | None:
    """The drill of a policy being compiled; None without one (no cost). A `for` drill whose
    settings did not change keeps its end across reloads (it does not start again); a changed
    drill starts anew."""
    if options is None:
        return None
    if previous is not None and previous.options == options:
        return previous
    return Chaos(options, now)
