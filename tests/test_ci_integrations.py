"""What CI runs on policy files: the pre-commit hook this repository ships, and the JSON Schema
checked by a real editor engine (taplo, the engine of Even Better TOML) on the example files
and on the mistakes users make (issue 20)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schema" / "policies.schema.json"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    found = BIN / name
    return str(found) if found.exists() else shutil.which(name)


# -- pre-commit -------------------------------------------------------------------------------


def _hooks() -> list[dict[str, object]]:
    yaml = pytest.importorskip("yaml")
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(hooks, list)
    return hooks


def test_the_pre_commit_hook_is_well_formed() -> None:
    [hook] = [h for h in _hooks() if h["id"] == "policyengine-validate"]
    for key in ("id", "name", "entry", "language"):  # what pre-commit requires of a hook
        assert isinstance(hook[key], str) and hook[key]
    assert hook["language"] == "python" and hook["pass_filenames"] is False
    assert hook["entry"] == "policyengine validate"


def _run_hook(cwd: Path) -> subprocess.CompletedProcess[str]:
    [hook] = _hooks()
    entry = shlex.split(str(hook["entry"]))
    exe = _tool(entry[0])
    if exe is None:
        pytest.skip("the policyengine script is not installed in this environment")
    argv = [exe, *entry[1:], *[str(a) for a in hook["args"]]]  # type: ignore[attr-defined]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_hook_passes_the_example_policies_and_fails_a_broken_one(tmp_path: Path) -> None:
    result = _run_hook(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.toml").write_text("[policies.p.retry]\ninitial_delay = 100\n")
    result = _run_hook(tmp_path)
    assert result.returncode == 1
    assert 'policies.p.retry.initial_delay: error: a duration needs a unit: write "100ms"' in (
        result.stdout
    )


# -- taplo ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taplo() -> str:
    exe = _tool("taplo")
    if exe is None:
        pytest.skip("taplo is not installed (pip install taplo: it is in the dev extra)")
    return exe


def _check(taplo: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [taplo, "check", "--schema", SCHEMA.as_uri(), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"},
    )


def test_taplo_accepts_every_example_policy_file(taplo: str) -> None:
    files = sorted((ROOT / "policies").glob("*.toml"))
    assert files
    result = _check(taplo, *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_taplo_accepts_the_starter(taplo: str, tmp_path: Path) -> None:
    from policyengine._commands.starter import starter

    for flavour in (True, False):
        path = tmp_path / f"starter-{flavour}.toml"
        path.write_text(starter(str(path), None, httpx=flavour))
        result = _check(taplo, path)
        assert result.returncode == 0, result.stdout + result.stderr


MISTAKES = {
    "a bare number for a duration": "[policies.p.retry]\ninitial_delay = 100\n",
    "a duration without a unit": '[policies.p.timeout]\ntotal = "3"\n',
    "a misspelt key": "[policies.p.retry]\nmax_attempt = 3\n",
    "retries instead of max_attempts": "[policies.p.retry]\nretries = 2\n",
    "an unknown section": "[policies.p.circuit]\nconsecutive_failures = 5\n",
    "a mode that does not exist": '[policies.p]\nmode = "enforced"\n',
    "a jitter that does not exist": '[policies.p.retry]\njitter = "random"\n',
    "a ratio above 1": "[policies.p.breaker]\nfailure_rate = 1.5\n",
    "a percentage without %": '[policies.p.breaker]\nfailure_rate = "50"\n',
    "an integer as a string": '[policies.p.bulkhead]\nmax_concurrent = "10"\n',
    "zero attempts": "[policies.p.retry]\nmax_attempts = 0\n",
    "a string where a list goes": '[policies.p.retry]\nretry_on = "ConnectionError"\n',
    "a matcher table without type": "[policies.p.retry]\nnever_retry = [{ status = [404] }]\n",
    "an unknown fallback kind": '[policies.p.fallback]\nvalue = 1\non = ["open"]\n',
    "an unknown state backend": '[state]\nbackend = "redis-cluster"\n',
    "a state url of another scheme": '[state]\nurl = "http://cache:6379"\n',
    "a schema version from the future": "schema_version = 2\n",
}


@pytest.mark.parametrize("text", MISTAKES.values(), ids=MISTAKES.keys())
def test_taplo_refuses_typical_mistakes(taplo: str, tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text("schema_version = 1\n" * ("schema_version" not in text) + text)
    result = _check(taplo, path)
    assert result.returncode != 0, f"taplo accepted:\n{text}"
    tomllib.loads(text)  # valid TOML: so what taplo refused is the schema
    assert f"{path}:" in result.stdout + result.stderr  # its diagnostic points into the file
    from policyengine._config.loader import load_text
    from policyengine.exceptions import PolicyValidationError

    with pytest.raises(PolicyValidationError):  # and policyengine agrees
        load_text(path.read_text())


def test_the_schema_is_draft_07_as_editors_expect() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_taplo_follows_the_files_own_schema_line_as_an_editor_does(
    taplo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --schema: the `#:schema ../schema/policies.schema.json` line that the examples and
    `policyengine init` write is what Even Better TOML reads."""
    from policyengine._commands.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["schema"]) == 0 and main(["init"]) == 0
    starter = tmp_path / "policies" / "policies.toml"
    shutil.copy(ROOT / "policies" / "demo.toml", tmp_path / "policies" / "demo.toml")

    def check(*files: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [taplo, "check", *map(str, files)], capture_output=True, text=True, timeout=60
        )

    result = check(starter, tmp_path / "policies" / "demo.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    starter.write_text(starter.read_text().replace("max_attempts = 3", 'max_attempts = "3"'))
    result = check(starter)
    assert result.returncode != 0
    assert '"3" is not of type "integer"' in result.stdout + result.stderr
