"""`suggest`: values from known distributions land within 10% of the expected figures, each says
where it came from, and the fragment validates."""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path

import pytest

from policyengine._commands.cli import main
from policyengine._config.loader import load_text
from policyengine._rollout.suggest import suggest
from policyengine._rollout.trace import Attempt

MU, SIGMA = math.log(0.05), 0.5  # log-normal latency: median 50 ms
Z = {0.5: 0.0, 0.95: 1.6448536, 0.999: 3.0902323}


def expected(q: float) -> float:
    return math.exp(MU + SIGMA * Z[q])


def trace(n: int = 60_000, fail: float = 0.02, per_second: float = 50.0) -> list[Attempt]:
    rng = random.Random(7)
    out = []
    t = 1_700_000_000.0
    for _ in range(n):
        t += rng.expovariate(per_second)
        failed = rng.random() < fail
        duration = rng.lognormvariate(MU, SIGMA) if not failed else 0.01
        out.append(Attempt(t + duration, "payments", duration, "failure" if failed else "success"))
    return out


@pytest.fixture(scope="module")
def fragment() -> str:
    return suggest(trace(), "t.jsonl")


def _values(fragment: str) -> dict[str, object]:
    data = tomllib.loads(fragment)
    policy: dict[str, object] = data["policies"]["payments"]
    return policy


def _seconds(text: object) -> float:
    assert isinstance(text, str)
    return float(text.removesuffix("ms")) / 1000 if text.endswith("ms") else float(text[:-1])


def test_the_attempt_timeout_is_p999_with_headroom(fragment: str) -> None:
    timeout = _seconds(_values(fragment)["timeout"]["attempt"])  # type: ignore[index]
    assert timeout == pytest.approx(1.5 * expected(0.999), rel=0.10)
    assert "p99.9 of" in fragment and "x 1.5 headroom" in fragment


def test_the_hedge_delay_is_p95(fragment: str) -> None:
    line = next(x for x in fragment.splitlines() if "hedge" in x and "delay" in x)
    delay = _seconds(line.split('delay = "')[1].split('"')[0] + "")
    assert delay == pytest.approx(expected(0.95), rel=0.10)
    assert "p95 of successful attempts" in line


def test_breaker_values_come_from_the_failure_rate_and_traffic(fragment: str) -> None:
    breaker = _values(fragment)["breaker"]
    assert isinstance(breaker, dict)
    assert breaker["window_size"] == pytest.approx(50 * 60, rel=0.10)  # calls a minute
    assert breaker["minimum_calls"] == pytest.approx(50 * 10, rel=0.15)  # 10 s, quietest
    # baseline 2%; over windows of 3000 calls its sd is sqrt(.02 * .98 / 3000) = 0.26%
    sd = math.sqrt(0.02 * 0.98 / breaker["window_size"])
    assert breaker["failure_rate"] == pytest.approx(max(0.02 + 3 * sd, 0.07), abs=0.011)
    assert "baseline 2.0%" in fragment
    budget = _values(fragment)["retry"]["budget"]  # type: ignore[index]
    assert budget == {"ratio": 0.1, "min_per_second": 2.5}


def test_the_fragment_validates_and_says_nothing_was_edited(fragment: str) -> None:
    load_text(fragment, strict=True)
    assert "Nothing was edited" in fragment
    for line in fragment.splitlines():  # every value says where it came from
        if "=" in line and not line.startswith("#"):
            assert "  # " in line, line


def test_a_noisier_baseline_gets_a_higher_threshold() -> None:
    calm = _values(suggest(trace(fail=0.02)))["breaker"]["failure_rate"]  # type: ignore[index]
    noisy = _values(suggest(trace(fail=0.2)))["breaker"]["failure_rate"]  # type: ignore[index]
    assert noisy > calm + 0.15


def test_the_command_prints_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.jsonl"
    lines = [
        f'{{"time": {a.time}, "guard": "{a.guard}", "duration": {a.duration}, '
        f'"outcome": "{a.outcome}"}}'
        for a in trace(n=3000)
    ]
    path.write_text("\n".join(lines) + "\n")
    before = sorted(tmp_path.iterdir())
    assert main(["suggest", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[policies.payments.timeout]" in out
    assert sorted(tmp_path.iterdir()) == before
    assert main(["suggest", str(tmp_path / "none.jsonl")]) == 1
