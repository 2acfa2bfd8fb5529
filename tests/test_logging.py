"""The default log listener: levels, structured fields, and silence on the success path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import policyengine
from policyengine import Engine, Event
from policyengine._telemetry.events import log_listener
from policyengine.testing import FakeClock

MakeEngine = Callable[[str], Engine]

POLICIES = """
[policies.api.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "100ms"
jitter = "none"

[policies.api.breaker]
consecutive_failures = 2
open_duration = "30s"
"""


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise ConnectionError("refused")


def pe(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields (`extra`)."""
    return record.__dict__


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "policyengine"]


async def test_successful_calls_log_nothing_even_at_debug(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="policyengine")
    g = make_engine(POLICIES).guard("api")
    for _ in range(50):
        await g.call(ok)
    assert records(caplog) == []


async def test_breaker_transitions_with_levels_and_structured_fields(
    make_engine: MakeEngine, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyengine")
    g = make_engine(POLICIES).guard("api")
    with pytest.raises(ConnectionError):
        await g.call(boom)  # two failed attempts (one retry): trips
    [opened] = records(caplog)
    assert opened.levelno == logging.WARNING
    assert (pe(opened)["guard"], pe(opened)["event"], pe(opened)["reason"]) == (
        "api",
        "state_change",
        "consecutive_failures",
    )
    assert (pe(opened)["previous_state"], pe(opened)["state"]) == ("closed", "open")
    assert pe(opened)["event_data"]["open_for"] == 30
    assert (
        opened.getMessage()
        == "guard 'api': breaker closed -> open (consecutive_failures), open for 30s"
    )

    caplog.clear()
    clock.advance(30)
    assert g.state == "half_open"
    await g.call(ok)
    half, closed = records(caplog)
    assert (half.levelno, pe(half)["state"], pe(half)["reason"]) == (
        logging.INFO,
        "half_open",
        "open_duration_elapsed",
    )
    assert (closed.levelno, pe(closed)["state"]) == (logging.INFO, "closed")
    assert pe(closed)["guard"] == "api"


async def test_retries_are_debug_only(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    g = make_engine(POLICIES.replace("consecutive_failures = 2", "consecutive_failures = 9")).guard(
        "api"
    )
    caplog.set_level(logging.INFO, logger="policyengine")
    with pytest.raises(ConnectionError):
        await g.call(boom)
    assert records(caplog) == []
    caplog.set_level(logging.DEBUG, logger="policyengine")
    with pytest.raises(ConnectionError):
        await g.call(boom)
    [retry] = records(caplog)
    assert retry.levelno == logging.DEBUG
    assert pe(retry)["event"] == "retry"
    assert (pe(retry)["guard"], pe(retry)["reason"]) == ("api", "ConnectionError")


def test_reloads_rejected_reloads_and_removed_policies(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="policyengine")
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES + "\n[policies.old.retry]\nmax_attempts = 1\n")
    engine = policyengine.load(path, clock=clock, default=False)
    try:
        bad = POLICIES + "\n[policies.bad.retry]\nretries = 3\n"
        path.write_text(bad)
        assert engine.reload() is False
        [failed] = records(caplog)
        assert failed.levelno == logging.ERROR
        assert (pe(failed)["event"], pe(failed)["guard"], pe(failed)["reason"]) == (
            "reload_failed",
            "*",
            "invalid_policy",
        )
        [issue] = pe(failed)["issues"]
        assert issue["file"].endswith("policies.toml")
        assert issue["line"] == bad.splitlines().index("retries = 3") + 1
        assert "max_attempts" in issue["message"]
        assert "the policies in force are kept" in failed.getMessage()

        caplog.clear()
        path.write_text(POLICIES)
        assert engine.reload() is True
        removed, reloaded = records(caplog)
        assert (removed.levelno, pe(removed)["event"], pe(removed)["guard"]) == (
            logging.WARNING,
            "policy_removed",
            "old",
        )
        assert reloaded.levelno == logging.INFO
        assert pe(reloaded)["version"] == engine.status()["version"]
    finally:
        engine.close()


def test_levels_of_other_events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="policyengine")
    log_listener(Event("rejected", "api", {"reason": "circuit_open"}))
    log_listener(
        Event("state_change", "api", {"from": "closed", "to": "forced_open", "reason": "forced"})
    )
    log_listener(Event("state_store_degraded", "*", {"reason": "unreachable"}))
    log_listener(Event("something_new", "api", {}))
    levels = [(pe(r)["event"], r.levelno) for r in records(caplog)]
    assert levels == [
        ("rejected", logging.DEBUG),
        ("state_change", logging.WARNING),
        ("state_store_degraded", logging.WARNING),
        ("something_new", logging.INFO),
    ]


def test_a_state_backend_change_is_one_readable_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="policyengine")
    redis = {
        "backend": "redis",
        "url": "redis://:***@cache:6379/0",
        "prefix": "pe",
        "on_error": "open",
        "timeout": 0.05,
    }
    data = {"from": {"backend": "memory"}, "to": redis, "how": "new backend"}
    log_listener(Event("state_backend_changed", "*", {**data, "renewed": ["payments"]}))
    retuned = {"from": redis, "to": {**redis, "on_error": "local"}, "how": "retuned"}
    log_listener(Event("state_backend_changed", "*", {**retuned, "renewed": []}))
    assert [(r.levelno, r.getMessage()) for r in records(caplog)] == [
        (
            logging.INFO,
            "state backend replaced by a reload: memory -> redis redis://:***@cache:6379/0 "
            "prefix=pe on_error=open timeout=50ms; new shared breakers for payments",
        ),
        (
            logging.INFO,
            "state backend retuned by a reload: redis redis://:***@cache:6379/0 prefix=pe "
            "on_error=open timeout=50ms -> redis redis://:***@cache:6379/0 prefix=pe "
            "on_error=local timeout=50ms",
        ),
    ]
