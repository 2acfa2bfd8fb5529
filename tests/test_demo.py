"""`policyengine demo`: the story happens in a short run, and edits of the policy file show up."""

from __future__ import annotations

import io
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import policyengine
from policyengine._demo import PACKAGED_POLICIES, main
from policyengine._demo._stats import Row
from policyengine._demo._story import Story
from policyengine._demo._view import PlainView, fmt_latency, make_view, sparkline

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies" / "demo.toml"
MAIN = "import sys; from policyengine._demo import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def demo_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo.toml"
    shutil.copyfile(POLICIES, path)
    return path


# ------------------------------------------------------------------ the shipped policies
def test_packaged_copy_is_identical_to_policies_demo_toml() -> None:
    assert PACKAGED_POLICIES.read_bytes() == POLICIES.read_bytes()


def test_demo_policies_validate_without_warnings() -> None:
    text = POLICIES.read_text()
    assert text.startswith("#:schema ../schema/policies.schema.json\n")
    engine = policyengine.load(POLICIES, default=False)
    try:
        assert engine.names() == ["catalog", "checkout", "stock"]
        assert engine.status()["warnings"] == []
        breaker = engine.guard("checkout").current().policy.breaker
        assert breaker is not None and breaker.open_duration <= 1.0
    finally:
        engine.close()


# ---------------------------------------------------------------------------- units
def test_short_runs_squeeze_the_whole_story() -> None:
    story = Story.for_run(5.0)
    names = [story.phase_at(t).name for t in (0.1, 1.0, 2.0, 4.5)]
    assert names == ["healthy", "slow", "outage", "recovery"]
    assert story.span(len(story.phases) - 1)[1] == pytest.approx(5.0)
    long = Story.for_run(None, speed=2.0)
    assert long.cycle == pytest.approx(20.0)
    assert long.phase_at(long.cycle + 0.1).name == "healthy"  # it loops


def test_formatting_helpers() -> None:
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert fmt_latency(0.025) == "≤25ms" and fmt_latency(2.5) == "≤2.5s"
    assert fmt_latency(None) == "-" and fmt_latency(float("inf")) == ">10s"


def test_plain_view_without_a_terminal_or_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    view, note = make_view(False, io.StringIO())  # not a tty
    assert isinstance(view, PlainView) and note is not None and "--no-tty" in note
    monkeypatch.setattr("policyengine._demo._view.rich_available", lambda: False)
    view, note = make_view(False, io.StringIO())
    assert isinstance(view, PlainView) and note is not None and "policyengine[demo]" in note


def test_plain_view_prints_a_row_per_guard_each_second() -> None:
    from policyengine._demo._view import Frame

    out = io.StringIO()
    view = PlainView(out)
    rows = [Row("checkout", "enforce", "closed", calls_per_s=40.0, ok_rate=1.0)]
    for i in range(1, 13):
        frame = Frame(i * 0.25, 0, 4, "healthy", "", "demo.toml", "abc")
        view.update(rows, [], frame)
    lines = out.getvalue().splitlines()
    assert "loaded demo.toml version abc" in lines[0]
    assert sum("guard checkout" in line for line in lines) == 3


def test_bad_arguments_and_missing_file(tmp_path: Path) -> None:
    assert main(["--duration", "-1"]) == 2
    assert main(["--no-tty", "--policies", str(tmp_path / "nope.toml")]) == 1


# ---------------------------------------------------------------------- whole runs
def test_five_second_run_shows_a_trip_and_a_recovery(demo_file: Path) -> None:
    cmd = [sys.executable, "-m", "policyengine", "demo", "--duration", "5", "--no-tty"]
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--policies", str(demo_file)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 10
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    trip = re.search(r"state checkout: closed -> open", out)
    assert trip, out
    recovery = re.search(r"state checkout: half_open -> closed", out[trip.end() :])
    assert recovery, out
    for phase in ("healthy", "slow", "outage", "recovery"):
        assert f"phase {phase}:" in out
    for name in ("checkout", "stock", "catalog"):
        assert len(re.findall(rf"guard {name} ", out)) >= 4  # a line a second per guard
    assert re.search(r"guard checkout .*fallbacks/s=[1-9]", out), out
    assert re.search(r"guard stock .*rejected/s=full [1-9]", out), out
    assert re.search(r"summary checkout: .*trips=[1-9]\d* recoveries=[1-9]", out), out


class _Lines:
    """A subprocess's stdout lines, read in a thread. `wait_for` a pattern in the lines from
    index `since` on (those seen already, then new ones), with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 4.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.seen):
                match = re.search(pattern, self.seen[i])
                i += 1
                if match:
                    return match
            left = deadline - time.monotonic()
            if self._ended or left <= 0:
                raise AssertionError(f"no line matched {pattern!r}:\n" + "\n".join(self.seen))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._ended = True
            else:
                self.seen.append(line)


def test_edits_during_a_run_are_applied_or_rejected_live(demo_file: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, "--duration", "7", "--no-tty", "--policies", str(demo_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = _Lines(proc)
        first = lines.wait_for(r"loaded .* version (\w+)").group(1)
        lines.wait_for(r"guard checkout ")
        text = demo_file.read_text()
        good = text.replace(
            'half_open_max_wait = "1s"\n', 'half_open_max_wait = "1s"\nforce = "open"\n'
        )
        good = good.replace("max_concurrent = 4", "max_concurrent = 2")
        assert good != text
        mark = len(lines.seen)
        demo_file.write_text(good)
        second = lines.wait_for(r"reload: applied version (\w+) \((.*)\)", mark)
        assert second.group(1) != first and "checkout" in second.group(2)
        lines.wait_for(r"state checkout: \w+ -> forced_open \(forced\)", mark)
        lines.wait_for(r"guard stock .*bulkhead=\d/2", mark)

        mark = len(lines.seen)
        demo_file.write_text(good.replace('open_duration = "1s"', "open_duration = 1"))
        rejected = lines.wait_for(r"reload: edit rejected, version (\w+) keeps serving: (.*)", mark)
        assert rejected.group(1) == second.group(1)
        assert "open_duration" in rejected.group(2) and '"1s"' in rejected.group(2)
        # The old (good) policy keeps serving: calls go on, checkout stays forced open and
        # its fallback answers.
        mark = len(lines.seen)
        lines.wait_for(r"guard checkout +state=forced_open +calls/s=[1-9].*fallbacks/s=[1-9]", mark)
        lines.wait_for(r"guard catalog +state=\S+ \(observe\) +calls/s=[1-9]", mark)
        lines.wait_for(rf"demo over: policy version {second.group(1)}", mark, timeout=8.0)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_ctrl_c_exits_cleanly_with_code_0(demo_file: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, "--no-tty", "--policies", str(demo_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = _Lines(proc)
        lines.wait_for(r"guard checkout ")
        proc.send_signal(signal.SIGINT)
        lines.wait_for(r"demo over", timeout=5.0)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()
