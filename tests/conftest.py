from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import policyengine
from policyengine import Engine
from policyengine._default import set_default_engine
from policyengine.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(clock: FakeClock) -> Iterator[Callable[[str], Engine]]:
    """Build an engine from TOML text on the fake clock; closed after the test."""
    engines: list[Engine] = []

    def make(text: str) -> Engine:
        engine = policyengine.loads(text, clock=clock, default=False)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(autouse=True)
def _no_default_engine() -> Iterator[None]:
    set_default_engine(None)
    yield
    set_default_engine(None)
