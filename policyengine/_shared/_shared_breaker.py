"""A breaker whose state lives in Redis: the plain state machine with a `RedisStore`.

Nothing of the machine is overridden: the store's hooks (`_patterns.outcomes.OutcomeStore`) batch
the closed outcomes, ask for probe leases and follow the state Redis returns (see `_store`). This
class only wires the two together, so that ``isinstance(b, SharedBreaker)`` says "shared".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._config.models import BreakerOptions
from .._patterns.breaker import Breaker
from .._patterns.outcomes import LocalCounts
from .._runtime.clock import Clock
from .._telemetry.events import Event
from ._store import RedisStore

if TYPE_CHECKING:
    from ._backend import RedisBackend

__all__ = ["SharedBreaker"]


class SharedBreaker(Breaker):
    """One policy's breaker, shared through a `RedisBackend`. See the module docstring."""

    __slots__ = ("store",)

    def __init__(
        self,
        name: str,
        options: BreakerOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        backend: RedisBackend,
        prefix: str,
        *,
        observe: bool = False,
    ) -> None:
        self.store = RedisStore(name, LocalCounts(options, clock.now), backend, prefix)
        super().__init__(name, options, clock, emit, observe=observe, store=self.store)
        self.store.bind(self)

    @property
    def _backend(self) -> RedisBackend:  # (read by the engine: which store keeps the state)
        return self.store.backend

    @property
    def remote(self) -> bool:
        """True while the state is Redis' (False: not yet connected, degraded or detached)."""
        return self.store.remote

    @property
    def degraded(self) -> bool:
        """True from a store failure until this breaker has reconverged with Redis."""
        return self.store.degraded
