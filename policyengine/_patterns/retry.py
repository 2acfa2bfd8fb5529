"""The retry layer's decisions, compiled once from `RetryOptions`: what to retry, how long to wait.

`RetryStrategy` answers three questions for the guard, without any config lookup per call:

- ``should_retry(exc)``: one precomputed predicate. Never for a rejection (`RejectedError`:
  breaker open, bulkhead full), `asyncio.CancelledError`, `KeyboardInterrupt`, `SystemExit` or
  `GeneratorExit`, whatever the lists say; never for a `never_retry` match (it wins); otherwise
  a `retry_on` match, or any `Exception` when `retry_on` is unset. A `GuardTimeoutError` from an
  *attempt* timeout is a `TimeoutError` and retried like one.
- ``delay(n, previous)``: the backoff and jitter of `_patterns.backoff`.
- ``wait_before(n, exc, previous, remaining)``: the sleep before retry n, Retry-After included,
  or None when that sleep cannot finish before the total deadline (then do not retry).

Retry-After (``respect_retry_after = true``): the hint is ``exc.retry_after`` (seconds; a number,
a numeric string or a `timedelta`) or else the ``Retry-After`` header of ``exc.response.headers``
(looked up case-insensitively in a dict, `httpx.Headers` or any mapping), in seconds or as an
HTTP date, taken relative to the wall clock and clamped at 0. A missing or unparseable hint is
ignored. The sleep is ``max(min(hint, max_retry_after), backoff delay)``: a hint longer than
``max_retry_after`` waits ``max_retry_after`` and then retries (it does not give up), and the
cap never shortens the backoff. Without ``max_retry_after`` a hint is capped at
`DEFAULT_MAX_RETRY_AFTER` (5 minutes), so a server's ``Retry-After: 1e300`` can neither
overflow a sleep nor hold a caller for ever; set ``max_retry_after`` to allow longer. Every
sleep (backoff included: an uncapped decorrelated jitter grows threefold per retry) is also
capped at `MAX_SLEEP` (365 days, the longest duration the format allows).

Deadline: a sleep that is not strictly shorter than the time left (``remaining``) is refused
(None): it could only end in a timeout, so the guard re-raises the last error at once instead.

`RetryBudget` (in `_patterns.budget`) limits retries to a share of recent calls; when it refuses,
the guard re-raises the original exception after `add_budget_note`.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, timedelta
from email.utils import parsedate_to_datetime

from .._config.matchers import Matcher, compile_matchers
from .._config.models import RetryOptions, resolve_matchers
from .._config.units import MAX_DURATION
from .._runtime.clock import Clock
from ..exceptions import RejectedError
from .backoff import Backoff, Jitter, jitter_bounds, make_jitter
from .budget import RetryBudget

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "MAX_SLEEP",
    "NEVER_RETRIED",
    "RetryBudget",
    "RetryStrategy",
    "add_budget_note",
]

DEFAULT_MAX_RETRY_AFTER = 300.0
"""The longest a Retry-After hint may make one retry wait when the policy sets no
``max_retry_after`` (seconds)."""
MAX_SLEEP = MAX_DURATION
"""No sleep between attempts is longer than this (seconds), whatever the hint or backoff."""

NEVER_RETRIED: tuple[type[BaseException], ...] = (
    RejectedError,
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
)
"""Exceptions no policy can make retryable."""

Predicate = Callable[[BaseException], bool]


def _compile_should_retry(options: RetryOptions) -> Predicate:
    """One predicate for never-retried types, `never_retry` (wins) and `retry_on`."""
    never_matchers = resolve_matchers(list(options.never_retry))
    retry_matchers = None if options.retry_on is None else resolve_matchers(list(options.retry_on))

    def plain(ms: list[Matcher]) -> bool:
        return all(m.status is None and not m.except_status for m in ms)

    if plain(never_matchers) and (retry_matchers is None or plain(retry_matchers)):
        # The common case: two isinstance checks against precomputed tuples.
        blocked = NEVER_RETRIED + tuple(m.type for m in never_matchers)
        allowed: tuple[type[BaseException], ...] = (
            (Exception,) if retry_matchers is None else tuple(m.type for m in retry_matchers)
        )
        if not allowed:
            return lambda exc: False

        def by_type(exc: BaseException) -> bool:
            return isinstance(exc, allowed) and not isinstance(exc, blocked)

        return by_type

    # Status filters: an isinstance pre-check keeps the per-matcher walk off most exceptions.
    never = compile_matchers(never_matchers)
    never_types = tuple(m.type for m in never_matchers)
    retry: Predicate = (
        (lambda exc: isinstance(exc, Exception))
        if retry_matchers is None
        else compile_matchers(retry_matchers)
    )

    def by_matchers(exc: BaseException) -> bool:
        if isinstance(exc, NEVER_RETRIED) or not retry(exc):
            return False
        return not (isinstance(exc, never_types) and never(exc))

    return by_matchers


def _seconds(value: object, wall_now: Callable[[], float]) -> float | None:
    """A Retry-After value as seconds from now (>= 0), or None if it is not one."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past the float range: as long a wait as any (capped)
            seconds = sys.float_info.max if value > 0 else 0.0
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            if when.tzinfo is None:  # "-0000": UTC, source unknown (RFC 5322)
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - wall_now()
    else:
        return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return seconds if seconds > 0.0 else 0.0


def _header(headers: object, name: str = "retry-after") -> object:
    """`headers[name]`, case-insensitive, for a dict, `httpx.Headers` or any mapping."""
    get = getattr(headers, "get", None)
    if callable(get):
        try:
            value = get("Retry-After")  # case-insensitive already for httpx/requests/aiohttp
        except Exception:
            value = None
        if value is not None:
            return value
    items = getattr(headers, "items", None)
    if not callable(items):
        return None
    try:
        for key, value in items():
            if isinstance(key, bytes):
                key = key.decode("latin-1")
            if isinstance(key, str) and key.lower() == name:
                return value
    except Exception:
        return None
    return None


class RetryStrategy:
    """Compiled once from RetryOptions; no config lookups per call.

    `rng` drives the jitter (seed it in tests); `wall_time` is the wall clock an HTTP-date
    Retry-After is measured against (``time.time`` by default). Backoff sleeps themselves are
    the guard's business, through `clock`.
    """

    __slots__ = (
        "_backoff",
        "_jitter",
        "_max_retry_after",
        "_respect",
        "_wall_time",
        "_worst",
        "clock",
        "max_attempts",
        "options",
        "should_retry",
    )

    should_retry: Predicate
    """``should_retry(exc)``: may this exception be retried? (a single precomputed predicate)"""

    def __init__(
        self,
        options: RetryOptions,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        wall_time: Callable[[], float] | None = None,
    ) -> None:
        self.options = options
        self.clock = clock
        self.max_attempts: int = options.max_attempts
        self.should_retry = _compile_should_retry(options)
        self._backoff = Backoff(
            options.backoff,
            options.initial_delay,
            options.max_delay,
            options.multiplier,
            options.max_attempts - 1,
        )
        self._jitter: Jitter = make_jitter(
            options.jitter,
            options.initial_delay,
            options.max_delay,
            rng if rng is not None else random.Random(),
        )
        self._respect = options.respect_retry_after
        self._max_retry_after = (
            options.max_retry_after
            if options.max_retry_after is not None
            else DEFAULT_MAX_RETRY_AFTER
        )
        self._wall_time = wall_time if wall_time is not None else time.time
        self._worst: float | None = None

    def delay(self, retry_number: int, previous: float) -> float:
        """The backoff sleep (jitter applied) before retry `retry_number` (1, 2, ...).

        `previous` is the previous sleep; only decorrelated jitter reads it, and for retry 1
        (or any value below `initial_delay`) it counts as `initial_delay`.
        """
        return self._jitter(self._backoff(retry_number), previous)

    def retry_after_hint(self, exc: BaseException) -> float | None:
        """Seconds the server asked to wait (>= 0), or None (not respected, absent, unparseable)."""
        if not self._respect:
            return None
        value = getattr(exc, "retry_after", None)
        if value is not None:
            seconds = _seconds(value, self._wall_time)
            if seconds is not None:
                return seconds
        headers = getattr(getattr(exc, "response", None), "headers", None)
        if headers is None:
            return None
        value = _header(headers)
        return None if value is None else _seconds(value, self._wall_time)

    def wait_before(
        self, retry_number: int, exc: BaseException, previous: float, remaining: float | None
    ) -> float | None:
        """The sleep before retry `retry_number`, or None: do not retry (it cannot fit).

        ``max(min(hint, max_retry_after or DEFAULT_MAX_RETRY_AFTER), delay)``, at most
        MAX_SLEEP; None when `remaining` (seconds left of the total deadline; None for no
        deadline) is not more than that sleep.
        """
        wait = self._jitter(self._backoff(retry_number), previous)
        if self._respect:
            hint = self.retry_after_hint(exc)
            if hint is not None:
                if hint > self._max_retry_after:
                    hint = self._max_retry_after
                if hint > wait:
                    wait = hint
        if not wait <= MAX_SLEEP:  # also a NaN from an overflowed jitter
            wait = MAX_SLEEP
        if remaining is not None and wait >= remaining:
            return None
        return wait

    def schedule(self) -> list[tuple[float, float]]:
        """Per retry n = 1 .. max_attempts - 1: (min, max) of the backoff sleep, no hint."""
        o = self.options
        backoff = self._backoff
        return [
            jitter_bounds(o.jitter, backoff(n), n, o.initial_delay, o.max_delay)
            for n in range(1, self.max_attempts)
        ]

    def worst_case_sleep(self) -> float:
        """The longest total of backoff sleeps a call can take (the schedule's max bounds)."""
        if self._worst is None:
            self._worst = math.fsum(hi for _, hi in self.schedule())
        return self._worst

    def __repr__(self) -> str:
        o = self.options
        return (
            f"RetryStrategy(max_attempts={self.max_attempts}, {self._backoff!r}, "
            f"jitter={o.jitter!r}, respect_retry_after={self._respect})"
        )


def add_budget_note(exc: BaseException, guard: str) -> None:
    """Note on `exc` that the retry budget of `guard` denied the retry (before re-raising it)."""
    exc.add_note(
        f"policyengine: retry denied by the retry budget of guard {guard!r} "
        "(too many retries among recent calls; see retry.budget)"
    )
