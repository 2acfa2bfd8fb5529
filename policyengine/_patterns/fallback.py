"""Fallback: a value or a handler used instead of raising, for the failure kinds listed in `on`.

Kinds: ``circuit_open`` (CircuitOpenError), ``bulkhead_full`` (BulkheadFullError), ``timeout``
(GuardTimeoutError), ``rate_limited`` (RateLimitedError), ``throttled`` (ThrottledError),
``retries_exhausted`` (the dependency's own error, when the retry policy
would have retried it but no attempt, time or budget was left). Errors the retry policy never
retries (``never_retry``, or outside ``retry_on``) are business answers and are raised as they are.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

from .._config.imports import resolve_handler
from .._config.models import FallbackOptions
from ..exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    GuardTimeoutError,
    RateLimitedError,
    ThrottledError,
)

__all__ = ["Fallback"]


class Fallback:
    """Compiled from FallbackOptions once; `kind_of(exc)` and `produce(exc)` per failure."""

    __slots__ = ("_handler", "_is_async", "_value", "kinds")

    def __init__(self, options: FallbackOptions) -> None:
        self.kinds = frozenset(options.on)
        self._value = options.value
        self._handler: Callable[..., Any] | None = (
            resolve_handler(options.handler) if options.handler is not None else None
        )
        self._is_async = self._handler is not None and inspect.iscoroutinefunction(self._handler)

    def kind_of(self, exc: BaseException, retryable: Callable[[BaseException], bool]) -> str | None:
        """The fallback kind `exc` is, if this fallback covers it."""
        if isinstance(exc, CircuitOpenError):
            kind = "circuit_open"
        elif isinstance(exc, BulkheadFullError):
            kind = "bulkhead_full"
        elif isinstance(exc, GuardTimeoutError):
            kind = "timeout"
        elif isinstance(exc, RateLimitedError | ThrottledError):
            kind = exc.reason
        elif isinstance(exc, Exception) and retryable(exc):
            kind = "retries_exhausted"
        else:
            return None
        return kind if kind in self.kinds else None

    async def produce(self, exc: BaseException) -> Any:
        if self._handler is None:
            return copy.deepcopy(self._value)
        result = self._handler(exc)
        if self._is_async or inspect.isawaitable(result):
            return await result
        return result

    def produce_sync(self, exc: BaseException) -> Any:
        if self._handler is None:
            return copy.deepcopy(self._value)
        if self._is_async:
            raise TypeError("an async fallback handler cannot serve call_sync")
        return self._handler(exc)
