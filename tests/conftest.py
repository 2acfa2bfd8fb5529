from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

import policyengine
from policyengine import Engine
from policyengine._registry.default import set_default_engine
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (`.ci/run` sets POLICYENGINE_STRICT_SKIPS=1) a test skipped because a server binary
    or package "is not installed" fails instead: CI installs every one of them, so such a skip
    would hide a broken install step behind a green run. Elsewhere it stays a skip that says
    what to install."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("POLICYENGINE_STRICT_SKIPS") == "1":
        reason = str(report.longrepr)
        if "not installed" in reason or "is missing" in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped in CI, where everything is installed: {reason}"
