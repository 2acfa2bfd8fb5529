"""Testing helpers: a clock that tests move by hand, and your policies isolated per test.

    clock = FakeClock()
    engine = policyengine.loads(text, clock=clock)
    clock.advance(30)          # thirty seconds of breaker time, at once

`await clock.sleep(s)` returns at once and moves the clock forward by `s`, so retries with
backoff run instantly and their delays can be read from `clock.sleeps`.

For the tests of an application that calls `guard(name)`, `isolated()` loads the application's
own policies into a fresh engine for each test (stamina's testing mode, for a whole policy file):

    @pytest.fixture(autouse=True)
    def policies():
        with isolated(attempts=1) as engine:  # from policyengine.testing import isolated
            yield engine
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ._config.loader import PolicySet
from ._config.models import Policy, StateOptions
from ._config.source import AdjustedSource, FileSource, default_path
from ._registry import default as _default
from ._registry.engine import Engine

__all__ = ["FakeClock", "isolated"]


class FakeClock:
    """A monotonic clock that only moves when told to (or when something sleeps on it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        with self._lock:
            self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleep_sync(seconds)
        await asyncio.sleep(0)  # still a scheduling point, like a real sleep

    def sleep_sync(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds


@contextlib.contextmanager
def isolated(
    source: str | os.PathLike[str] | None = None,
    *,
    attempts: int | None = None,
    clock: FakeClock | None = None,
) -> Iterator[Engine]:
    """Your policies in an engine of their own, made the default behind `guard(name)`.

    `source` is a policy file or directory; by default the one the default engine would load
    (`$POLICYENGINE_FILE`, else ``policies/policies.toml``). The engine runs on `clock` (a new
    `FakeClock` if None): backoff sleeps return at once, and breaker time moves only when the
    test moves it. State is in memory whatever `[state]` says, so no test needs Redis and no
    breaker tripped in one test rejects calls in the next. `attempts` caps every policy's
    `retry.max_attempts` (``attempts=1``: no retries; stamina's ``set_testing(attempts=1)``).
    On exit the previous default engine is back and this one is closed.
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1 (1: no retries), not {attempts}")
    path = Path(source) if source is not None else default_path()
    adjusted = AdjustedSource(FileSource(path), functools.partial(_for_tests, attempts=attempts))
    engine = Engine(adjusted, clock=clock if clock is not None else FakeClock())
    previous = _default.replace_default_engine(engine)
    try:
        yield engine
    finally:
        _default.replace_default_engine(previous)
        engine.close()


def _for_tests(policy_set: PolicySet, attempts: int | None) -> PolicySet:
    """In-memory state; every retry capped at `attempts` (on every read: reloads too)."""

    def capped(policy: Policy) -> Policy:
        retry = policy.retry
        if attempts is None or retry is None or retry.max_attempts <= attempts:
            return policy
        return policy.model_copy(
            update={"retry": retry.model_copy(update={"max_attempts": attempts})}
        )

    return dataclasses.replace(
        policy_set,
        state=StateOptions(),
        policies={name: capped(policy) for name, policy in policy_set.policies.items()},
    )
