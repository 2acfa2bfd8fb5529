"""A scripted sequence of calls, shared by the exporter tests (Prometheus, OpenTelemetry).

It runs against policy `api` (`API`): retry (2 attempts, ConnectionError only), a breaker
tripping after 3 consecutive failures, and a fallback value "cached" on circuit_open.
"""

from __future__ import annotations

import pytest

from policyengine import Engine

API = """
[policies.api.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "100ms"
jitter = "none"
retry_on = ["ConnectionError"]

[policies.api.breaker]
consecutive_failures = 3
open_duration = "30s"

[policies.api.fallback]
value = "cached"
on = ["circuit_open"]
"""


async def ok() -> str:
    return "ok"


async def value_error() -> str:
    raise ValueError("bad request")


async def connection_error() -> str:
    raise ConnectionError("refused")


class FailOnce:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("refused once")
        return "ok"


async def script(engine: Engine) -> None:
    """2 successes, 3 failures (one trips the breaker), 2 retries, 1 rejection + fallback."""
    api = engine.guard("api")
    assert await api.call(ok) == "ok"  # success
    with pytest.raises(ValueError):
        await api.call(value_error)  # failure, not retried; consecutive 1
    assert await api.call(FailOnce()) == "ok"  # retry 1, success; consecutive back to 0
    with pytest.raises(ConnectionError):
        await api.call(connection_error)  # retry 2, failure; consecutive 2
    with pytest.raises(ValueError):
        await api.call(value_error)  # failure; consecutive 3: trips
    assert api.state == "open"
    assert await api.call(ok) == "cached"  # rejected (circuit_open), fallback
