"""Recording: one JSON line per attempt, bounded, never blocking, lossless below its limit."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import policyengine
from policyengine._config.loader import load_text
from policyengine._rollout.record import RecordOptions, TraceWriter
from policyengine._rollout.recorder import Recorder, Recording
from policyengine._rollout.trace import TraceError, read_trace
from policyengine.testing import FakeClock


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status_code = status


def _writer(path: Path, clock: FakeClock, **options: object) -> TraceWriter:
    opts = RecordOptions(path=str(path), **options)  # type: ignore[arg-type]
    return TraceWriter(opts, clock, wall=lambda: 1_700_000_000.0, start=False)


def _recorder(writer: TraceWriter, clock: FakeClock, **kw: object) -> Recorder:
    recording = Recording(clock)
    recording.writer = writer
    return Recorder(recording, "payments", **kw)  # type: ignore[arg-type]


def test_a_line_per_attempt_with_what_is_known(tmp_path: Path, clock: FakeClock) -> None:
    writer = _writer(tmp_path / "t.jsonl", clock)
    rec = _recorder(writer, clock, key="eu")
    assert rec.admit(clock.now()) == 0.0
    clock.advance(1.5)
    rec.settle("success", None, 0.012, clock.now())
    rec.record("failure", HTTPError(503), 0.2, clock.now(), attempt=2)
    rec.settle("timeout", None, 1.0, clock.now())
    rec.settle("ignored", KeyError("x"), 0.001, clock.now())
    rec.settle("cancelled", None, 0.5, clock.now())  # says nothing about the dependency
    rec.rejected(policyengine.CircuitOpenError("payments", 3.0, "open"), clock.now())
    writer.close()
    lines = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in lines] == [
        "success", "failure", "timeout", "failure", "rejected",
    ]  # fmt: skip
    assert isinstance(lines[0].pop("call"), int)  # numbers the calls of this process
    assert lines[0] == {
        "time": 1_700_000_001.5, "guard": "payments", "key": "eu", "attempt": 1,
        "duration": 0.012, "outcome": "success",
    }  # fmt: skip
    assert lines[1]["status"] == 503 and lines[1]["attempt"] == 2
    assert lines[1]["error"] == f"{__name__}.HTTPError"
    assert lines[3]["error"] == "builtins.KeyError"
    assert lines[4]["error"] == "policyengine.exceptions.CircuitOpenError"
    assert len(read_trace(tmp_path / "t.jsonl")) == 5  # what simulate and suggest read


def test_lossless_below_the_queue_limit_across_threads(tmp_path: Path, clock: FakeClock) -> None:
    writer = _writer(tmp_path / "t.jsonl", clock, queue=40_000)
    rec = _recorder(writer, clock)

    def work() -> None:
        for _ in range(10_000):
            rec.settle("success", None, 0.001, 1000.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert writer.dropped == 0
    assert writer.written == 40_000
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 40_000


def test_a_full_queue_drops_and_counts_never_blocks(tmp_path: Path, clock: FakeClock) -> None:
    writer = _writer(tmp_path / "t.jsonl", clock, queue=100)
    rec = _recorder(writer, clock)
    for _ in range(250):  # nothing drains (no thread): the queue fills
        rec.settle("success", None, 0.001, 1000.0)
    assert writer.queued == 100 and writer.dropped == 150
    writer.flush()  # drained: room again
    rec.settle("success", None, 0.001, 1000.0)
    writer.close()
    assert writer.written == 101 and writer.status()["dropped"] == 150


def test_the_background_thread_drains_and_close_flushes(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = TraceWriter(RecordOptions(path=str(tmp_path / "t.jsonl")), clock)
    rec = _recorder(writer, clock)
    for _ in range(1000):
        rec.settle("success", None, 0.001, clock.now())
    writer.close()  # joins the thread: everything queued is on disk
    assert writer.written == 1000 and writer.queued == 0
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1000


def test_rotation_at_the_size_limit_keeps_backups(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "t.jsonl"
    writer = _writer(path, clock, max_bytes=4096, backups=2)
    rec = _recorder(writer, clock)
    for _ in range(400):  # about 80 bytes a line: 32 KB in all
        rec.settle("success", None, 0.001, 1000.0)
        writer.flush()
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    assert writer.rotations >= 7


def test_sampling_uses_the_injected_random_source(tmp_path: Path, clock: FakeClock) -> None:
    writer = _writer(tmp_path / "t.jsonl", clock, sample=0.25, queue=20_000)
    draws = iter([i / 10_000 for i in range(10_000)])  # evenly spread in [0, 1)
    rec = _recorder(writer, clock, random=lambda: next(draws))
    for _ in range(10_000):
        rec.settle("success", None, 0.001, 1000.0)
    writer.close()
    assert writer.written == 2500


def test_record_table_is_validated_and_read_from_the_file() -> None:
    ps = load_text('[record]\npath = "traces/x.jsonl"\nsample = "10%"\n')
    assert ps.record is not None and ps.record.sample == 0.1
    with pytest.raises(policyengine.PolicyValidationError) as info:
        load_text('[record]\npath = "x"\nsampel = 1.0\n')
    assert info.value.errors[0].path.startswith("record")


def test_recording_swaps_writers_and_flushes_the_old(tmp_path: Path, clock: FakeClock) -> None:
    recording = Recording(clock)
    rec = Recorder(recording, "g")
    rec.settle("success", None, 0.001, 1000.0)  # not recording: nothing, no error
    first = RecordOptions(path=str(tmp_path / "a.jsonl"))
    assert recording.apply(first) is True
    assert recording.apply(first) is False  # a reload that keeps [record]: same writer
    writer = recording.writer
    rec.settle("success", None, 0.001, 1000.0)
    recording.apply(RecordOptions(path=str(tmp_path / "b.jsonl")))
    assert recording.writer is not writer and writer is not None and writer.written == 1
    recording.start(RecordOptions(path=str(tmp_path / "c.jsonl")))  # engine.record(...)
    assert recording.apply(RecordOptions(path=str(tmp_path / "d.jsonl"))) is False
    rec.settle("success", None, 0.001, 1000.0)
    recording.close()
    assert (tmp_path / "c.jsonl").read_text().count("\n") == 1


def test_a_bad_trace_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"time": 1, "guard": "g", "duration": 0.1, "outcome": "success"}\nnope\n')
    with pytest.raises(TraceError, match=r"t\.jsonl:2: not a JSON line"):
        read_trace(path)
    path.write_text('{"time": 1, "guard": "g", "duration": 0.1, "outcome": "fine"}\n')
    with pytest.raises(TraceError, match="outcome 'fine' is not one of"):
        read_trace(path)


def test_engine_record_and_record_table_on_reload(tmp_path: Path, clock: FakeClock) -> None:
    base = "[policies.g]\n"
    engine = policyengine.loads(base, clock=clock, default=False)
    assert engine.status()["record"] is None
    table = f'[record]\npath = "{tmp_path / "a.jsonl"}"\nsample = 0.5\n'
    engine.apply(load_text(table + base))  # a reload that adds [record]
    writer = engine.recording.writer
    assert writer is not None and engine.status()["record"]["sample"] == 0.5
    engine.apply(load_text(table + base + "mode = 'observe'\n"))  # [record] unchanged
    assert engine.recording.writer is writer
    engine.record(tmp_path / "b.jsonl")  # the explicit call wins over the file
    assert engine.status()["record"]["path"] == str(tmp_path / "b.jsonl")
    engine.apply(load_text(base))  # the file drops [record]: the explicit one stays
    assert engine.status()["record"]["path"] == str(tmp_path / "b.jsonl")
    engine.record(None)
    assert engine.status()["record"] is None
    engine.close()
    engine.record(tmp_path / "c.jsonl")  # a closed engine starts nothing
    assert engine.recording.writer is None


def test_a_forked_child_writes_its_own_lines(tmp_path: Path) -> None:
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    from tests.helpers.forking import run_in_child

    engine = policyengine.loads("[policies.g]\n", default=False)
    engine.record(tmp_path / "t.jsonl")

    def child() -> dict[str, object]:
        writer = engine.recording.writer
        assert writer is not None and writer._thread is not None
        alive = writer._thread.is_alive()  # the parent's thread is not in the child: a new one
        writer.put((0.0, Recorder(engine.recording, "g"), None, 1, 1, 0.001, "success", None))
        engine.close()
        return {"alive": alive}

    assert run_in_child(child) == {"alive": True}
    engine.close()
    assert (tmp_path / "t.jsonl").read_text().count('"guard":"g"') == 1
