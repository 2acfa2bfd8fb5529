"""`policyengine top URL`: the demo's live view of a running service, read from its ``/status``.

The service serves `policyengine.asgi.status_app` (for example mounted at ``/ops``); `top` polls
``URL/status`` every `--interval` seconds and shows what the demo shows: each guard's state,
calls/s, ok %, rejections, retries, fallbacks, p50/p99 and bulkhead use, a sparkline of its
failure share, and the recent events (state changes, reloads, rejected edits) the status app
kept (stamped with the time since `top` started; events from before it at 0.0s). Rates come
from two successive samples, so the first rows appear after one interval.
`--once` prints one set of plain lines and exits (for scripts and tests); `--no-tty` prints
plain lines until Ctrl-C. Only the standard library is used to fetch (urllib); rich draws the
live view when it is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from .._demo._stats import Notice, Row, RowBuilder, applied_notice, rejected_notice, state_notice
from .._demo._view import Frame, PlainView, View, make_view

if TYPE_CHECKING:
    from argparse import _SubParsersAction

__all__ = ["RemoteSampler", "add_parser", "run"]


class StatusUnavailable(Exception):
    """The URL did not answer with a policyengine status document."""


def status_url(url: str) -> str:
    """``URL/status`` unless the URL already names it."""
    url = url.rstrip("/")
    return url if url.endswith("/status") else f"{url}/status"


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise StatusUnavailable(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusUnavailable(f"cannot reach {url}: {reason}") from None
    except ValueError:
        raise StatusUnavailable(f"{url} did not answer JSON") from None
    if not isinstance(body, dict) or not {"engine", "guards"} <= body.keys():
        raise StatusUnavailable(
            f"{url} is not a policyengine status endpoint (serve policyengine.asgi.status_app)"
        )
    return body


class RemoteSampler(RowBuilder):
    """Rows and notices from successive ``/status`` documents."""

    def __init__(self, url: str) -> None:
        super().__init__([])
        self.url = status_url(url)
        self.t0 = time.monotonic()
        self._t0_wall: float | None = None  # the service's clock at our first sample
        self._seq = 0
        self.version = "?"

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def poll(self) -> tuple[list[Row], list[Notice]]:
        body = fetch(self.url)
        now = time.monotonic()
        engine = body["engine"]
        self.version = str(engine.get("version", "?"))
        if self._t0_wall is None:
            self._t0_wall = float(body.get("time", time.time())) - (now - self.t0)
        rows = [
            self.row(name, str(snap.get("mode", "enforce")), now, snap)
            for name, snap in sorted(body["guards"].items())
        ]
        return rows, self._notices(body)

    def _notices(self, body: dict[str, Any]) -> list[Notice]:
        out = []
        policies = body["engine"].get("policies", {})
        for event in body.get("events", []):
            if event["seq"] <= self._seq:
                continue
            self._seq = event["seq"]
            at = max(0.0, float(event["at"]) - (self._t0_wall or 0.0))  # before top: at 0.0
            name, data = event["name"], event.get("data", {})
            if name == "state_change":
                out.append(state_notice(at, event["guard"], data))
            elif name == "reload":
                changes = data.get("changes") or policies
                out.append(applied_notice(at, str(data.get("version", "?")), changes))
            elif name == "reload_failed":
                out.append(rejected_notice(at, data.get("error"), self.version))
            else:
                detail = " ".join(f"{k}={v}" for k, v in data.items())
                out.append(Notice(at, "state", event["guard"], f"{name} {detail}".strip()))
        return out


def _frame(sampler: RemoteSampler, url: str) -> Frame:
    return Frame(sampler.elapsed(), 0, 0, "", "", url, sampler.version, title="policyengine top")


def run(args: argparse.Namespace) -> int:
    """The `top` command; returns the exit code."""
    url = args.url
    sampler = RemoteSampler(url)
    view: View
    if args.once:
        view = PlainView(sys.stdout, every=args.interval)  # the second sample is printed
    else:
        view, note = make_view(args.no_tty)
        if note is not None:
            print(f"policyengine top: {note}", file=sys.stderr)
    try:
        rows, notices = sampler.poll()  # fails early, before any view starts
        if args.once:
            time.sleep(args.interval)  # rates need a second sample
            rows, later = sampler.poll()
            view.update(rows, notices + later, _frame(sampler, url))
            return 0
        view.show_intro(f"watching {sampler.url} every {args.interval:g}s; Ctrl-C to quit")
        view.update(rows, notices, _frame(sampler, url))
        while args.duration is None or sampler.elapsed() < args.duration:
            time.sleep(args.interval)
            rows, notices = sampler.poll()
            view.update(rows, notices, _frame(sampler, url))
        return 0
    except StatusUnavailable as exc:
        print(f"policyengine top: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    finally:
        view.close([])


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def add_parser(sub: _SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `top` to the command line's subcommands (listed in `_commands.cli.COMMAND_MODULES`)."""
    p = sub.add_parser("top", help="live view of a running service's /status (states, rates)")
    p.add_argument(
        "url",
        metavar="URL",
        help="where the service serves policyengine.asgi.status_app (URL/status is read)",
    )
    p.add_argument(
        "--interval", type=_positive, default=1.0, metavar="SECONDS", help="between two samples"
    )
    p.add_argument("--once", action="store_true", help="print one sample as plain lines, exit")
    p.add_argument("--no-tty", action="store_true", help="plain lines instead of the live view")
    p.add_argument("--duration", type=_positive, metavar="SECONDS", help="stop after this long")
    p.set_defaults(run=run)
