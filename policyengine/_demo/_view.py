"""The two views: a rich live table (several refreshes a second) and plain lines (`--no-tty`).

Both get the same calls: `show_intro` once, `update(rows, notices, frame)` every tick, and
`close(summary)` at the end. Plain lines carry an elapsed-time stamp; one line per guard per
second, and one line per notice (state change, reload, rejected edit, phase) as it happens.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ._stats import Notice, Row

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["Frame", "PlainView", "View", "fmt_latency", "make_view", "sparkline"]

SPARKS = "▁▂▃▄▅▆▇█"
STATE_STYLES = {
    "closed": "bold green",
    "half_open": "bold yellow",
    "open": "bold red",
    "forced_open": "bold magenta",
    "disabled": "dim",
}
_SHORT = {"circuit_open": "open", "bulkhead_full": "full", "budget_exhausted": "budget"}


@dataclass(frozen=True, slots=True)
class Frame:
    """What is on besides the rows: time, story phase, policy file and version."""

    elapsed: float
    phase_index: int
    phase_count: int
    phase_name: str
    caption: str
    path: str
    version: str
    title: str = "policyengine demo"  # `policyengine top` shows its own; phase_count 0: none


class View(Protocol):
    def show_intro(self, invitation: str) -> None: ...
    def update(self, rows: list[Row], notices: list[Notice], frame: Frame) -> None: ...
    def close(self, summary: list[str]) -> None: ...


def sparkline(values: list[float], width: int = 24) -> str:
    """Ratios in [0, 1] as block characters, newest last."""
    out = []
    for v in values[-width:]:
        v = min(max(v, 0.0), 1.0)
        out.append(SPARKS[min(int(v * len(SPARKS)), len(SPARKS) - 1)])
    return "".join(out)


def fmt_latency(bound: float | None) -> str:
    """A histogram bucket's upper bound: "≤25ms", ">10s" for the last one, "-" for none."""
    if bound is None:
        return "-"
    if bound == float("inf"):
        return ">10s"
    return f"≤{bound * 1000:g}ms" if bound < 1 else f"≤{bound:g}s"


def fmt_rejected(rates: dict[str, float]) -> str:
    parts = [f"{_SHORT.get(k, k)} {v:.0f}" for k, v in rates.items() if v >= 0.5]
    return " ".join(parts) if parts else "-"


def fmt_bulkhead(b: tuple[int, int, int] | None) -> str:
    if b is None:
        return "-"
    used, limit, queued = b
    return f"{used}/{limit}" + (f" +{queued}q" if queued else "")


def fmt_ok(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _stamp(t: float) -> str:
    return f"[{t:6.1f}s]"


def notice_line(n: Notice) -> str:
    if n.kind == "state":
        return f"{_stamp(n.at)} state {n.subject}: {n.text}"
    if n.kind == "phase":
        return f"{_stamp(n.at)} phase {n.subject}: {n.text}"
    return f"{_stamp(n.at)} reload: {n.text}"


def row_line(t: float, r: Row) -> str:
    state = r.state if r.mode == "enforce" else f"{r.state} ({r.mode})"
    return (
        f"{_stamp(t)} guard {r.name:<9} state={state:<20} calls/s={r.calls_per_s:<4.0f} "
        f"ok={fmt_ok(r.ok_rate):<4} rejected/s={fmt_rejected(r.rejected_per_s)} "
        f"retries/s={r.retries_per_s:.0f} fallbacks/s={r.fallbacks_per_s:.0f} "
        f"p50={fmt_latency(r.p50)} p99={fmt_latency(r.p99)} bulkhead={fmt_bulkhead(r.bulkhead)} "
        f"failures={sparkline(r.history, 12) or '-'}"
    )


class PlainView:
    """Plain lines for logs and CI: flushed as written, no colours, no cursor movement."""

    def __init__(self, stream: TextIO | None = None, every: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.every = every
        self._next = every
        self._started = False
        self._broken = False

    def _print(self, line: str) -> None:
        """Print and flush; a closed pipe (`demo | head`) raises BrokenPipeError once, then
        every later line is dropped (and the stream's descriptor points at /dev/null, so that
        the interpreter's final flush stays quiet)."""
        if self._broken:
            return
        try:
            print(line, file=self.stream, flush=True)
        except BrokenPipeError:
            self._broken = True
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            raise

    def show_intro(self, invitation: str) -> None:
        self._print(invitation)

    def update(self, rows: list[Row], notices: list[Notice], frame: Frame) -> None:
        if not self._started:
            self._started = True
            names = ", ".join(r.name for r in rows)
            self._print(
                f"{_stamp(frame.elapsed)} loaded {frame.path} version {frame.version} "
                f"(guards: {names})"
            )
        for n in notices:
            self._print(notice_line(n))
        if frame.elapsed >= self._next:
            self._next += self.every * max(1, int((frame.elapsed - self._next) // self.every + 1))
            for r in rows:
                self._print(row_line(frame.elapsed, r))

    def close(self, summary: list[str]) -> None:
        for line in summary:
            self._print(line)


def rich_available() -> bool:
    return importlib.util.find_spec("rich") is not None


def make_view(no_tty: bool, stream: TextIO | None = None) -> tuple[View, str | None]:
    """The view to use, and a note for stderr when the live view was asked for but cannot run."""
    stream = stream if stream is not None else sys.stdout
    if no_tty:
        return PlainView(stream), None
    if not rich_available():
        note = (
            "rich is not installed (pip install 'resilience-policyengine[demo]'): "
            "showing plain lines"
        )
        return PlainView(stream), note
    if not stream.isatty():
        return PlainView(stream), "output is not a terminal: showing plain lines (--no-tty)"
    from ._live import LiveView

    return LiveView(), None


def spark_text(values: list[float]) -> Any:
    """The sparkline as rich Text, each point coloured by its level."""
    from rich.text import Text

    text = Text()
    for v, ch in zip(values[-24:], sparkline(values), strict=True):
        text.append(ch, style="red" if v > 0.5 else "yellow" if v > 0.1 else "green")
    return text


def state_cell(r: Row) -> tuple[str, str]:
    """The state text and its rich style."""
    text = r.state.replace("_", "-")
    if r.mode == "observe":
        text += " (observe)"
    return text, STATE_STYLES.get(r.state, "")


def renderables(rows: list[Row]) -> list[RenderableType]:
    """The table of guards (rich objects), for the live view."""
    from rich.console import JustifyMethod
    from rich.table import Table
    from rich.text import Text

    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("guard", "left"), ("state", "left"), ("calls/s", "right"), ("ok", "right"),
        ("rejected/s", "left"), ("retries/s", "right"), ("fallback/s", "right"),
        ("p50", "right"), ("p99", "right"), ("bulkhead", "right"), ("failures, last 12s", "left"),
    )  # fmt: skip
    table = Table(expand=True, header_style="bold", pad_edge=False)
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        text, style = state_cell(r)
        cells: list[Any] = [
            r.name,
            Text(text, style=style),
            f"{r.calls_per_s:.0f}",
            fmt_ok(r.ok_rate),
            fmt_rejected(r.rejected_per_s),
            f"{r.retries_per_s:.0f}",
            f"{r.fallbacks_per_s:.0f}",
            fmt_latency(r.p50),
            fmt_latency(r.p99),
            fmt_bulkhead(r.bulkhead),
            spark_text(r.history),
        ]
        table.add_row(*cells)
    return [table]
