"""The loader: inheritance, directories, versions, origins, and the TOML line scanner."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from policyengine._config.lines import scan_lines
from policyengine._config.loader import PolicySet, load_path, load_text
from policyengine._config.models import ExceptionMatcher
from policyengine.exceptions import PolicyValidationError

BASE = """
[templates.default]
timeout = { total = "10s", attempt = "2s" }

[templates.default.retry]
max_attempts = 3
initial_delay = "100ms"
max_delay = "2s"
retry_on = ["ConnectionError", "TimeoutError"]
budget = { ratio = 0.2, min_per_second = 10 }

[templates.fast]
extends = "default"
timeout = { total = "1s", attempt = "200ms" }

[policies.a]
retry = { max_attempts = 2, retry_on = ["OSError"], budget = { ratio = 0.1 } }

[policies.b]
extends = "fast"
mode = "observe"

[policies.c]
extends = "b"
fallback = { value = [1, 2] }
"""


@pytest.fixture
def base() -> PolicySet:
    return load_text(textwrap.dedent(BASE), "base.toml")


def test_policy_without_extends_inherits_default(base: PolicySet) -> None:
    a = base.policies["a"]
    assert a.extends is None
    assert a.timeout is not None and (a.timeout.total, a.timeout.attempt) == (10.0, 2.0)
    assert a.retry is not None
    assert a.retry.max_attempts == 2  # scalar replaced
    assert a.retry.max_delay == 2.0  # inherited field by field
    assert a.retry.retry_on == ["OSError"]  # lists replace, never concatenate
    assert a.retry.budget is not None
    assert (a.retry.budget.ratio, a.retry.budget.min_per_second) == (0.1, 10.0)  # tables merge


def test_templates_extend_templates_and_policies_extend_policies(base: PolicySet) -> None:
    b, c = base.policies["b"], base.policies["c"]
    assert b.timeout is not None and b.timeout.total == 1.0
    assert b.retry is not None and b.retry.max_attempts == 3
    assert c.mode == "observe" and c.timeout == b.timeout and c.extends is None
    assert c.fallback is not None and c.fallback.value == [1, 2]
    assert b.fallback is None
    assert list(base.policies) == ["a", "b", "c"]  # templates are not policies


def test_origins_name_the_file_line_and_table(base: PolicySet) -> None:
    assert base.origins["c"]["mode"] == "base.toml:21 (policies.b)"
    assert base.origins["c"]["timeout.total"] == "base.toml:14 (templates.fast)"
    assert base.origins["c"]["retry.max_delay"] == "base.toml:8 (templates.default)"
    assert base.origins["c"]["fallback.value"] == "base.toml:25 (policies.c)"
    assert base.origins["a"]["retry.budget.ratio"] == "base.toml:17 (policies.a)"
    assert base.origins["a"]["retry.budget.min_per_second"] == "base.toml:10 (templates.default)"
    assert set(base.origins) == {"a", "b", "c"}


def test_fallback_handler_replaces_an_inherited_value() -> None:
    ps = load_text(
        '[templates.default]\nfallback = { value = "x", on = ["timeout"] }\n'
        '[policies.p]\nfallback = { handler = "policyengine._demo.errors:cached_quote" }\n'
    )
    fallback = ps.policies["p"].fallback
    assert fallback is not None
    assert (fallback.value, fallback.handler, fallback.on) == (
        None,
        "policyengine._demo.errors:cached_quote",
        ["timeout"],
    )


def test_fallback_value_is_one_value_not_a_table_to_merge() -> None:
    ps = load_text(
        "[templates.default]\nfallback = { value = { a = 1, b = 2 } }\n"
        "[policies.p]\nfallback = { value = { c = 3 } }\n"
    )
    fallback = ps.policies["p"].fallback
    assert fallback is not None and fallback.value == {"c": 3}


def test_matchers_are_resolved_at_load() -> None:
    ps = load_text(
        '[policies.p.retry]\nmax_delay = "1s"\n'
        'never_retry = [{ type = "policyengine._demo.errors:HTTPError", status = ["4xx"] }]\n'
    )
    retry = ps.policies["p"].retry
    assert retry is not None
    (matcher,) = retry.never_retry
    assert isinstance(matcher, ExceptionMatcher)
    from policyengine._demo.errors import HTTPError, ServiceUnavailable

    assert matcher.matcher(HTTPError(404)) and not matcher.matcher(ServiceUnavailable())


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    text = textwrap.dedent(BASE)
    assert load_text(text).version == load_text(text, "other").version
    assert load_text(text).version != load_text(text + "\n").version
    f = tmp_path / "p.toml"
    f.write_text(text)
    assert load_path(f).version == load_text(text).version
    assert load_path(f).sources == (str(f),)


def test_strict_turns_warnings_into_errors() -> None:
    text = (
        '[policies.p]\ntimeout = { total = "1s", attempt = "1s" }\nretry = { max_delay = "1s" }\n'
    )
    assert len(load_text(text).warnings) == 1
    with pytest.raises(PolicyValidationError):
        load_text(text, strict=True)


def test_an_empty_file_is_valid_with_a_warning_and_an_error_under_strict() -> None:
    ps = load_text("")
    assert ps.policies == {} and ps.state.backend == "memory"
    assert [(w.path, w.severity) for w in ps.warnings] == [("policies", "warning")]
    assert "no policies" in ps.warnings[0].message
    with pytest.raises(PolicyValidationError) as info:
        load_text("schema_version = 1\n[templates.default]\nmode = 'observe'\n", strict=True)
    assert [(e.path, e.severity) for e in info.value.errors] == [("policies", "error")]
    assert load_text("[policies.p]\n").warnings == ()


# -- files and directories --------------------------------------------------------------------


def test_missing_path_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyValidationError) as info:
        load_path(tmp_path / "nope.toml")
    (issue,) = info.value.errors
    assert (issue.file, issue.line, issue.message) == (
        str(tmp_path / "nope.toml"),
        None,
        "no such file or directory",
    )


def test_directory_without_toml_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyValidationError, match=r"no \*\.toml files"):
        load_path(tmp_path)


def test_directory_merges_every_toml_file(tmp_path: Path) -> None:
    (tmp_path / "10-templates.toml").write_text(
        '[state]\nprefix = "shop"\n[templates.default]\ntimeout = { total = "5s" }\n'
    )
    (tmp_path / "20-payments.toml").write_text('[policies.payments]\nmode = "observe"\n')
    (tmp_path / "notes.txt").write_text("not a policy file")
    ps = load_path(tmp_path)
    assert ps.sources == (str(tmp_path / "10-templates.toml"), str(tmp_path / "20-payments.toml"))
    assert ps.state.prefix == "shop"
    payments = ps.policies["payments"]
    assert payments.timeout is not None and payments.timeout.total == 5.0
    assert (
        ps.origins["payments"]["timeout.total"]
        == f"{tmp_path / '10-templates.toml'}:4 (templates.default)"
    )
    other = tmp_path / "20-payments.toml"
    other.write_text('[policies.payments]\nmode = "enforce"\n')
    assert load_path(tmp_path).version != ps.version


def test_directory_name_defined_twice_and_state_twice(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('[state]\nbackend = "memory"\n\n[policies.payments]\nmode = "observe"\n')
    b.write_text('[state]\nprefix = "x"\n[policies.payments]\nmode = "enforce"\n')
    with pytest.raises(PolicyValidationError) as info:
        load_path(tmp_path)
    assert [(e.file, e.line, e.path, e.message) for e in info.value.errors] == [
        (str(b), 1, "state", f"[state] is also defined in {a}:1; keep one"),
        (
            str(b),
            3,
            "policies.payments",
            f"policies.payments is defined twice: in {a} and {b} (first at {a}:4)",
        ),
    ]


def test_each_file_reports_its_own_errors_and_lines(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[policies.a]\n\nmode = "nope"\n')
    (tmp_path / "b.toml").write_text("[policies.b.retry]\nmax_attempts = 0\n")
    (tmp_path / "c.toml").write_text("[policies.c\n")
    with pytest.raises(PolicyValidationError) as info:
        load_path(tmp_path)
    assert [(Path(e.file).name, e.line, e.path) for e in info.value.errors] == [
        ("a.toml", 3, "policies.a.mode"),
        ("b.toml", 2, "policies.b.retry.max_attempts"),
        ("c.toml", 1, ""),
    ]


def test_extends_across_files_reports_the_template_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[templates.default.bulkhead]\n\nmax_queue = 3\n")
    (tmp_path / "b.toml").write_text('[policies.p]\nmode = "observe"\n')
    with pytest.raises(PolicyValidationError) as info:
        load_path(tmp_path)
    (issue,) = info.value.errors
    assert (Path(issue.file).name, issue.line, issue.path) == (
        "a.toml",
        1,
        "policies.p.bulkhead.max_concurrent",
    )


def test_a_file_that_is_not_utf8_is_reported_at_its_first_bad_byte(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b"[policies.a]\nmode = 'x' # caf\xe9\n")
    with pytest.raises(PolicyValidationError, match="not UTF-8 text") as info:
        load_path(tmp_path / "bad.toml")
    [issue] = info.value.errors
    assert issue.line == 2


# -- the line scanner -------------------------------------------------------------------------

TRICKY = '''\
# comment [not.a.table]
title = "a # not a comment"
[a."b.c"]                 # quoted key with a dot
x.y = 1
s = """
[not.a.table]
"""
lit = \'\'\'x = 1\'\'\'
arr = [
  "one",  # comment ]
  { type = "T", status = [
      500] },
  [1, [2]],
]
inline = { p = 1, q = { r = 2 } }
when = 1979-05-27 07:32:00
[[items]]
n = 1
[[items]]
n = 2
'''


def test_scan_lines_maps_every_construct() -> None:
    lines = scan_lines(TRICKY)
    expected = {
        ("title",): 2,
        ("a",): 3,
        ("a", "b.c"): 3,
        ("a", "b.c", "x", "y"): 4,
        ("a", "b.c", "s"): 5,
        ("a", "b.c", "lit"): 8,
        ("a", "b.c", "arr"): 9,
        ("a", "b.c", "arr", 0): 10,
        ("a", "b.c", "arr", 1): 11,
        ("a", "b.c", "arr", 1, "status", 0): 12,
        ("a", "b.c", "arr", 2): 13,
        ("a", "b.c", "arr", 2, 1, 0): 13,
        ("a", "b.c", "inline", "q", "r"): 15,
        ("a", "b.c", "when"): 16,
        ("items", 0, "n"): 18,
        ("items", 1): 19,
        ("items", 1, "n"): 20,
    }
    assert {k: lines.get(k) for k in expected} == expected
    assert ("not", "a", "table") not in lines


def test_scan_lines_handles_crlf() -> None:
    assert scan_lines('[p]\r\nx = 1\r\ny = "2"\r\n') == {("p",): 1, ("p", "x"): 2, ("p", "y"): 3}
