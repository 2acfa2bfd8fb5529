"""policyengine: declarative resilience for asyncio services.

    engine = policyengine.load("policies/policies.toml", watch=True)
    result = await guard("payments").call(charge, order)

Each dependency gets a named policy (breaker, timeouts, retry, bulkhead, fallback) in a TOML
file that is validated, compiled into guards, and reloaded live without losing breaker state.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from ._config.loader import PolicySet
from ._keys.keyed_handle import KeyedHandle
from ._registry.default import default_engine, guard, load, loads, set_default_engine
from ._registry.engine import Engine
from ._registry.handle import GuardHandle
from ._runtime.clock import Clock, MonotonicClock
from ._runtime.guard import Guard
from ._telemetry.events import Event, log_listener
from ._telemetry.snapshot import GuardSnapshot
from .exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    GuardTimeoutError,
    PolicyEngineError,
    PolicyIssue,
    PolicyValidationError,
    RateLimitedError,
    RejectedError,
    ThrottledError,
    UnknownGuardError,
)

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "Clock",
    "Engine",
    "Event",
    "Guard",
    "GuardHandle",
    "GuardSnapshot",
    "GuardTimeoutError",
    "KeyedHandle",
    "MonotonicClock",
    "PolicyEngineError",
    "PolicyIssue",
    "PolicySet",
    "PolicyValidationError",
    "RateLimitedError",
    "RejectedError",
    "ThrottledError",
    "UnknownGuardError",
    "default_engine",
    "guard",
    "load",
    "loads",
    "log_listener",
    "set_default_engine",
]

__version__ = "0.1.0"

try:
    __version__ = _version("resilience-policyengine")  # the distribution's name (see README)
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"
