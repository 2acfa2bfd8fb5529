"""Shared breaker state (``[state] backend = "redis"``): see `_backend` and `_shared_breaker`.

redis-py is an optional dependency (``pip install 'policyengine[redis]'``), imported only when a
policy set asks for the Redis backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._config.models import StateOptions
from .._runtime.clock import Clock
from .._telemetry.events import Event

if TYPE_CHECKING:
    from ._backend import RedisBackend

__all__ = ["make_backend"]


def make_backend(state: StateOptions, clock: Clock, emit: Callable[[Event], None]) -> RedisBackend:
    """The state backend for `state`. Never contacts Redis: construction works with it down."""
    if state.backend != "redis":
        raise ValueError(f"no shared state backend {state.backend!r}")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            '[state] backend = "redis" needs the redis package: '
            "pip install 'policyengine[redis]' (or set backend = \"memory\")"
        ) from exc
    from ._backend import RedisBackend

    return RedisBackend(state, clock, emit)
