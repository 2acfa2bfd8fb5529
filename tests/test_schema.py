"""The checked-in JSON Schema matches the models, and editors can use it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from policyengine._commands.schema import SCHEMA_PATH, build_schema, check_schema, render_schema

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / SCHEMA_PATH
EXAMPLE = ROOT / "policies" / "policies.toml"


def test_checked_in_schema_is_up_to_date() -> None:
    assert CHECKED_IN.read_text(encoding="utf-8") == render_schema(), (
        "schema/policies.schema.json drifted from the models: run `policyengine schema`"
    )
    assert check_schema(CHECKED_IN) is None


def test_check_schema_explains_drift(tmp_path: Path) -> None:
    stale = tmp_path / "s.json"
    stale.write_text(render_schema().replace('"maxItems"', '"maxItemz"').replace("Probes", "Pr"))
    problem = check_schema(stale)
    assert problem is not None and "out of date" in problem and "policyengine schema" in problem
    assert "missing" in (check_schema(tmp_path / "none.json") or "")


def test_rendering_is_stable_sorted_and_ends_with_a_newline() -> None:
    text = render_schema()
    assert text == render_schema() and text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node, *[n for v in node.values() for n in _walk(v)]]
    if isinstance(node, list):
        return [n for v in node for n in _walk(v)]
    return []


def test_schema_suits_toml_editors() -> None:
    schema = build_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["title"] and "$defs" not in schema
    nodes = _walk(schema)
    refs = [n["$ref"] for n in nodes if "$ref" in n]
    assert refs and all(r.startswith("#/definitions/") for r in refs)
    assert all(r.removeprefix("#/definitions/") in schema["definitions"] for r in refs)
    assert {"type": "null"} not in nodes  # TOML has no null: optional keys are left out
    assert all(n.get("default", 0) is not None for n in nodes)
    # partial policies are completed by `extends`: only a matcher's `type` is required
    required = {name for name, d in schema["definitions"].items() if "required" in d}
    assert required == {"ExceptionMatcher"}
    retry = schema["definitions"]["RetryOptions"]["properties"]
    assert retry["initial_delay"]["default"] == "100ms"  # durations default to strings


def test_example_starts_with_the_schema_directive() -> None:
    first = EXAMPLE.read_text(encoding="utf-8").splitlines()[0]
    assert first == "#:schema ../schema/policies.schema.json"
    assert (EXAMPLE.parent / first.removeprefix("#:schema ")).resolve() == CHECKED_IN


def test_schema_validates_the_example_and_rejects_mistakes() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = build_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert list(validator.iter_errors(example)) == []
    bad = {"policies": {"p": {"retry": {"retries": 3, "initial_delay": 2, "max_attempts": 0}}}}
    assert len(list(validator.iter_errors(bad))) == 3
