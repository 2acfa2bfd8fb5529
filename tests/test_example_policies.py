"""The example `policies/policies.toml`: realistic, complete, and clean under --strict."""

from __future__ import annotations

import copy
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pydantic import BaseModel

from policyengine._commands.explain import explain_text, explain_toml
from policyengine._config.imports import resolve_handler
from policyengine._config.loader import load_path, load_text
from policyengine._config.models import ExceptionMatcher, Policy, PolicyFile, StateOptions
from policyengine._config.units import DURATION_PATTERN, parse_duration
from policyengine.exceptions import PolicyValidationError

EXAMPLE = Path(__file__).resolve().parent.parent / "policies" / "policies.toml"


def test_example_loads_strict_without_warnings() -> None:
    ps = load_path(EXAMPLE, strict=True)
    assert list(ps.policies) == ["payments", "inventory", "search", "reports"]
    assert ps.warnings == ()


def _fields(model: type[BaseModel], prefix: str) -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        out.add(f"{prefix}{name}")
        for arg in [info.annotation, *typing.get_args(info.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                is_model = isinstance(inner, type) and issubclass(inner, BaseModel)
                if is_model and inner is not Policy:
                    out |= _fields(inner, f"{prefix}{name}.")
    return out


def _written(node: Any, prefix: str, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            out.add(path)
            if key not in ("value",):
                _written(value, f"{path}.", out)
    elif isinstance(node, list):
        for item in node:
            _written(item, prefix, out)


def test_example_uses_every_key_of_the_format() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    written: set[str] = set()
    _written({k: v for k, v in data.items() if k not in ("templates", "policies")}, "", written)
    for section in ("templates", "policies"):
        for policy in data[section].values():
            _written(policy, "", written)
    wanted = _fields(PolicyFile, "") - {"templates", "policies"}
    wanted |= _fields(Policy, "")
    matcher = {f"retry.never_retry.{f}" for f in ExceptionMatcher.model_fields}
    wanted |= matcher
    # keys of a change in progress, not of standing configuration: a drill fails --strict, and
    # a [record] or a ramp in the shipped example would write traces / ramp wherever it loads
    wanted = {k for k in wanted if k.split(".")[0] not in ("chaos", "record", "enforce", "ramp")}
    assert not (wanted - written), f"keys the example never uses: {sorted(wanted - written)}"
    assert set(data["state"]) == set(StateOptions.model_fields)


def test_example_exception_types_and_handlers_import() -> None:
    ps = load_path(EXAMPLE)
    handlers = [
        p.fallback.handler for p in ps.policies.values() if p.fallback and p.fallback.handler
    ]
    assert handlers and all(callable(resolve_handler(h)) for h in handlers)
    assert handlers[0] and resolve_handler(handlers[0])(TimeoutError())["status"] == "cached"


def test_every_example_policy_explains_and_round_trips_through_toml() -> None:
    ps = load_path(EXAMPLE)
    for name, policy in ps.policies.items():
        assert "worst case" in explain_text(ps, name)
        again = load_text(explain_toml(ps, name), strict=True)
        assert again.policies[name] == policy


def _durations(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and path[-2:] != ("fallback", "value"):
            out += _durations(value, path)
        elif isinstance(value, str) and re.fullmatch(DURATION_PATTERN, value):
            out.append(path)
    return out


def _set(data: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def test_following_a_bare_number_hint_gives_back_a_valid_file() -> None:
    """Each duration of the example written as the bare number a user would type (ms for
    sub-second values, else seconds): the hint must name the value meant, and the file with
    the hint applied must validate with no new warning."""
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    warnings = len(load_text(text).warnings)
    paths = _durations(data)
    assert len(paths) >= 15
    for path in paths:
        seconds = parse_duration(_get(data, path))
        bare = round(seconds * 1000) if seconds < 1 else seconds
        bare = int(bare) if float(bare).is_integer() else bare
        with pytest.raises(PolicyValidationError) as info:
            load_text(tomli_w.dumps(_set(data, path, bare)), "p.toml")
        [issue] = info.value.errors
        assert issue.path == ".".join(path), issue
        hints = re.findall(r'"([^"]+)"', issue.message)
        meant = [h for h in hints if parse_duration(h) == pytest.approx(seconds)]
        assert len(meant) == 1 and len(hints) <= 2, issue.message
        fixed = load_text(tomli_w.dumps(_set(data, path, meant[0])))
        assert len(fixed.warnings) == warnings, (path, fixed.warnings)


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data
