"""The rich live view: a header with the story's phase, the guards' table, the last reload, the
recent notices, and the invitation to edit the policy file. Imported only when rich is present."""

from __future__ import annotations

import collections

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from ._stats import Notice, Row
from ._view import Frame, notice_line, renderables

__all__ = ["LiveView"]

_NOTICE_STYLES = {"state": "yellow", "reload": "green", "rejected": "bold red", "phase": "cyan"}


class LiveView:
    """Redraws in place a few times a second; prints the summary below the last frame."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console()
        self._live: Live | None = None
        self._invitation = ""
        self._recent: collections.deque[Notice] = collections.deque(maxlen=6)
        self._last_reload: Notice | None = None

    def show_intro(self, invitation: str) -> None:
        self._invitation = invitation
        self._live = Live(
            Text("starting..."), console=self.console, refresh_per_second=8, transient=False
        )
        self._live.start()

    def update(self, rows: list[Row], notices: list[Notice], frame: Frame) -> None:
        for n in notices:
            self._recent.append(n)
            if n.kind in ("reload", "rejected"):
                self._last_reload = n
        if self._live is not None:
            self._live.update(self._render(rows, frame))

    def close(self, summary: list[str]) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        for line in summary:
            self.console.print(line, highlight=False)

    def _render(self, rows: list[Row], frame: Frame) -> RenderableType:
        head = Text.assemble(
            (frame.title, "bold"),
            f"  {frame.path}  version ",
            (frame.version, "bold"),
            f"  {frame.elapsed:5.1f}s",
        )
        phase = Text.assemble(
            (f"phase {frame.phase_index + 1}/{frame.phase_count} ", "dim"),
            (frame.phase_name, "bold cyan"),
            ": ",
            frame.caption,
        )
        if self._last_reload is None:
            reload = Text("last reload: none yet (edit the file to see one)", style="dim")
        elif self._last_reload.kind == "rejected":
            reload = Text(f"last reload: {self._last_reload.text}", style="bold red")
        else:
            reload = Text(f"last reload: {self._last_reload.text}", style="green")
        recent = [Text(notice_line(n), style=_NOTICE_STYLES.get(n.kind, "")) for n in self._recent]
        parts: list[RenderableType] = [head, *([phase] if frame.phase_count else [])]
        parts += [*renderables(rows), reload]
        if recent:
            parts.append(Panel(Group(*recent), title="recent events", title_align="left"))
        if self._invitation:
            parts.append(Text(self._invitation, style="dim"))
        return Group(*parts)
