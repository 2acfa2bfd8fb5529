"""Read policy files into a validated `PolicySet` (first cut; positions come in `_lines`)."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._models import Policy, PolicyFile, StateOptions
from .exceptions import PolicyIssue, PolicyValidationError

__all__ = ["PolicySet", "load_path", "load_text"]


@dataclass(frozen=True)
class PolicySet:
    """Everything one load produced: effective policies (extends resolved), state options,
    the files read, a content hash, and warnings."""

    policies: Mapping[str, Policy]
    state: StateOptions
    sources: tuple[str, ...]
    version: str
    warnings: tuple[PolicyIssue, ...] = ()
    origins: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve(name: str, raw: dict[str, dict[str, Any]], tmpl: dict[str, dict[str, Any]]) -> Any:
    seen: list[str] = []
    chain: list[dict[str, Any]] = []
    node = raw[name]
    while True:
        chain.append(node)
        parent = node.get("extends")
        if parent is None:
            if node is not tmpl.get("default") and "default" in tmpl and len(seen) == 0:
                parent = "default"
            else:
                break
        if parent in seen:
            raise ValueError(f"extends forms a cycle: {' -> '.join([*seen, parent])}")
        seen.append(parent)
        node = tmpl.get(parent) or raw.get(parent)  # type: ignore[assignment]
        if node is None:
            raise ValueError(f"extends {parent!r}: no template or policy of that name")
    merged: dict[str, Any] = {}
    for node in reversed(chain):
        merged = _merge(merged, node)
    merged.pop("extends", None)
    return merged


def _validate(doc: dict[str, Any], source: str, text: str) -> PolicySet:
    issues: list[PolicyIssue] = []
    try:
        parsed = PolicyFile.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"])
            issues.append(PolicyIssue(source, None, path, err["msg"]))
        raise PolicyValidationError(issues) from None
    raw_policies = doc.get("policies", {})
    raw_templates = doc.get("templates", {})
    effective: dict[str, Policy] = {}
    for name in parsed.policies:
        try:
            effective[name] = Policy.model_validate(_resolve(name, raw_policies, raw_templates))
        except (ValueError, ValidationError) as exc:
            issues.append(PolicyIssue(source, None, f"policies.{name}.extends", str(exc)))
    if issues:
        raise PolicyValidationError(issues)
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    return PolicySet(effective, parsed.state, (source,), version)


def load_text(text: str, source: str = "<string>") -> PolicySet:
    """Validate a TOML document; PolicyValidationError lists every problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyValidationError([PolicyIssue(source, None, "", str(exc))]) from None
    return _validate(doc, source, text)


def load_path(path: str | Path) -> PolicySet:
    """Validate a file, or every ``*.toml`` in a directory (merged)."""
    p = Path(path)
    files = sorted(p.glob("*.toml")) if p.is_dir() else [p]
    texts = [f.read_text(encoding="utf-8") for f in files]
    result = load_text("\n".join(texts), str(files[0]) if files else str(p))
    return PolicySet(
        result.policies, result.state, tuple(str(f) for f in files), result.version
    )
