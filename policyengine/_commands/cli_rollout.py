"""`policyengine simulate` and `policyengine suggest`: try an edit on recorded traffic first.

    policyengine simulate POLICIES TRACE [--against OLD] [--format json] [--fail-if EXPR]
    policyengine suggest TRACE

`--fail-if` takes conditions on the replay of POLICIES, for CI on policy pull requests:
``METRIC OP VALUE``, optionally ``GUARD:`` first, several joined by ``,`` or `` or `` (any one
met fails); the flag may be repeated. Metrics: calls, successes, failures, rejected (all
reasons), rejected.circuit_open (or another reason), trips, time_open, retries, retries_added,
timeouts, fallbacks, p50, p99 (durations take a unit: ``p99>250ms``). Ops: > >= < <= == !=.
A small parser, not `eval`: anything else is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import operator
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._config.loader import PolicySet, load_path
from .._config.units import format_duration, parse_duration
from .._rollout.simulate import TOLERANCE, GuardReport, recorded_report, replay
from .._rollout.suggest import suggest
from .._rollout.trace import TraceError, group_calls, read_trace
from ..exceptions import PolicyValidationError
from .cli import add_import_option, import_paths

__all__ = ["Condition", "add_parser", "parse_conditions"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
    ">": operator.gt, "<": operator.lt,
}  # fmt: skip
_METRICS = (
    "calls", "successes", "failures", "rejected", "trips", "time_open", "retries",
    "retries_added", "timeouts", "fallbacks", "p50", "p99",
)  # fmt: skip
_TIMES = ("time_open", "p50", "p99")
_COND = re.compile(
    r"^\s*(?:(?P<guard>[A-Za-z0-9_-]+)\s*:)?\s*(?P<metric>[a-z_0-9]+(?:\.[a-z_0-9]+)?)\s*"
    r"(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>[0-9][0-9.a-zµ]*)\s*$"
)


@dataclass(frozen=True)
class Condition:
    """One `--fail-if` condition, as written."""

    text: str
    guard: str | None
    metric: str
    op: str
    value: float

    def failing(self, reports: dict[str, dict[str, Any]]) -> list[str]:
        """The guards (of `reports`) for which the condition holds."""
        out = []
        for name, figures in reports.items():
            if self.guard is not None and name != self.guard:
                continue
            if self.metric.startswith("rejected."):
                actual = figures["rejected"].get(self.metric.partition(".")[2], 0)
            elif self.metric == "rejected":
                actual = figures["rejected_total"]
            else:
                actual = figures[self.metric]
            if _OPS[self.op](float(actual), self.value):
                out.append(name)
        return out


def parse_conditions(texts: list[str]) -> list[Condition]:
    """Every condition of every `--fail-if`; ValueError saying what is wrong."""
    out = []
    for text in texts:
        for part in re.split(r",|\s+or\s+", text):
            m = _COND.match(part)
            if m is None:
                raise ValueError(
                    f"--fail-if {part.strip()!r}: write METRIC OP VALUE, e.g. "
                    '"trips>0" or "payments:p99>250ms"'
                )
            metric, raw = m["metric"], m["value"]
            base = metric.partition(".")[0]
            if base not in _METRICS or (base != "rejected" and "." in metric):
                raise ValueError(
                    f"--fail-if {part.strip()!r}: no metric {metric!r}; "
                    f"known: {', '.join(_METRICS)}, rejected.REASON"
                )
            if base in _TIMES:
                value = parse_duration(raw) if not raw.replace(".", "").isdigit() else float(raw)
            else:
                try:
                    value = float(raw)
                except ValueError:
                    raise ValueError(
                        f"--fail-if {part.strip()!r}: {raw!r} is not a number"
                    ) from None
            out.append(Condition(part.strip(), m["guard"], metric, m["op"], value))
    return out


def _load(path: str, import_path: list[str]) -> PolicySet:
    with import_paths(import_path):
        return load_path(path)


def _figures(reports: dict[str, GuardReport]) -> dict[str, dict[str, Any]]:
    return {name: r.as_dict() for name, r in sorted(reports.items())}


_ROWS: tuple[tuple[str, str], ...] = (
    ("calls", "calls"), ("successes", "successes"), ("failures", "failures"),
    ("rejected_total", "rejected"), ("trips", "trips"), ("time_open", "time open"),
    ("retries", "retries"), ("retries_added", "retries added"), ("timeouts", "timeouts"),
    ("fallbacks", "fallbacks"), ("p50", "p50 latency"), ("p99", "p99 latency"),
)  # fmt: skip


def _cell(key: str, value: Any) -> str:
    if key in _TIMES:
        return format_duration(round(value, 3)) if value else "0s"
    if key == "retries_added" and value > 0:
        return f"+{value}"
    return str(value)


def _text(columns: dict[str, dict[str, dict[str, Any]]]) -> str:
    names = sorted({g for col in columns.values() for g in col})
    heads = list(columns)
    lines = []
    for name in names:
        lines.append(f"{name:<24}" + "".join(f"{h:>12}" for h in heads))
        reasons = sorted({r for c in columns.values() for r in c.get(name, {}).get("rejected", {})})
        rows = list(_ROWS)
        at = rows.index(("rejected_total", "rejected")) + 1
        rows[at:at] = [(f"rejected.{r}", f"  {r}") for r in reasons]
        for key, label in rows:
            cells = []
            for head in heads:
                figures = columns[head].get(name)
                if figures is None:
                    cells.append("-")
                elif key.startswith("rejected."):
                    cells.append(str(figures["rejected"].get(key.partition(".")[2], 0)))
                elif head == "recorded" and key in ("trips", "time_open", "retries_added"):
                    cells.append("-")  # not in a trace
                else:
                    cells.append(_cell(key, figures[key]))
            lines.append(f"  {label:<22}" + "".join(f"{c:>12}" for c in cells))
        lines.append("")
    lines.append(f"replay tolerance: {TOLERANCE} (see `policyengine simulate --help`)")
    return "\n".join(lines) + "\n"


def _simulate(args: argparse.Namespace) -> int:
    try:
        conditions = parse_conditions(args.fail_if)
    except ValueError as exc:
        print(f"policyengine simulate: {exc}", file=sys.stderr)
        return 2
    try:
        new = _load(args.policies, args.import_path)
        old = _load(args.against, args.import_path) if args.against else None
        calls = group_calls(read_trace(args.trace))
    except (PolicyValidationError, TraceError) as exc:
        print(exc, file=sys.stderr)
        return 1
    columns = {"recorded": _figures(recorded_report(calls))}
    if old is not None:
        columns["old"] = _figures(replay(old, calls))
    columns["new"] = _figures(replay(new, calls))
    failed = [
        f"{c.text} ({name})" for c in conditions for name in c.failing(columns["new"])
    ]  # fmt: skip
    if args.format == "json":
        doc = {"guards": columns, "failed": failed, "tolerance": TOLERANCE}
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(_text(columns))
        for line in failed:
            print(f"fail-if: {line}")
    return 1 if failed else 0


def _suggest(args: argparse.Namespace) -> int:
    try:
        attempts = read_trace(args.trace)
    except TraceError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.stdout.write(suggest(attempts, args.trace))
    return 0


def add_parser(sub: Any) -> None:
    """Register `simulate` and `suggest` on the command line's subparsers (`COMMAND_MODULES`)."""
    p = sub.add_parser(
        "simulate",
        help="replay a recorded trace through policies (and --against the old ones)",
        description="Replay a trace through the policies on virtual time. " + TOLERANCE + ".",
    )
    p.add_argument("policies", metavar="POLICIES", help="the policy file (or directory) to try")
    p.add_argument("trace", metavar="TRACE", help="a trace written by [record]")
    p.add_argument("--against", metavar="OLD", help="the policies in force, side by side")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="EXPR",
        help='exit 1 if a condition holds for a guard, e.g. "trips>0" or "payments:p99>250ms"',
    )
    add_import_option(p)
    p.set_defaults(run=_simulate)
    p = sub.add_parser("suggest", help="derive policy values from a recorded trace (prints TOML)")
    p.add_argument("trace", metavar="TRACE", help="a trace written by [record]")
    p.set_defaults(run=_suggest)
