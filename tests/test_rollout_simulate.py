"""`simulate`: a replay through the recorded policies reproduces what the live guard did; an
edit's effect shows side by side; `--fail-if` gates CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policyengine._commands.cli import main
from policyengine._commands.cli_rollout import parse_conditions
from policyengine._config.loader import load_text
from policyengine._rollout.simulate import replay
from policyengine._rollout.trace import Attempt, group_calls, read_trace
from tests.helpers.rollout_live import run_live, run_wired

LIVE = """
[policies.svc.timeout]
attempt = "200ms"
[policies.svc.retry]
max_attempts = 2
backoff = "constant"
initial_delay = "37ms"
jitter = "{jitter}"
[policies.svc.breaker]
consecutive_failures = 5
open_duration = "5s"
"""

STRICTER = LIVE.replace("consecutive_failures = 5", "consecutive_failures = 2")


def outage(t: float) -> tuple[float, str, type[Exception]]:
    """Healthy, except: 30 s down (fast failures), then 5 s hanging, then sporadic errors."""
    rel = t - 1000.0
    if 30 <= rel < 60:
        return 0.0171, "failure", ConnectionError
    if 70 <= rel < 75:
        return 0.0, "hang", TimeoutError
    if 80 <= rel < 110 and int(rel * 20) % 7 == 0:
        return 0.0171, "failure", ConnectionError
    return 0.0213, "success", Exception


# about 20 calls/s for 2 minutes; no two events at one instant (a tie's order is not recorded)
STARTS = [1000.0 + i * 0.0487 for i in range(2460)]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("live") / "trace.jsonl"
    return path, run_live(LIVE.format(jitter="none"), outage, STARTS, path)


def test_replay_reproduces_the_live_trips_and_rejections(live: tuple[Path, object]) -> None:
    path, result = live
    report = replay(load_text(LIVE.format(jitter="none")), group_calls(read_trace(path)))["svc"]
    metrics = result.metrics["svc"]  # type: ignore[attr-defined]
    assert result.trips["svc"] >= 3  # type: ignore[attr-defined]  (the scenario trips)
    # without jitter the replay is exact: the same calls meet the same answers at the same time
    assert report.trips == result.trips["svc"]  # type: ignore[attr-defined]
    assert report.rejected == {"circuit_open": metrics["rejections"]["circuit_open"]}
    assert report.calls == metrics["calls"] and report.successes == metrics["successes"]
    assert report.retries == metrics["retries"] and report.timeouts == metrics["timeouts"]
    assert report.retries_added == 0


def test_with_jitter_the_replay_is_within_tolerance(tmp_path: Path) -> None:
    text = LIVE.format(jitter="full")
    live = run_live(text, outage, STARTS, tmp_path / "t.jsonl")
    report = replay(load_text(text), group_calls(read_trace(tmp_path / "t.jsonl")))["svc"]
    rejected = live.metrics["svc"]["rejections"]["circuit_open"]
    assert abs(report.trips - live.trips["svc"]) <= 1
    assert abs(report.rejected.get("circuit_open", 0) - rejected) <= max(5, rejected * 0.02)


def test_a_stricter_edit_shows_more_trips(live: tuple[Path, object]) -> None:
    path, _ = live
    calls = group_calls(read_trace(path))
    old = replay(load_text(LIVE.format(jitter="none")), calls)["svc"]
    new = replay(load_text(STRICTER.format(jitter="none")), calls)["svc"]
    assert new.trips > old.trips
    assert new.time_open > old.time_open
    assert sum(new.rejected.values()) > sum(old.rejected.values())


def test_a_looser_timeout_waits_longer_and_more_retries_add_retries() -> None:
    # one call whose first attempt timed out at 200ms, then succeeded: a 1s timeout hangs 1s
    calls = group_calls(
        [
            Attempt(10.2, "g", 0.2, "timeout", attempt=1),
            Attempt(10.3, "g", 0.05, "success", attempt=2),
        ]
    )
    assert len(calls) == 1 and calls[0].retries == 1
    text = '[policies.g.timeout]\nattempt = "{t}"\n[policies.g.retry]\nmax_attempts = {n}\n'
    text += 'backoff = "constant"\ninitial_delay = "10ms"\njitter = "none"\n'
    same = replay(load_text(text.format(t="200ms", n=2)), calls)["g"]
    assert same.successes == 1 and same.quantile(0.5) == pytest.approx(0.26)
    looser = replay(load_text(text.format(t="1s", n=2)), calls)["g"]
    assert looser.quantile(0.5) == pytest.approx(1.06)
    fewer = replay(load_text(text.format(t="200ms", n=1)), calls)["g"]
    assert fewer.failures == 1 and fewer.retries_added == -1


def test_an_unknown_error_type_replays_under_its_name() -> None:
    calls = group_calls([Attempt(1.0, "g", 0.1, "failure", error="gone.module.Boom", status=503)])
    text = '[policies.g.retry]\nmax_attempts = 3\nbackoff = "constant"\njitter = "none"\n'
    text += "retry_on = [{ type = 'Exception', status = [503] }]\n"
    report = replay(load_text(text), calls)["g"]
    assert report.retries == 2  # the status survived: the retry rule saw a 503 each time


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_command_side_by_side_json_and_fail_if(
    live: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = live
    old = _write(tmp_path, "old.toml", LIVE.format(jitter="none"))
    new = _write(tmp_path, "new.toml", STRICTER.format(jitter="none"))
    assert main(["simulate", new, str(path), "--against", old]) == 0
    out = capsys.readouterr().out
    assert "recorded" in out and "old" in out and "new" in out and "trips" in out
    assert "replay tolerance" in out
    code = main(["simulate", new, str(path), "--against", old, "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["guards"]["new"]["svc"]["trips"] > doc["guards"]["old"]["svc"]["trips"]
    assert main(["simulate", new, str(path), "--fail-if", "trips>100"]) == 0
    capsys.readouterr()
    assert main(["simulate", new, str(path), "--fail-if", "calls<1, svc:trips>0"]) == 1
    assert "fail-if: svc:trips>0 (svc)" in capsys.readouterr().out
    assert main(["simulate", new, str(path), "--fail-if", "trips>0; import os"]) == 2
    assert main(["simulate", new, str(tmp_path / "missing.jsonl")]) == 1


def test_fail_if_parses_a_small_grammar_only() -> None:
    (a, b, c) = parse_conditions(["p99>250ms or rejected.circuit_open>=10", "db:time_open>1m"])
    assert (a.metric, a.op, a.value) == ("p99", ">", 0.25)
    assert (b.metric, b.value) == ("rejected.circuit_open", 10)
    assert (c.guard, c.value) == ("db", 60.0)
    figures = {"db": {"time_open": 61.0, "rejected": {}, "rejected_total": 0, "p99": 0.1}}
    assert c.failing(figures) == ["db"] and a.failing(figures) == []
    for bad in ["__import__('os')", "trips>", "trip>0", "calls.x>0", "trips>0 and 1"]:
        with pytest.raises(ValueError, match="--fail-if"):
            parse_conditions([bad])


def test_a_trace_recorded_by_the_engine_replays_to_the_same_trips(tmp_path: Path) -> None:
    text = LIVE.format(jitter="none")
    path = tmp_path / "wired.jsonl"
    live = run_wired(text, outage, STARTS, path)
    assert live.writer.dropped == 0
    attempts = read_trace(path)
    assert all(a.call is not None and a.attempt is not None for a in attempts)
    assert any(a.attempt == 2 for a in attempts)  # retries are numbered...
    calls = group_calls(attempts)
    assert len(calls) == live.metrics["svc"]["calls"]  # ...and grouped with their call
    report = replay(load_text(text), calls)["svc"]
    assert live.trips["svc"] >= 3 and report.trips == live.trips["svc"]
    assert report.rejected == {"circuit_open": live.metrics["svc"]["rejections"]["circuit_open"]}
    assert report.successes == live.metrics["svc"]["successes"]
    assert report.retries == live.metrics["svc"]["retries"]


def test_a_sampled_trace_holds_whole_calls(tmp_path: Path) -> None:
    path = tmp_path / "sampled.jsonl"
    live = run_wired(LIVE.format(jitter="none"), outage, STARTS, path, sample=0.3)
    calls = group_calls(read_trace(path))
    assert len(calls) / live.metrics["svc"]["calls"] == pytest.approx(0.3, abs=0.03)
    retried = [c for c in calls if len(c.attempts) > 1]
    assert retried  # the outage's retries are in the sample, with their first attempts
    for call in calls:
        assert [a.attempt for a in call.attempts] == list(range(1, len(call.attempts) + 1))
