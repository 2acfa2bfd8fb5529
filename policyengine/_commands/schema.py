"""The JSON Schema of policy files, generated from the models, for editors and CI.

Written as draft-07 (``definitions`` and ``#/definitions/...`` references), which every TOML
editor understands (Taplo / Even Better TOML, JetBrains), with sorted keys and a trailing newline
so the checked-in file diffs cleanly. A policy or template may leave keys to what it extends, so
no option table marks a key as required (only a matcher's ``type`` is, since lists replace).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from .._config.models import PolicyFile
from .._config.units import DURATION_PATTERN, format_duration

__all__ = ["SCHEMA_PATH", "build_schema", "check_schema", "render_schema"]

SCHEMA_PATH = Path("schema") / "policies.schema.json"
_KEEP_REQUIRED = {"ExceptionMatcher"}


def _for_toml(node: Any) -> Any:
    """Adapt a Pydantic schema node to TOML and draft-07: TOML has no null (an optional key is
    simply left out), durations default to strings, references point into ``definitions``."""
    if isinstance(node, list):
        return [_for_toml(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _for_toml(v) for k, v in node.items() if not (k == "default" and v is None)}
    if "$ref" in out:
        out["$ref"] = out["$ref"].replace("#/$defs/", "#/definitions/")
    branches = [b for b in out.get("anyOf", []) if b != {"type": "null"}]
    if "anyOf" in out:
        del out["anyOf"]
        if len(branches) == 1:
            out = {**branches[0], **out}
        else:
            out["anyOf"] = branches
    default = out.get("default")
    if out.get("pattern") == DURATION_PATTERN and isinstance(default, int | float):
        out["default"] = format_duration(default)
    return out


def build_schema() -> dict[str, Any]:
    """The schema as a dict: `PolicyFile.model_json_schema()` adapted for editors."""
    schema = _for_toml(PolicyFile.model_json_schema())
    definitions = schema.pop("$defs", {})
    for name, definition in definitions.items():
        if name not in _KEEP_REQUIRED:
            definition.pop("required", None)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "policyengine policy file",
        "description": (
            "Named resilience policies (timeout, retry, breaker, bulkhead, fallback). "
            "Check a file with `policyengine validate PATH`."
        ),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
        "definitions": definitions,
    }


def render_schema() -> str:
    """The exact text of ``schema/policies.schema.json``."""
    return json.dumps(build_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def check_schema(path: Path) -> str | None:
    """None when `path` holds the current schema; else what differs and how to fix it."""
    expected = render_schema()
    try:
        actual = path.read_text(encoding="utf-8")
    except OSError:
        return f"{path} is missing; write it with `policyengine schema -o {path}`"
    if actual == expected:
        return None
    diff = difflib.unified_diff(
        actual.splitlines(), expected.splitlines(), str(path), "generated", lineterm="", n=1
    )
    lines = list(diff)
    shown = "\n".join(lines[:40]) + ("\n..." if len(lines) > 40 else "")
    return (
        f"{path} is out of date with the models; regenerate it with "
        f"`policyengine schema -o {path}`\n{shown}"
    )
