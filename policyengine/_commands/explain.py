"""`policyengine explain`: one policy after inheritance, where each value came from, its retry
schedule with jitter bounds, and its worst-case latency."""

from __future__ import annotations

import json
from typing import Any

import tomli_w

from .._config.inherit import leaves
from .._config.latency import retry_sleeps, show, worst_case
from .._config.lines import KeyPath, dotted
from .._config.loader import PolicySet
from .._config.models import Policy
from .._patterns.retry import DEFAULT_MAX_RETRY_AFTER

__all__ = ["explain_text", "explain_toml", "toml_value"]

_SECTIONS = ("timeout", "retry", "breaker", "bulkhead", "fallback")
_LISTED_RETRIES = 20


def toml_value(value: Any) -> str:
    """`value` as an inline TOML value: ``"2s"``, ``true``, ``[408, 429]``, ``{ x = 1 }``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{dotted((k,))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return repr(value)


def _dump(policy: Policy) -> dict[str, Any]:
    data: dict[str, Any] = policy.model_dump(mode="json", exclude_none=True)
    data.pop("extends", None)
    return data


def _value_at(data: dict[str, Any], path: KeyPath) -> Any:
    node: Any = data
    for seg in path:
        node = node[seg]
    return node


def _settings(ps: PolicySet, name: str, policy: Policy) -> list[str]:
    data = _dump(policy)
    origins = ps.origins.get(name, {})
    rows = [(dotted(p), toml_value(_value_at(data, p))) for p in leaves(data)]
    width = min(48, max(len(f"{k} = {v}") for k, v in rows) + 2)
    out = []
    for key, value in rows:
        text = f"{key} = {value}"
        origin = origins.get(key, "default")
        out.append(f"  {text:<{width}} {origin}" if len(text) < width else f"  {text}  {origin}")
    missing = [s for s in _SECTIONS if getattr(policy, s) is None]
    if missing:
        out.append(f"  (no {', no '.join(missing)}: not set here nor in what it extends)")
    return out


def _schedule(policy: Policy) -> list[str]:
    retry = policy.retry
    if retry is None or retry.max_attempts < 2:
        return ["retry schedule: no retries (one attempt)"]
    shape = {
        "constant": f"constant {show(retry.initial_delay)}",
        "linear": f"linear: {show(retry.initial_delay)} x n",
        "exponential": f"exponential: {show(retry.initial_delay)} x {retry.multiplier:g}^(n-1)",
    }[retry.backoff]
    cap = f", capped at {show(retry.max_delay)}" if retry.max_delay is not None else ""
    out = [f"retry schedule ({retry.max_attempts} attempts; {shape}{cap}; {retry.jitter} jitter):"]
    decorrelated = retry.jitter == "decorrelated"
    if decorrelated:
        out[0] = out[0].replace("decorrelated jitter", "decorrelated jitter sets the sleep")
    sleeps = retry_sleeps(retry, limit=_LISTED_RETRIES)
    for s in sleeps:
        delay = "" if decorrelated else f"delay {show(s.delay)}, "
        out.append(f"  before retry {s.retry}: {delay}sleep in [{show(s.low)}, {show(s.high)}]")
    if retry.max_attempts - 1 > len(sleeps):
        out.append(f"  ... {retry.max_attempts - 1 - len(sleeps)} more retries")
    if retry.respect_retry_after:
        cap_hint = (
            show(retry.max_retry_after)
            if retry.max_retry_after is not None
            else f"{show(DEFAULT_MAX_RETRY_AFTER)}, the default"
        )
        out.append(f"  a Retry-After hint may lengthen a sleep (cap {cap_hint}, and the deadline)")
    return out


def _worst(policy: Policy) -> list[str]:
    case = worst_case(policy)
    latency = case.latency
    if latency is None:
        bound = f"at most timeout.total = {show(case.total)}" if case.total else "unbounded"
        line = f"worst case: no timeout.attempt, so each attempt may hang; {bound}"
    else:
        line = (
            f"worst case: {case.attempts} attempt{'s' if case.attempts != 1 else ''} x "
            f"{show(case.attempt or 0.0)} + {show(case.sleep_sum)} of sleeps = {show(latency)}"
        )
        if case.total is not None:
            verdict = "fits" if case.fits else "does NOT fit: later attempts are cut short"
            line += f"; timeout.total {show(case.total)}: {verdict}"
    out = [line]
    if case.queue_wait is not None:
        out.append(f"  plus up to {show(case.queue_wait)} of bulkhead queueing per attempt")
    return out


def explain_text(ps: PolicySet, name: str) -> str:
    """The human report on policy `name` (which must exist in `ps`)."""
    policy = ps.policies[name]
    head = f"policy {dotted((name,))} ({', '.join(ps.sources)}), mode = {toml_value(policy.mode)}"
    lines = [head, "", "effective settings (value, then where it was written):"]
    lines += _settings(ps, name, policy)
    lines += ["", *_schedule(policy), "", *_worst(policy)]
    return "\n".join(lines) + "\n"


def explain_toml(ps: PolicySet, name: str) -> str:
    """The effective policy as a TOML document that loads to the same policy on its own."""
    header = (
        f"# effective policy {name!r} from {', '.join(ps.sources)} "
        f"(version {ps.version}), inheritance resolved\n"
    )
    return header + tomli_w.dumps({"policies": {name: _dump(ps.policies[name])}})
