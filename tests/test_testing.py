"""`policyengine.testing.isolated`: an application's own policies, a fresh engine per test."""

from __future__ import annotations

from pathlib import Path

import pytest

import policyengine
from policyengine import CircuitOpenError, guard
from policyengine.testing import FakeClock, isolated

POLICIES = """
[state]
backend = "redis"
url = "redis://127.0.0.1:1/0"   # nothing listens here: a test must never need it

[policies.payments.retry]
max_attempts = 4
backoff = "exponential"
initial_delay = "100ms"
max_delay = "1s"
jitter = "none"
[policies.payments.breaker]
consecutive_failures = 8
open_duration = "30s"
shared = true

[policies.search.retry]
max_attempts = 1
"""


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        raise ConnectionError("down")


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An application checkout: policies/policies.toml under the working directory."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policies.toml").write_text(POLICIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLICYENGINE_FILE", raising=False)
    return tmp_path


async def test_loads_the_default_file_on_a_fake_clock_with_state_in_memory(app_dir: Path) -> None:
    clock = FakeClock()
    with isolated(clock=clock) as engine:
        assert engine.status()["state"] == {"backend": "memory"}
        assert engine.path == Path("policies/policies.toml")
        failing = Failing()
        with pytest.raises(ConnectionError):
            await guard("payments").call(failing)  # module-level guard(): this engine
        assert failing.calls == 4
        assert clock.sleeps == [0.1, 0.2, 0.4]  # backoff on the fake clock: no real sleep


async def test_attempts_caps_every_retry(app_dir: Path) -> None:
    with isolated(attempts=1) as engine:
        failing = Failing()
        with pytest.raises(ConnectionError):
            await guard("payments").call(failing)
        assert failing.calls == 1
        assert engine.guards["payments"].max_attempts == 1
    with isolated(attempts=2) as engine:
        assert engine.guards["payments"].max_attempts == 2
        assert engine.guards["search"].max_attempts == 1  # a cap never adds attempts


async def test_each_block_starts_with_fresh_breakers(app_dir: Path) -> None:
    with isolated(attempts=1):
        for _ in range(8):
            with pytest.raises(ConnectionError):
                await guard("payments").call(Failing())
        with pytest.raises(CircuitOpenError):
            await guard("payments").call(Failing())
    with isolated(attempts=1):
        assert guard("payments").state == "closed"


def test_restores_the_previous_default_engine(app_dir: Path) -> None:
    outer = policyengine.loads("[policies.other]\n")
    with isolated(app_dir / "policies") as engine:  # a directory works as load() takes it
        assert policyengine.default_engine() is engine
        assert guard("payments").state == "closed"
    assert policyengine.default_engine() is outer
    assert guard("other").state == "closed"
    with pytest.raises(policyengine.UnknownGuardError):
        guard("payments")  # the test's policies went with it


def test_source_from_the_environment_and_bad_attempts(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = app_dir / "other.toml"
    other.write_text("[policies.inventory]\n")
    monkeypatch.setenv("POLICYENGINE_FILE", str(other))
    with isolated() as engine:
        assert engine.names() == ["inventory"]
    with pytest.raises(ValueError, match="at least 1"), isolated(attempts=0):
        pass


def test_a_reload_keeps_state_in_memory_and_the_cap(app_dir: Path) -> None:
    with isolated(attempts=1) as engine:
        path = app_dir / "policies" / "policies.toml"
        path.write_text(POLICIES.replace("max_attempts = 4", "max_attempts = 5"))
        assert engine.reload()
        assert engine.status()["state"] == {"backend": "memory"}
        assert engine.guards["payments"].max_attempts == 1
        assert engine.policy_set.policies["payments"].retry.max_attempts == 1  # type: ignore[union-attr]


def test_isolated_is_a_plain_engine_reading_an_adjusted_source(app_dir: Path) -> None:
    """No subclass of Engine: the test adjustments travel in the source the engine reads at
    construction and on every reload."""
    from policyengine import Engine
    from policyengine._config.source import AdjustedSource

    with isolated(attempts=1) as engine:
        assert type(engine) is Engine
        assert isinstance(engine.source, AdjustedSource)
        assert engine.source.read().state.backend == "memory"
