"""Admission control in the compile step: a policy's `throttle` and `rate_limit` sections become
attempt layers (`_runtime.layer.AttemptLayer`), carried over from the guard in force on a reload.

Order: the throttle first, then the rate limit, so an attempt the throttle sheds takes no token
(and one the rate limit refuses is settled "rejected" by the throttle: not a request).

Reload: the same runtime object, reconfigured at the swap (`commits`): a rate limiter rescales its
buckets (not a refill) and keeps its logs and reservations; a throttle keeps its counts unless
its window changed. A rate limit that moves between scopes, or whose shared store changed, gets a
new runtime.

``scope = "shared"`` needs the Redis ``[state]`` backend: its limiters run on one `LimiterStore`
per backend (made on first use, stopped when the backend closes). With ``backend = "memory"`` a
shared rate limit is a per-process one, as a shared breaker is then a local one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._config.models import Policy
from .._runtime.clock import Clock
from .._runtime.layer import AttemptLayer
from .._telemetry.events import Event
from .ratelimit import RateLimiter
from .throttle import Throttle

if TYPE_CHECKING:
    from .._shared._limiter_store import LimiterStore

__all__ = ["admission_layers", "limiter_store"]

_stores: weakref.WeakKeyDictionary[Any, LimiterStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def limiter_store(backend: Any) -> LimiterStore | None:
    """The rate-limit store of a Redis state backend (one per backend), or None for none."""
    options = getattr(backend, "options", None)
    if options is None or getattr(options, "backend", None) != "redis":
        return None
    with _stores_lock:
        store = _stores.get(backend)
        if store is None:
            from .._shared._limiter_store import LimiterStore

            ref = weakref.ref(backend)

            def alive() -> bool:
                b = ref()
                return b is not None and not getattr(b, "_closing", False)

            store = LimiterStore(options.url, options.prefix, options.timeout, alive=alive)
            _stores[backend] = store
    return store


def admission_layers(
    name: str,
    policy: Policy,
    old: tuple[AttemptLayer, ...],
    clock: Clock,
    emit: Callable[[Event], None],
    commits: list[Callable[[], None]],
    backend: Any = None,
) -> tuple[AttemptLayer, ...]:
    """The admission layers of `policy` (empty if it has neither section)."""
    if policy.throttle is None and policy.rate_limit is None:
        return ()
    layers: list[AttemptLayer] = []
    throttle = policy.throttle
    if throttle is not None:
        prev_t = next((x for x in old if isinstance(x, Throttle)), None)
        if prev_t is not None:
            commits.append(lambda: prev_t.reconfigure(throttle, clock.now()))
            layers.append(prev_t)
        else:
            layers.append(Throttle(name, throttle, emit=emit))
    limit = policy.rate_limit
    if limit is not None:
        store = limiter_store(backend) if limit.scope == "shared" else None
        if store is None:
            prev = next((x for x in old if type(x) is RateLimiter), None)
            if prev is not None:
                commits.append(lambda: prev.reconfigure(limit, clock.now()))
                layers.append(prev)
            else:
                layers.append(RateLimiter(name, limit, emit=emit))
        else:
            layers.append(_shared(name, policy, old, clock, emit, commits, store))
    return tuple(layers)


def _shared(
    name: str,
    policy: Policy,
    old: tuple[AttemptLayer, ...],
    clock: Clock,
    emit: Callable[[Event], None],
    commits: list[Callable[[], None]],
    store: LimiterStore,
) -> AttemptLayer:
    from .._shared._limiter import SharedRateLimiter

    limit = policy.rate_limit
    assert limit is not None
    prev = next((x for x in old if isinstance(x, SharedRateLimiter) and x.store is store), None)
    if prev is not None:
        commits.append(lambda: prev.reconfigure(limit, clock.now()))
        return prev
    return SharedRateLimiter(name, limit, store, clock, emit=emit)
