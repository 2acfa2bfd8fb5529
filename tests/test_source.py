"""Policy sources: the one route for loading and reloading, the default path resolved in one
place, and a loaded set that remembers where `[state]` was written."""

from __future__ import annotations

from pathlib import Path

import pytest

import policyengine
from policyengine import Engine
from policyengine._config.loader import load_path, load_text
from policyengine._config.source import (
    DEFAULT_FILE,
    FileSource,
    FixedSource,
    TextSource,
    default_path,
)
from policyengine._registry.staging import state_issue

POLICY = '[policies.api.timeout]\nattempt = "1s"\n'


def test_the_default_path_is_the_environment_else_the_default_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POLICYENGINE_FILE", raising=False)
    assert default_path() == Path(DEFAULT_FILE) == Path("policies/policies.toml")
    monkeypatch.setenv("POLICYENGINE_FILE", "/etc/app/policies.toml")
    assert default_path() == Path("/etc/app/policies.toml")


def test_load_and_loads_go_through_a_source(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(POLICY)
    engine = policyengine.load(path, default=False, strict=True)
    assert engine.source == FileSource(path, strict=True) and engine.strict
    assert engine.path == path
    text = policyengine.loads(POLICY, source="inline", default=False)
    assert text.source == TextSource(POLICY, "inline") and not text.strict
    assert text.path is None and text.status()["sources"] == ["inline"]
    with pytest.raises(RuntimeError, match="not loaded from a path"):
        text.reload()


def test_an_engine_from_a_policy_set_reloads_from_its_path(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(POLICY)
    engine = Engine(load_path(path), path=path)
    assert isinstance(engine.source, FixedSource) and engine.path == path
    path.write_text(POLICY.replace("1s", "2s"))
    assert engine.reload() is True
    assert Engine(load_text(POLICY)).path is None


def test_the_set_remembers_where_state_was_written(tmp_path: Path) -> None:
    """A `[state]` whose backend cannot be built is located from the loaded set, without
    reading any file again (the file may have changed or gone since)."""
    path = tmp_path / "policies.toml"
    path.write_text(f'# comment\n\n[state]\nbackend = "redis"\nurl = "redis://h:1/0"\n\n{POLICY}')
    policy_set = load_path(path)
    path.unlink()
    issue = state_issue(policy_set, ValueError("cannot parse"))
    assert (issue.file, issue.line, issue.path) == (str(path), 5, "state.url")
    issue = state_issue(policy_set, ImportError("no redis"))
    assert (issue.line, issue.path) == (4, "state.backend")
    assert load_text(POLICY).state_doc is None
