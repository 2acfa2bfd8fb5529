"""Every rule of the format: a broken file and the exact error it produces (key path, line, hint).

Lines are 1-based and counted in the dedented text of each test.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from policyengine._config.loader import load_path, load_text
from policyengine.exceptions import PolicyValidationError

Problem = tuple[str, int | None, str]


def problems(text: str, *, strict: bool = False) -> list[Problem]:
    with pytest.raises(PolicyValidationError) as info:
        load_text(textwrap.dedent(text).lstrip("\n"), "p.toml", strict=strict)
    assert all(e.file == "p.toml" for e in info.value.errors)
    return [(e.path, e.line, e.message) for e in info.value.errors]


def only(text: str, *, strict: bool = False) -> Problem:
    found = problems(text, strict=strict)
    assert len(found) == 1, found
    return found[0]


# -- durations and ratios ---------------------------------------------------------------------


def test_bare_number_duration_shows_the_fix() -> None:
    assert only(
        """
        [policies.p]
        timeout = { total = 3 }
        """
    ) == ("policies.p.timeout.total", 2, 'a duration needs a unit: write "3s" instead of 3')


def test_fractional_bare_duration_suggests_milliseconds() -> None:
    path, line, message = only(
        """
        [policies.p.breaker]
        open_duration = 0.5
        """
    )
    assert (path, line) == ("policies.p.breaker.open_duration", 2)
    assert 'write "500ms" instead of 0.5' in message


def test_duration_without_a_known_unit() -> None:
    path, line, message = only(
        """
        [policies.p.bulkhead]
        max_concurrent = 2
        max_wait = "3 seconds"
        """
    )
    assert (path, line) == ("policies.p.bulkhead.max_wait", 3)
    assert message.startswith("'3 seconds' is not a duration")
    assert '"250ms", "2s", "1m30s"' in message


def test_ratio_out_of_range() -> None:
    assert only(
        """
        [policies.p.breaker]
        failure_rate = "150%"
        """
    ) == (
        "policies.p.breaker.failure_rate",
        2,
        "a ratio must lie in [0, 1] (or 0% to 100%), got '150%'",
    )


# -- unknown keys -----------------------------------------------------------------------------


def test_unknown_key_did_you_mean() -> None:
    assert only(
        """
        [policies.p.retry]
        max_attempt = 3
        max_delay = "1s"
        """
    ) == (
        "policies.p.retry.max_attempt",
        2,
        "unknown key `max_attempt` (did you mean `max_attempts`?)",
    )


def test_retries_says_max_attempts_is_retries_plus_one() -> None:
    path, line, message = only(
        """
        [policies.p.retry]
        max_delay = "1s"
        retries = 3
        """
    )
    assert (path, line) == ("policies.p.retry.retries", 3)
    assert "write `max_attempts = 4`" in message
    assert "max_attempts = retries + 1" in message


def test_retries_at_policy_level_points_into_retry() -> None:
    path, _, message = only("[policies.p]\nretries = 2\n")
    assert path == "policies.p.retries"
    assert "`retry.max_attempts = 3`" in message


def test_misspelt_section() -> None:
    assert only("[policies.p.retyr]\nmax_attempts = 2\n") == (
        "policies.p.retyr",
        1,
        "unknown key `retyr` (did you mean `retry`?)",
    )


def test_misspelt_top_level_table() -> None:
    assert only("[policy.p]\nmode = 'enforce'\n") == (
        "policy",
        1,
        "unknown key `policy` (did you mean `policies`?)",
    )


def test_key_of_another_section() -> None:
    assert only("[policies.p.breaker]\nmax_attempts = 3\n") == (
        "policies.p.breaker.max_attempts",
        2,
        "unknown key `max_attempts`: `max_attempts` belongs in the `retry` table",
    )


def test_unknown_key_without_a_close_match_lists_the_allowed_keys() -> None:
    _, _, message = only("[policies.p.timeout]\nzzz = 1\n")
    assert message == "unknown key `zzz`; allowed keys: total, attempt"


# -- values -----------------------------------------------------------------------------------


def test_enum_typo_did_you_mean() -> None:
    assert only(
        """
        [policies.p.retry]
        backoff = "exponentail"
        max_delay = "1s"
        """
    ) == (
        "policies.p.retry.backoff",
        2,
        '"exponentail" is not allowed here: use "constant", "linear" or "exponential" '
        '(did you mean "exponential"?)',
    )


def test_wrong_types() -> None:
    found = problems(
        """
        [policies.p.retry]
        max_attempts = true
        max_delay = "1s"
        retry_on = "ConnectionError"
        respect_retry_after = "yes"
        """
    )
    assert found == [
        ("policies.p.retry.max_attempts", 2, "expected an integer, got true"),
        (
            "policies.p.retry.retry_on",
            4,
            'expected an array, got "ConnectionError" (write ["ConnectionError"])',
        ),
        ("policies.p.retry.respect_retry_after", 5, 'expected true or false, got "yes"'),
    ]


def test_bounds() -> None:
    assert only("[policies.p.retry]\nmax_attempts = 0\n") == (
        "policies.p.retry.max_attempts",
        2,
        "must be at least 1, got 0",
    )


def test_schema_version() -> None:
    assert only("schema_version = 2\n") == ("schema_version", 1, "2 is not allowed here: use 1")


# -- exception matchers -----------------------------------------------------------------------


def test_unimportable_type_in_a_multiline_array_points_at_its_item() -> None:
    assert only(
        """
        [policies.p.retry]
        max_delay = "1s"
        never_retry = [
          "ValueError",
          "payments.errors.CardDeclined",
        ]
        """
    ) == (
        "policies.p.retry.never_retry.1",
        5,
        "cannot import 'payments.errors.CardDeclined': no module named 'payments.errors'; check "
        "the spelling, or install the package / put its directory on the import path (-I DIR)",
    )


def test_misspelt_builtin_and_attribute() -> None:
    found = problems(
        """
        [policies.p.breaker]
        ignore = ["TimeoutErorr", "policyengine._demo.errors.CardDecline"]
        """
    )
    assert [(p, line) for p, line, _ in found] == [
        ("policies.p.breaker.ignore.0", 2),
        ("policies.p.breaker.ignore.1", 2),
    ]
    assert "(did you mean 'TimeoutError'?)" in found[0][2]
    assert "has no attribute 'CardDecline' (did you mean 'CardDeclined'?)" in found[1][2]


def test_not_an_exception_class() -> None:
    assert only('[policies.p.breaker]\nignore = ["json.dumps"]\n') == (
        "policies.p.breaker.ignore.0",
        2,
        "'json.dumps' is not an exception class",
    )


def test_matcher_table_errors() -> None:
    found = problems(
        """
        [policies.p.breaker]
        record = [
          { type = "OSError", status = ["6xx", 503] },
          { status = ["5xx"] },
          { type = "OSError", statuses = [500] },
          42,
        ]
        """
    )
    assert found == [
        (
            "policies.p.breaker.record.0.status.0",
            3,
            "'6xx' is not an HTTP status: use a code (503) or a class (\"5xx\")",
        ),
        ("policies.p.breaker.record.1.type", 4, "missing required key `type`"),
        (
            "policies.p.breaker.record.2.statuses",
            5,
            "unknown key `statuses` (did you mean `status`?)",
        ),
        (
            "policies.p.breaker.record.3",
            6,
            'an exception matcher is an import path ("pkg.mod.Name") or a table such as '
            '{ type = "pkg.mod.Name", status = ["5xx"] }',
        ),
    ]


# -- cross-field checks -----------------------------------------------------------------------


def test_attempt_must_not_exceed_total() -> None:
    assert only(
        """
        [policies.p.timeout]
        total = "1s"
        attempt = "2s"
        """
    ) == (
        "policies.p.timeout.attempt",
        3,
        "timeout.attempt (2s) must not exceed timeout.total (1s): lower `attempt` or raise `total`",
    )


def test_minimum_calls_must_not_exceed_window_size() -> None:
    assert only(
        """
        [policies.p.breaker]
        window_size = 10
        minimum_calls = 20
        """
    ) == (
        "policies.p.breaker.minimum_calls",
        3,
        "minimum_calls (20) must not exceed window_size (10): no rate could ever be judged",
    )


def test_exponential_backoff_needs_max_delay() -> None:
    assert only('[policies.p.retry]\nbackoff = "exponential"\n') == (
        "policies.p.retry.backoff",
        2,
        'backoff = "exponential" needs max_delay (for example max_delay = "2s")',
    )


def test_slow_call_rate_needs_a_duration() -> None:
    assert only("[policies.p.breaker]\nslow_call_rate = 0.5\n") == (
        "policies.p.breaker.slow_call_rate",
        2,
        "slow_call_rate needs slow_call_duration: set both or neither",
    )


def test_fallback_needs_value_or_handler_and_a_callable_handler() -> None:
    assert only("[policies.p.fallback]\non = ['timeout']\n") == (
        "policies.p.fallback",
        1,
        "fallback needs `value` (any TOML value) or `handler`",
    )
    assert only(
        '[policies.p.fallback]\nvalue = 1\nhandler = "policyengine._demo.errors:cached_quote"\n'
    ) == (
        "policies.p.fallback.handler",
        3,
        "fallback takes `value` or `handler`, not both",
    )
    path, line, message = only(
        '[policies.p]\nfallback = { handler = "policyengine._demo.errors:nope" }\n'
    )
    assert (path, line) == ("policies.p.fallback.handler", 2)
    assert "has no attribute 'nope'" in message


RETRY_TOO_LONG = """
[policies.p]
timeout = { total = "1s", attempt = "500ms" }
retry = { max_attempts = 3, backoff = "constant", initial_delay = "100ms", jitter = "none" }
"""


def test_worst_case_schedule_longer_than_total_is_a_warning() -> None:
    policy_set = load_text(RETRY_TOO_LONG, "p.toml")
    assert "p" in policy_set.policies
    (warning,) = policy_set.warnings
    assert (warning.file, warning.line, warning.path, warning.severity) == (
        "p.toml",
        3,
        "policies.p.timeout.total",
        "warning",
    )
    assert warning.message.startswith(
        "the worst-case retry schedule takes 1.7s (3 attempts x 500ms + 200ms of sleeps) "
        "but timeout.total is 1s"
    )


def test_worst_case_schedule_is_an_error_under_strict() -> None:
    with pytest.raises(PolicyValidationError) as info:
        load_text(RETRY_TOO_LONG, "p.toml", strict=True)
    (error,) = info.value.errors
    assert (error.path, error.line, error.severity) == ("policies.p.timeout.total", 3, "error")


def test_worst_case_uses_the_capped_delays_without_jitter_reduction() -> None:
    text = """
    [policies.p]
    timeout = { total = "2.4s", attempt = "500ms" }
    retry = { max_attempts = 4, initial_delay = "100ms", max_delay = "250ms", jitter = "full" }
    """
    # 4 x 500ms + 100ms + 200ms + 250ms (capped) = 2.55s > 2.4s
    (warning,) = load_text(textwrap.dedent(text), "p.toml").warnings
    assert "takes 2.55s (4 attempts x 500ms + 550ms of sleeps)" in warning.message
    fits = text.replace('"2.4s"', '"2.55s"')
    assert load_text(textwrap.dedent(fits), "p.toml").warnings == ()


# -- extends ----------------------------------------------------------------------------------


def test_extends_a_missing_name() -> None:
    assert only('[templates.default]\nmode = "observe"\n[policies.p]\nextends = "defualt"\n') == (
        "policies.p.extends",
        4,
        "extends 'defualt', but there is no template or policy of that name "
        "(did you mean 'default'?)",
    )


def test_extends_cycle_names_the_chain_once() -> None:
    assert only(
        """
        [policies.a]
        extends = "b"
        [policies.b]
        extends = "c"
        [policies.c]
        extends = "a"
        [policies.d]
        extends = "a"
        """
    ) == (
        "policies.a.extends",
        2,
        "extends forms a cycle: policies.a -> policies.b -> policies.c -> policies.a",
    )


def test_template_cannot_extend_a_policy() -> None:
    assert only('[policies.p]\nmode = "observe"\n[templates.t]\nextends = "p"\n') == (
        "templates.t.extends",
        4,
        "a template extends templates only; 'p' is a policy",
    )


def test_extends_must_be_a_string() -> None:
    assert only("[policies.p]\nextends = 3\n") == (
        "policies.p.extends",
        2,
        "`extends` is the name of a template or policy (a string)",
    )


def test_error_in_an_inherited_combination_points_at_the_template_line() -> None:
    found = problems(
        """
        [templates.default.bulkhead]
        max_queue = 5

        [policies.a]
        mode = "observe"

        [policies.b.timeout]
        total = "1s"
        """
    )
    assert found == [
        ("policies.a.bulkhead.max_concurrent", 1, "missing required key `max_concurrent`"),
        ("policies.b.bulkhead.max_concurrent", 1, "missing required key `max_concurrent`"),
    ]


def test_inherited_cross_field_error_uses_the_policy_path() -> None:
    assert only(
        """
        [templates.default]
        timeout = { attempt = "5s" }
        [policies.p]
        timeout = { total = "3s" }
        """
    ) == (
        "policies.p.timeout.attempt",
        2,
        "timeout.attempt (5s) must not exceed timeout.total (3s): lower `attempt` or raise `total`",
    )


def test_a_bad_template_value_is_reported_once_where_it_was_written() -> None:
    assert only(
        """
        [templates.default.retry]
        max_attempts = 0
        [policies.a]
        [policies.b]
        [policies.c]
        """
    ) == ("templates.default.retry.max_attempts", 2, "must be at least 1, got 0")


# -- syntax and all-at-once -------------------------------------------------------------------


def test_toml_syntax_error_reports_its_own_line() -> None:
    assert only('[policies.p]\nmode = "enforce"\nbad = [1, 2\n') == (
        "",
        3,
        "TOML syntax error: Unclosed array (at the end of the file)",
    )


def test_duplicate_key_is_a_syntax_error_on_its_line() -> None:
    path, line, message = only('[policies.p]\nmode = "enforce"\nmode = "observe"\n')
    assert (path, line) == ("", 3)
    assert message.startswith("TOML syntax error: Cannot overwrite a value")


def test_every_problem_of_a_file_in_one_run() -> None:
    found = problems(
        """
        [policies.p]
        mode = "enforced"
        timeout = { total = 3 }

        [policies.p.retry]
        retries = 2
        max_delay = "1s"

        [policies.p.breaker]
        failure_rate = 2

        [policies.q]
        extends = "nope"
        """
    )
    assert [(p, line) for p, line, _ in found] == [
        ("policies.p.mode", 2),
        ("policies.p.timeout.total", 3),
        ("policies.p.retry.retries", 6),
        ("policies.p.breaker.failure_rate", 10),
        ("policies.q.extends", 13),
    ]


def test_a_misspelt_required_key_is_one_error_not_two() -> None:
    assert only("[policies.p.bulkhead]\nmax_concurent = 20\n") == (
        "policies.p.bulkhead.max_concurent",
        2,
        "unknown key `max_concurent` (did you mean `max_concurrent`?)",
    )


def test_a_broken_extends_does_not_hide_the_policys_own_errors() -> None:
    found = problems(
        """
        [policies.p]
        extends = "nope"
        [policies.p.retry]
        jiter = "full"
        [policies.p.bulkhead]
        max_queue = 2
        """
    )
    paths = [(path, line) for path, line, _ in found]
    # the missing max_concurrent may come from the parent that could not be found: not reported
    assert paths == [("policies.p.extends", 2), ("policies.p.retry.jiter", 4)]


def test_a_byte_order_mark_is_not_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b"\xef\xbb\xbf[policies.api.retry]\nmax_attempts = 1\n")
    assert list(load_path(path).policies) == ["api"]
    assert list(load_text("\ufeff[policies.api.retry]\nmax_attempts = 1\n").policies) == ["api"]


def test_an_infinite_or_absurd_duration_is_an_error_not_a_crash() -> None:
    assert only("[policies.p.retry]\ninitial_delay = inf\n")[:2] == (
        "policies.p.retry.initial_delay",
        2,
    )
    path, line, message = only('[policies.p.timeout]\ntotal = "400d"\n')
    assert (path, line) == ("policies.p.timeout.total", 2)
    assert "at most 365d" in message


def test_max_delay_below_initial_delay_is_a_warning_and_caps_every_delay() -> None:
    text = textwrap.dedent(
        """
        [policies.p.retry]
        backoff = "constant"
        initial_delay = "2s"
        max_delay = "500ms"
        """
    ).lstrip("\n")
    ps = load_text(text, "p.toml")
    [warning] = ps.warnings
    assert (warning.path, warning.line, warning.severity) == (
        "policies.p.retry.max_delay",
        4,
        "warning",
    )
    assert warning.message.startswith(
        "max_delay (500ms) is smaller than initial_delay (2s): every delay is capped at max_delay"
    )
    assert problems(text, strict=True) == [("policies.p.retry.max_delay", 4, warning.message)]
