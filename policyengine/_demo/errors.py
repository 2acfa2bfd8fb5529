"""Exceptions and fallback handlers for the example policies and the demo.

`policies/policies.toml` names these types, so the example loads on any machine with the package
installed. They mimic what real clients raise: an HTTP error carrying ``status_code`` and an
optional ``retry_after`` (seconds), and a business error that must never be retried.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CardDeclined",
    "HTTPError",
    "RateLimited",
    "ServiceUnavailable",
    "cached_quote",
    "empty_results",
]


class HTTPError(Exception):
    """A response with an error status; `retry_after` is the server's hint in seconds."""

    def __init__(self, status_code: int, message: str = "", retry_after: float | None = None):
        super().__init__(message or f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after


class ServiceUnavailable(HTTPError):
    """503: the dependency is overloaded or down; usually worth a retry later."""

    def __init__(self, message: str = "service unavailable", retry_after: float | None = None):
        super().__init__(503, message, retry_after)


class RateLimited(HTTPError):
    """429: slow down; `retry_after` says for how long."""

    def __init__(self, message: str = "too many requests", retry_after: float | None = None):
        super().__init__(429, message, retry_after)


class CardDeclined(Exception):
    """The card was refused: a final answer, never retried and not a sign of an outage."""


def cached_quote(error: BaseException) -> dict[str, Any]:
    """Fallback for quotes: a stale but usable answer instead of an error."""
    return {"status": "cached", "reason": type(error).__name__}


def empty_results(error: BaseException) -> dict[str, Any]:
    """Fallback for search: an empty page, flagged as degraded."""
    return {"results": [], "degraded": True, "reason": type(error).__name__}
