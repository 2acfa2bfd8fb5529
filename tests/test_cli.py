"""The `policyengine` command line: validate, schema, explain, init, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from policyengine._commands.cli import main
from policyengine._commands.schema import render_schema
from policyengine._config.loader import load_path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policies" / "policies.toml"
BROKEN = """\
[policies.p]
mode = "enforced"

[policies.p.retry]
retries = 2
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    return path


def test_validate_the_example_directory_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(ROOT / "policies"), "--strict")
    assert code == 0, out
    assert "valid (" in out


def test_validate_the_example_file_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(EXAMPLE), "--strict")
    assert (code, out.strip()) == (0, f"{EXAMPLE}: valid (4 policies, 1 file)")


def test_validate_a_broken_file_exits_1_and_lists_every_problem(
    capsys: pytest.CaptureFixture[str], broken: Path
) -> None:
    code, out, _ = run(capsys, "validate", str(broken))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{broken}:2: policies.p.mode: error: ")
    assert lines[1].startswith(f"{broken}:5: policies.p.retry.retries: error: ")
    assert "max_attempts = 3" in lines[1]
    assert lines[-1] == "invalid: 2 errors"


def test_validate_json_is_one_document(capsys: pytest.CaptureFixture[str], broken: Path) -> None:
    code, out, _ = run(capsys, "validate", "--format", "json", str(broken), str(EXAMPLE))
    assert code == 1
    records = json.loads(out)
    assert [(r["file"], r["line"], r["path"], r["severity"]) for r in records] == [
        (str(broken), 2, "policies.p.mode", "error"),
        (str(broken), 5, "policies.p.retry.retries", "error"),
    ]
    assert set(records[0]) == {"file", "line", "path", "message", "severity"}


def test_validate_json_of_a_valid_file_is_an_empty_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "validate", "--format", "json", str(EXAMPLE))[:2] == (0, "[]\n")


def test_validate_github_annotations(capsys: pytest.CaptureFixture[str], broken: Path) -> None:
    code, out, _ = run(capsys, "validate", "--format", "github", str(broken))
    assert code == 1
    assert out.splitlines()[0].startswith(f"::error file={broken},line=2,title=policies.p.mode::")


def test_warnings_pass_unless_strict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "slow.toml"
    path.write_text('[policies.p]\ntimeout = { total = "1s", attempt = "1s" }\n')
    path.write_text(path.read_text() + 'retry = { max_delay = "1s" }\n')
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0 and ": warning: the worst-case retry schedule" in out
    assert "1 warning" in out
    code, out, _ = run(capsys, "validate", "--strict", str(path))
    assert code == 1 and ": error: the worst-case retry schedule" in out


def test_missing_file_is_invalid_not_a_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "validate", str(tmp_path / "nope.toml"))
    assert code == 1 and "no such file or directory" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "validate")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "validate", "--format", "yaml", str(EXAMPLE))[0] == 2
    assert run(capsys, "--help")[0] == 0


def test_import_path_lets_a_file_name_the_users_exceptions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "shopclient_errors.py").write_text("class Declined(Exception):\n    pass\n")
    (tmp_path / "here_errors.py").write_text("class Busy(Exception):\n    pass\n")
    policy = tmp_path / "p.toml"
    policy.write_text(
        '[policies.p.breaker]\nignore = ["shopclient_errors.Declined", "here_errors:Busy"]\n'
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "validate", str(policy))
    assert code == 1 and "no module named 'shopclient_errors'" in out
    saved = list(sys.path)
    assert run(capsys, "validate", "-I", str(lib), str(policy))[0] == 0
    assert sys.path == saved


def test_a_module_that_fails_to_import_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "p.toml").write_text('[policies.p.breaker]\nignore = ["broken_mod.X"]\n')
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "validate", "p.toml")
    assert (
        code == 1 and "importing 'broken_mod' for 'broken_mod.X' failed: RuntimeError: boom" in out
    )


# -- schema -----------------------------------------------------------------------------------


def test_schema_writes_under_the_current_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "schema", "--check")[0] == 1
    assert run(capsys, "schema")[0] == 0
    written = tmp_path / "schema" / "policies.schema.json"
    assert written.read_text() == render_schema()
    assert run(capsys, "schema", "--check")[:2] == (
        0,
        "schema/policies.schema.json is up to date\n",
    )
    written.write_text(render_schema().replace("Probes", "Pr"))
    code, _, err = run(capsys, "schema", "--check")
    assert code == 1 and "out of date" in err and "-Probes" not in err and "+" in err


def test_schema_output_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "deep" / "s.json"
    assert run(capsys, "schema", "-o", str(target))[0] == 0
    assert run(capsys, "schema", "--check", "-o", str(target))[0] == 0


def test_checked_in_schema_passes_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert run(capsys, "schema", "--check")[0] == 0


# -- explain ----------------------------------------------------------------------------------


def test_explain_shows_origins_schedule_and_worst_case(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", str(EXAMPLE), "payments")
    assert code == 0
    assert 'retry.max_delay = "2s"' in out
    origin_line = next(line for line in out.splitlines() if "retry.max_delay" in line)
    assert origin_line.endswith(f"{EXAMPLE}:21 (templates.default)")
    assert "breaker.window_duration" in out and out.count(" default\n") >= 1
    assert "before retry 1: delay 100ms, sleep in [0s, 100ms]" in out
    assert "before retry 3: delay 400ms, sleep in [0s, 400ms]" in out
    assert "worst case: 4 attempts x 450ms + 700ms of sleeps = 2.5s; timeout.total 3s: fits" in out


def test_explain_toml_is_the_effective_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", str(EXAMPLE), "search", "--format", "toml")
    assert code == 0
    data = tomllib.loads(out)
    assert data["policies"]["search"]["mode"] == "observe"
    assert data["policies"]["search"]["timeout"] == {"total": "2s", "attempt": "500ms"}
    assert "extends" not in data["policies"]["search"]


def test_explain_unknown_guard_lists_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", str(EXAMPLE), "paymnts")
    assert code == 1
    assert "no policy named 'paymnts'" in err and "payments, inventory, search, reports" in err


def test_explain_invalid_file(capsys: pytest.CaptureFixture[str], broken: Path) -> None:
    code, _, err = run(capsys, "explain", str(broken), "p")
    assert code == 1 and "policies.p.mode" in err


# -- init and demo ----------------------------------------------------------------------------


def test_init_writes_a_starter_that_validates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "init")[0] == 0
    starter = tmp_path / "policies" / "policies.toml"
    text = starter.read_text()
    assert text.startswith("#:schema ../schema/policies.schema.json\n")
    assert load_path(starter, strict=True).policies.keys() == {"example"}
    code, _, err = run(capsys, "init")
    assert code == 1 and "already exists" in err and starter.read_text() == text
    starter.write_text("# mine\n")
    assert run(capsys, "init", "--force")[0] == 0 and starter.read_text() == text
    assert run(capsys, "init", "other.toml")[0] == 0
    assert (tmp_path / "other.toml").read_text().startswith("#:schema schema/policies.schema.json")


def test_demo_without_the_demo_module(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "policyengine._demo", None)  # import raises ImportError
    code, _, err = run(capsys, "demo", "--fast")
    assert code == 2 and "policyengine._demo" in err


def test_demo_passes_every_argument_through(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    seen: list[list[str]] = []
    fake = types.ModuleType("policyengine._demo")
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "policyengine._demo", fake)
    assert run(capsys, "demo", "--seconds", "3", "x")[0] == 7
    assert seen == [["--seconds", "3", "x"]]


def test_python_dash_m(tmp_path: Path, broken: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run(
        [sys.executable, "-m", "policyengine", "validate", str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "policyengine", "validate", str(broken)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_validate_require_names_the_missing_guards(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "validate", str(EXAMPLE), "--require", "payments,search")
    assert code == 0 and "valid (4 policies" in out
    code, out, _ = run(
        capsys, "validate", str(EXAMPLE), "--require", "payments, paymens", "--require", "orders"
    )
    assert code == 1 and "valid (" not in out
    [line] = [x for x in out.splitlines() if "required" in x]
    assert line.startswith(f"{EXAMPLE}: policies: error: required guards not defined: ")
    assert "paymens, orders (--require; defined: payments, inventory, search, reports)" in line
    assert "'paymens': did you mean 'payments'?" in line
    code, out, _ = run(capsys, "validate", "--format", "json", str(EXAMPLE), "--require", "x")
    assert code == 1 and [r["path"] for r in json.loads(out)] == ["policies"]


def test_validate_warns_on_a_file_without_policies_and_fails_it_under_strict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("schema_version = 1\n")
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0 and "warning: no policies" in out and "(0 policies, 1 file, 1 warning)" in out
    code, out, _ = run(capsys, "validate", "--strict", str(path))
    assert code == 1 and "error: no policies" in out
    code, out, _ = run(capsys, "validate", "--format", "github", str(path))
    assert code == 0 and out.startswith(f"::warning file={path},title=policies::no policies")


def test_github_annotations_escape_what_the_runner_would_misread(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "a,b:c.toml"
    path.write_text('[policies.p]\nmode = "x"\n\n[policies.q.retry]\nmax_attempts = 0\n')
    code, out, _ = run(capsys, "validate", "--format", "github", str(path))
    lines = out.splitlines()
    assert code == 1 and len(lines) == 2
    escaped = str(path).replace(":", "%3A").replace(",", "%2C")
    assert lines[0].startswith(f"::error file={escaped},line=2,title=policies.p.mode::")
    assert lines[1].startswith(f"::error file={escaped},line=5,title=policies.q.retry.max")


def test_a_command_module_registers_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "hello_cmd.py").write_text(
        "def add_parser(sub):\n"
        "    p = sub.add_parser('hello', help='say hello')\n"
        "    p.add_argument('name')\n"
        "    p.set_defaults(run=lambda args: print('hello', args.name) or 7)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("policyengine._commands.cli.COMMAND_MODULES", ("hello_cmd",))
    assert run(capsys, "hello", "you") == (7, "hello you\n", "")
