"""Fuzzing the policy loader: Hypothesis-built TOML documents (random nesting of the known keys,
random values, unknown keys) and byte-level mutations of the example files.

The only outcomes allowed: a `PolicySet` that compiles into an engine, or a
`PolicyValidationError` whose every issue names the file and has a key path or a line. Never
another exception, never a hang (an alarm fails the example after `HANG` seconds), and no
import beyond the modules the document names (checked on `sys.modules` around each load).

CI runs a short budget; ``pytest -m fuzz`` runs 20,000 cases (see docs-reliability.md).
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyengine
from policyengine._config.loader import PolicySet, load_path, load_text
from policyengine._registry.compile import compile_guards
from policyengine._telemetry.events import Listeners
from policyengine.exceptions import PolicyValidationError
from policyengine.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {n: (ROOT / "policies" / n).read_bytes() for n in ("policies.toml", "demo.toml")}
HANG = 10.0  # seconds; a load of a small document takes milliseconds
COUNTS: dict[str, int] = {
    "generated": 0,
    "mutated": 0,
    "valid": 0,
    "undecodable": 0,
    "infinite_duration": 0,
    "huge_window": 0,
}

# -- vocabulary ------------------------------------------------------------------------------

DURATIONS = [
    "250ms", "2s", "1m30s", "1h", "0s", "0ms", "1d", "1.5s", "10us", "5µs", " 2s ",
    "-1s", "2", "2 s", "1e9s", "99999999999999999999999d", "1.5.5s", "", "s", "ms1",
    "1h1h1h1h1h1h", "0.0000001ms",
]  # fmt: skip
RATIOS = ["50%", "0%", "100%", "150%", "-5%", "nan%", "inf%", "1e400%", "%", "0.5"]
EXCEPTIONS = [
    "TimeoutError", "ConnectionError", "Exception", "BaseException", "KeyboardInterrupt",
    "  TimeoutError  ", "policyengine._demo.errors.CardDeclined",
    "policyengine._demo.errors:HTTPError", "policyengine._demo.errors.ServiceUnavailable",
    "policyengine.exceptions:CircuitOpenError", "asyncio.CancelledError",
    "builtins.ValueError", "json.decoder.JSONDecodeError", "decimal.InvalidOperation",
    "zipfile.BadZipFile", "os.path.join", "os:getcwd", "sys.exit", "zz_fuzz_missing.Error",
    "zz_fuzz_missing.sub:Error", "policyengine.zz_fuzz_missing.Error", "policyengine.Nope",
    ":", ".", "a..b", "..", ":Error", "Error:", "Timeouterror", "ConectionError", "int",
    "policyengine._demo.errors:cached_quote", "policyengine._demo.errors.HTTPError.__init__",
]  # fmt: skip
HANDLERS = [
    "policyengine._demo.errors:cached_quote", "policyengine._demo.errors:empty_results",
    "policyengine._demo.errors.cached_quote", "zz_fuzz_missing:handler", "os:getcwd",
    "policyengine._demo.errors:CardDeclined", "policyengine:__version__", "len", ":", "",
    "eval", "os:system", "builtins.exec", "subprocess:run", "policyengine._demo.errors:HTTPError",
]  # fmt: skip
URLS = [
    "redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///tmp/r.sock", "valkey://h/1",
    "redis+cluster://h1:7000,h2:7001", "redis+sentinel://h1,h2:26380/svc/2", "redis://h:abc",
    "redis://h:0", "http://h", "redis://[::1", "redis://h/x", "redis://h/0?db=x&q=1", "unix://",
    "redis+sentinel://h1", "redis+cluster://,", "redis://u:p@h:1/0?socket_timeout=-1", "",
]  # fmt: skip
STATUSES: list[Any] = ["4xx", "5xx", "9xx", "xx", 503, 99, 600, 0, -1, "503", "abc", True]
WORDS = [
    "enforce", "observe", "disabled", "constant", "linear", "exponential", "none", "full",
    "equal", "decorrelated", "count", "time", "open", "closed", "memory", "redis", "local",
    "async", "threads", "circuit_open", "bulkhead_full", "timeout", "retries_exhausted",
    "default", "payments", "redis://127.0.0.1:6379/0", "", "Enforce", "OPEN",
]  # fmt: skip
NAMES = ["default", "payments", "reports", "a", "b", "api", "read", ""]
UNKNOWN = ["retries", "max_attempt", "timeouts", "breakr", "size", "x", "window-size", "on"]

names = st.one_of(st.sampled_from(NAMES), st.text("abcdefgh_-. \"'é", min_size=1, max_size=8))
scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-3, 30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(DURATIONS + RATIOS + EXCEPTIONS + WORDS),
    st.datetimes(),
    st.dates(),
    st.times(),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(UNKNOWN), names), inner, max_size=3),
    ),
    max_leaves=8,
)

# Values each key accepts; a noisy document mixes in `anything` and the bad vocabulary.
OK_DURATIONS = ["50ms", "100ms", "250ms", "450ms", "1s", "2s", "5s", "10s", "30s", "1m30s", "1h"]
OK_EXCEPTIONS = EXCEPTIONS[:11]
FALLBACK_KINDS = ["circuit_open", "bulkhead_full", "timeout", "retries_exhausted"]


def build_document(noisy: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A document of the known keys: mostly valid values, or (noisy) anything at all."""

    def v(ok: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = anything) -> Any:
        return st.one_of(ok, ok, ok, bad) if noisy else ok

    def pick(ok: list[Any], bad: list[Any] = WORDS) -> Any:
        return v(st.sampled_from(ok), st.one_of(st.sampled_from(bad), anything))

    duration = pick(OK_DURATIONS, DURATIONS)
    ratio = v(st.sampled_from([0.0, 0.2, 0.5, 1.0, "50%", "80%"]),
              st.one_of(st.sampled_from(RATIOS), st.floats(-0.5, 1.5), anything))  # fmt: skip
    count = v(st.integers(1, 30), st.one_of(st.integers(-2, 200), anything))
    matcher = st.one_of(
        st.sampled_from(OK_EXCEPTIONS if not noisy else EXCEPTIONS),
        st.fixed_dictionaries(
            {"type": st.sampled_from(OK_EXCEPTIONS if not noisy else EXCEPTIONS)},
            optional={
                "status": st.lists(st.sampled_from(STATUSES if noisy else ["4xx", "5xx", 503])),
                "except_status": st.lists(st.sampled_from([408, 429, "4xx"])),
                **({"code": anything} if noisy else {}),
            },
        ),
    )
    matchers = v(st.lists(matcher, max_size=3))

    def table(
        required: dict[str, Any] | None = None, **keys: Any
    ) -> st.SearchStrategy[dict[str, Any]]:
        """The known `keys`, each optional; a noisy table may carry an unknown key too."""
        known = st.fixed_dictionaries(required or {}, optional=keys)
        if not noisy:
            return known
        extra = st.one_of(
            st.just({}),
            st.just({}),
            st.dictionaries(st.one_of(st.sampled_from(UNKNOWN), names), anything, max_size=2),
        )
        return st.builds(lambda k, e: {**e, **k}, known, extra)

    retry = table(
        max_attempts=count,
        backoff=pick(["constant", "linear", "exponential"]),
        initial_delay=duration,
        max_delay=duration,
        multiplier=v(st.sampled_from([1.0, 1.5, 2.0, 3]), st.floats(-1, 20)),
        jitter=pick(["none", "full", "equal", "decorrelated"]),
        retry_on=matchers,
        never_retry=matchers,
        respect_retry_after=v(st.booleans()),
        max_retry_after=duration,
        budget=v(table(ratio=ratio, min_per_second=v(st.sampled_from([0, 1, 10]), anything))),
    )
    breaker = table(
        consecutive_failures=count,
        window=pick(["count", "time"]),
        window_size=v(st.integers(20, 100), anything),
        window_duration=duration,
        minimum_calls=count,
        failure_rate=ratio,
        slow_call_duration=duration,
        slow_call_rate=ratio,
        open_duration=duration,
        open_backoff=v(table(multiplier=v(st.sampled_from([1.0, 2.0])), max=pick(["5m", "1h"]))),
        half_open_calls=count,
        half_open_max_wait=duration,
        ignore=matchers,
        record=matchers,
        force=pick(["open", "closed"]),
        shared=v(st.booleans()),
    )
    bulkhead = table(
        kind=pick(["async", "threads"]),
        max_concurrent=count,
        max_queue=v(st.integers(0, 20), anything),
        max_wait=duration,
    )
    on = v(st.lists(st.sampled_from(FALLBACK_KINDS), max_size=4))
    handler = pick(HANDLERS[:3], HANDLERS)
    fallback = st.one_of(
        table({"value": anything}, on=on),
        table({"handler": handler}, on=on),
        table(value=anything, handler=handler, on=on),
    )
    policy = table(
        extends=pick(NAMES[:-1], NAMES),
        mode=pick(["enforce", "observe", "disabled"]),
        timeout=v(table(total=duration, attempt=duration)),
        retry=v(retry),
        breaker=v(breaker),
        bulkhead=v(bulkhead),
        fallback=v(fallback),
    )
    state = table(
        backend=pick(["memory"], ["redis", *WORDS]),
        url=pick(URLS[:6], URLS),
        prefix=v(st.sampled_from(["shop", "pe"]), st.text(max_size=5)),
        on_error=pick(["local", "open", "closed"]),
        timeout=duration,
    )
    table_names = st.sampled_from(NAMES[:-1]) if not noisy else names
    return table(
        schema_version=v(st.just(1), st.sampled_from([2, 0, "1"])),
        state=v(state),
        templates=v(st.dictionaries(table_names, policy, max_size=3)),
        policies=v(st.dictionaries(table_names, policy, max_size=4)),
    )


document = st.one_of(build_document(noisy=False), build_document(noisy=True))

# -- the oracle ------------------------------------------------------------------------------


class Hang(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def _alarm() -> Iterator[None]:
    """SIGALRM raises `Hang` in the loader if it takes longer than HANG seconds."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("alarms are delivered to the main thread only")

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"the loader took more than {HANG}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # Warm up: every lazy import of the loader and of Pydantic's error paths happens now.
    for text in (EXAMPLES["policies.toml"].decode(), "x = ", "[policies.a]\nmode = 1\n"):
        try:
            check_outcome(lambda t=text: load_text(t, "warm-up"), "warm-up")  # type: ignore[misc]
        except AssertionError:
            pass
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\s*[.:]\s*[A-Za-z_][A-Za-z0-9_]*)*")


def named_modules(text: str) -> set[str]:
    """Every dotted prefix of every dotted name in `text`: the modules it may import."""
    out: set[str] = set()
    for m in _IDENT.finditer(text):
        parts = re.split(r"\s*[.:]\s*", m.group())
        for end in range(1, len(parts) + 1):
            out.add(".".join(parts[:end]))
    return out


def check_outcome(load: Callable[[], PolicySet], source: str, text: str = "") -> str:
    """Run `load` under the alarm and the import watch; assert the outcome is allowed."""
    before = set(sys.modules)
    signal.setitimer(signal.ITIMER_REAL, HANG)
    try:
        result: PolicySet | PolicyValidationError = load()
    except PolicyValidationError as exc:
        result = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    new = set(sys.modules) - before
    if new:
        named = named_modules(text)
        explained = {m for m in new if m in named}
        # A module the document names may import others; nothing else may be imported.
        assert explained, f"imports the document does not name: {sorted(new)}"
    if isinstance(result, PolicyValidationError):
        assert result.errors, "a PolicyValidationError without issues"
        assert any(i.severity == "error" for i in result.errors)
        for issue in result.errors:
            assert issue.file == source, issue
            assert issue.path or issue.line is not None, f"no key path and no line: {issue}"
            assert issue.line is None or issue.line >= 1, issue
            assert issue.message.strip(), issue
            assert issue.severity in ("error", "warning"), issue
        assert str(result)
        return "invalid"
    assert isinstance(result, PolicySet), type(result)
    for issue in result.warnings:
        assert issue.file == source and (issue.path or issue.line is not None), issue
    COUNTS["valid"] += 1
    compile_and_run(result)
    return "valid"


def compile_and_run(policy_set: PolicySet) -> None:
    """A valid set compiles into guards (and, with in-memory state, into an engine)."""
    compiled = compile_guards(policy_set.policies, {}, FakeClock(), Listeners())
    assert set(compiled.guards) == set(policy_set.policies)
    for guard in compiled.guards.values():
        assert guard.state in ("closed", "forced_open", "disabled")
        if guard.bulkhead is not None:
            guard.bulkhead.close()
    if policy_set.state.backend == "memory":
        engine = policyengine.Engine(policy_set, clock=FakeClock())
        engine.close()


# -- generated documents ---------------------------------------------------------------------


def check_generated(doc: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        return  # not expressible in TOML (tomli_w refuses it): nothing to load
    COUNTS["generated"] += 1
    check_outcome(lambda: load_text(text, "fuzz.toml"), "fuzz.toml", text)


FAST = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FAST
@given(doc=document)
def test_generated_documents_load_or_explain(doc: dict[str, Any]) -> None:
    check_generated(doc)


@pytest.mark.fuzz
@LONG
@given(doc=document)
def test_generated_documents_load_or_explain_long(doc: dict[str, Any]) -> None:
    check_generated(doc)


# -- byte-level mutations of the example files -----------------------------------------------

INTERESTING = [
    b'"', b"'", b"[", b"]", b"[[", b"=", b"\n", b"\r\n", b"#", b"{", b"}", b",", b"\\",
    b".", b"0", b"-", b"\x00", b"\xff", b"\xc3", b"\t", b'"""', b"'''", b"\\u", b"1e400",
    b"inf", b"nan", b"true", b"ms", b"%",
]  # fmt: skip

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.sampled_from(INTERESTING)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from(INTERESTING)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
    st.tuples(st.just("copy"), st.integers(0, 10**6), st.integers(1, 80), st.integers(0, 10**6)),
    st.tuples(st.just("swap_lines"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
)


def mutate(data: bytes, ops: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        kind, at = op[0], op[1] % (len(buf) + 1)
        if kind == "flip" and at < len(buf):
            buf[at] ^= 1 << op[2]
        elif kind == "set" and at < len(buf):
            buf[at : at + len(op[2])] = op[2]
        elif kind == "insert":
            buf[at:at] = op[2]
        elif kind == "delete":
            del buf[at : at + op[2]]
        elif kind == "copy":
            piece = bytes(buf[at : at + op[2]])
            to = op[3] % (len(buf) + 1)
            buf[to:to] = piece
        elif kind == "swap_lines":
            lines = bytes(buf).split(b"\n")
            i, j = op[1] % len(lines), op[2] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
            buf = bytearray(b"\n".join(lines))
        elif kind == "truncate":
            del buf[at:]
    return bytes(buf)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "policies.toml"


def check_mutated(path: Path, example: str, ops: list[tuple[Any, ...]]) -> None:
    data = mutate(EXAMPLES[example], ops)
    path.write_bytes(data)
    COUNTS["mutated"] += 1
    text = data.decode("utf-8", errors="replace")
    check_outcome(lambda: load_path(path), str(path), text)


@FAST
@given(example=st.sampled_from(sorted(EXAMPLES)), ops=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_examples_load_or_explain(
    fuzz_file: Path, example: str, ops: list[tuple[Any, ...]]
) -> None:
    check_mutated(fuzz_file, example, ops)


@pytest.mark.fuzz
@LONG
@given(example=st.sampled_from(sorted(EXAMPLES)), ops=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_examples_load_or_explain_long(
    fuzz_file: Path, example: str, ops: list[tuple[Any, ...]]
) -> None:
    check_mutated(fuzz_file, example, ops)


@pytest.mark.fuzz
def test_report_fuzz_counts() -> None:
    """Runs last in `-m fuzz`: prints how many documents the fuzz tests loaded."""
    print(f"\nloader fuzz: {COUNTS}")


# -- the oracle itself -----------------------------------------------------------------------


def test_the_examples_are_valid_and_compile() -> None:
    for name, data in EXAMPLES.items():
        text = data.decode()
        assert check_outcome(lambda t=text, n=name: load_text(t, n), name, text) == "valid"  # type: ignore[misc]


def test_named_modules_covers_both_path_forms() -> None:
    text = 'x = ["pkg.mod.Name", "other.mod:Cls", "TimeoutError"]'
    assert {"pkg", "pkg.mod", "pkg.mod.Name", "other", "other.mod", "TimeoutError"} <= (
        named_modules(text)
    )


def test_the_oracle_catches_a_stray_import(monkeypatch: pytest.MonkeyPatch) -> None:
    def sneaky() -> PolicySet:
        sys.modules["zz_fuzz_stray"] = sys  # as if the loader imported something unnamed
        return load_text("", "x")

    monkeypatch.delitem(sys.modules, "zz_fuzz_stray", raising=False)
    try:
        with pytest.raises(AssertionError, match="imports the document does not name"):
            check_outcome(sneaky, "x", "")
    finally:
        sys.modules.pop("zz_fuzz_stray", None)


def test_the_oracle_catches_a_hang() -> None:
    def stuck() -> PolicySet:
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # sooner than HANG, to keep this quick
        while True:
            time.sleep(0.01)

    with pytest.raises(Hang):
        check_outcome(stuck, "x")


def test_an_undecodable_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_bytes(b"[policies.api.retry]\nmax_attempts = 2\n# caf\xe9\n")
    with pytest.raises(PolicyValidationError) as info:
        load_path(path)
    [issue] = info.value.errors
    assert issue.line == 3


BIG = '"' + "9" * 400 + 's"'  # a duration whose float overflows to infinity


def test_an_infinite_float_duration_is_a_validation_issue() -> None:
    with pytest.raises(PolicyValidationError):
        load_text("[policies.a.retry]\ninitial_delay = inf\n")


@pytest.mark.parametrize(
    "text",
    [
        f'[policies.a.timeout]\ntotal = "1s"\nattempt = {BIG}\n',
        f'[policies.a.retry]\nmax_delay = "1s"\ninitial_delay = {BIG}\n',
        f'[policies.a.breaker]\nwindow = "time"\nwindow_duration = {BIG}\nfailure_rate = 0.5\n',
    ],
    ids=["attempt-over-total", "initial-over-max", "time-window"],
)
def test_an_overflowing_duration_is_a_validation_issue(text: str) -> None:
    with pytest.raises(PolicyValidationError):
        policyengine.Engine(load_text(text)).close()


def test_an_absurd_window_size_is_a_validation_issue() -> None:
    text = "[policies.a.breaker]\nwindow_size = 1000000000000\nfailure_rate = 0.5\n"
    with pytest.raises(PolicyValidationError):
        policyengine.Engine(load_text(text)).close()
