"""Turn Pydantic's validation errors into short messages on key paths, with hints.

Pydantic locations carry validator noise (union tags such as ``path``, ``function-after[...]``);
`clean_loc` keeps only the segments that are keys or indexes of the data, so a location reads
like the TOML the user wrote. `describe` words each error for a person editing that file.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from .lines import KeyPath
from .models import FieldError, Policy

__all__ = ["clean_loc", "describe", "model_at", "suggest", "without_typo_echoes"]

_SECTIONS = ("timeout", "retry", "breaker", "bulkhead", "fallback")


def clean_loc(loc: tuple[int | str, ...], data: Any, *, missing: bool = False) -> KeyPath:
    """The segments of `loc` that exist in `data` (a missing key keeps its last segment)."""
    out: list[str | int] = []
    node = data
    for i, seg in enumerate(loc):
        in_dict = isinstance(node, dict) and seg in node
        in_list = isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)
        if in_dict or in_list:
            node = node[seg]
        elif not (missing and i == len(loc) - 1):
            continue
        out.append(seg)
    return tuple(out)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def model_at(root: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    """The model that validates the table at `path` under `root`, if any."""
    model: type[BaseModel] | None = root
    for seg in path:
        if model is None:
            return None
        if isinstance(seg, int):
            continue
        field = model.model_fields.get(seg)
        if field is None:
            return None
        models = _models_in(field.annotation)
        model = models[0] if models else None
    return model


def suggest(word: str, choices: typing.Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, _dt.date | _dt.time):
        return "a date/time"
    return repr(value)


def _unknown_key(key: str, parent: KeyPath, value: Any, root: type[BaseModel]) -> str:
    model = model_at(root, parent)
    if key == "retries" and model in (Policy, model_at(Policy, ("retry",))):
        where = "max_attempts" if model is not Policy else "retry.max_attempts"
        if isinstance(value, int) and not isinstance(value, bool):
            fix = f"`{where} = {value + 1}`"
        else:
            fix = f"`{where} = retries + 1`"
        return (
            "unknown key `retries`: policies count attempts, the first call included; "
            f"write {fix} (max_attempts = retries + 1)"
        )
    message = f"unknown key `{key}`"
    if model is None:
        return message
    fields = list(model.model_fields)
    close = suggest(key, fields)
    if close is not None:
        return f"{message} (did you mean `{close}`?)"
    if root is Policy:
        for section in _SECTIONS:
            home = model_at(Policy, (section,))
            if home is not None and home is not model and key in home.model_fields:
                return f"{message}: `{key}` belongs in the `{section}` table"
    return f"{message}; allowed keys: {', '.join(fields)}"


_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "greater than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def describe(err: ErrorDetails, rel: KeyPath, root: type[BaseModel]) -> tuple[KeyPath, str]:
    """(the key path relative to `root`, the message) of one error at cleaned location `rel`."""
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return rel, _unknown_key(str(rel[-1]), rel[:-1], value, root)
    if kind == "missing":
        return rel, f"missing required key `{rel[-1]}`"
    if kind in ("value_error", "assertion_error"):
        error = ctx.get("error")
        if isinstance(error, FieldError):
            return (*rel, error.key), str(error)
        return rel, str(error) if error is not None else err["msg"]
    if kind == "literal_error":
        expected = re.split(r", | or ", str(ctx.get("expected", "")))
        allowed = [f'"{a[1:-1]}"' if a.startswith("'") else a for a in expected]
        choices = " or ".join(
            [", ".join(allowed[:-1]), allowed[-1]] if len(allowed) > 1 else allowed
        )
        close = suggest(_shown(value), allowed) if isinstance(value, str) else None
        hint = f" (did you mean {close}?)" if close else ""
        return rel, f"{_shown(value)} is not allowed here: use {choices}{hint}"
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return rel, f"must be {words} {ctx.get(name)}, got {_shown(value)}"
    if kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {_shown(value)}"
        if kind == "list_type" and isinstance(value, str):
            message += f' (write ["{value}"])'
        return rel, message
    if kind == "string_too_short":
        return rel, "must not be empty"
    return rel, err["msg"]


def without_typo_echoes(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop a "missing key" error when an unknown key beside it is that key misspelt: one
    mistake, reported once (as the unknown key, with its did-you-mean)."""
    unknown = [(e["loc"][:-1], str(e["loc"][-1])) for e in errors if e["type"] == "extra_forbidden"]
    if not unknown:
        return errors

    def echo(e: ErrorDetails) -> bool:
        if e["type"] != "missing":
            return False
        parent, wanted = e["loc"][:-1], str(e["loc"][-1])
        return any(p == parent and suggest(key, [wanted]) for p, key in unknown)

    return [e for e in errors if not echo(e)]
