"""README.md's examples, checked against the code: an example that drifts fails the suite.

Every fenced block of README.md is checked according to its language:

- ```toml: a complete policy file. It must validate as `policyengine validate --strict` would;
  every problem is reported at its README line.
- ```python: compiled (top-level `await` allowed, as in `python -m asyncio`); every
  `policyengine` name it imports or uses must exist, and every call of one must fit its
  signature. Then it runs in a temporary directory that holds a copy of `policies/`, with the
  names the README's sketches take for granted stubbed (`policyengine`, `charge`, `order`,
  `render`, `month`, `client`).
- ```promql: every metric and label exists in what `PolicyEngineCollector` exports.
- anything else (```sh, ```yaml, a plain ```): each `policyengine ...` command line must parse
  with the command line's own parsers, each `make TARGET` must be a Makefile target and each
  `policyengine[EXTRA]` an extra of pyproject.toml. A block where none of this applies needs a
  marker.

A marker is an HTML comment on the line right before the opening fence (GitHub does not show
it). It changes what is checked:

    <!-- readme-test: skip: REASON -->       not run (python: still compiled and name-checked)
    <!-- readme-test: run NAME -->           python: run with the scenario NAME of this file
                                             (more stubs, the code a bare `...` line stands for,
                                             checks afterwards)
    <!-- readme-test: output NAME -->        the block shows output. Scenario NAME prepares the
                                             files and the block's `$ policyengine ...` line
                                             is run, or NAME produces the output itself. A
                                             README line ending in "..." matches any real line
                                             that starts the same.
    <!-- readme-test: check NAME -->         scenario NAME checks the block in its own way
    <!-- readme-test: fragment [TABLE] -->   toml: validated under the table header [TABLE]
    <!-- readme-test: invalid: MESSAGE -->   toml: must fail validation with MESSAGE

Each scenario must be used by exactly one marker, and a marker must sit right before a fence,
so an edit that separates a block from its check fails. Besides the blocks: the example policy
files validate, every `policyengine.X` the README names exists, the command line reference
table matches the parsers, the `policyengine`/`make` commands and repository paths quoted
inline exist, and the Prometheus metrics table matches the collector.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib
import inspect
import io
import linecache
import logging
import re
import shlex
import shutil
import sys
import tomllib
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, NoReturn

import pytest

import policyengine
from policyengine import Engine
from policyengine._commands import cli as _cli
from policyengine._config.loader import load_path, load_text
from policyengine._patterns.http_fallback import UnusableFallbackError
from policyengine._registry import default as _default
from policyengine.exceptions import PolicyValidationError
from policyengine.testing import FakeClock
from tests.helpers import readme_rollout

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_SHIPPED = ROOT / "policies" / "policies.toml"

# ---------------------------------------------------------------------------------- extraction

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
_MODES = {
    "python": {"", "run", "skip"},
    "toml": {"", "fragment", "invalid", "skip"},
}
_LANGS = {"py": "python", "python3": "python"}
_OTHER_MODES = {"", "output", "check", "skip"}
_NEEDS_NAME = {"output", "check"}


@dataclass(frozen=True)
class Marker:
    mode: str = ""  # "" when the block has no marker
    arg: str = ""  # the scenario's name, or a fragment's table
    reason: str = ""  # after the first colon: why skipped, or the expected error


@dataclass(frozen=True)
class Block:
    line: int  # the line of the opening fence in README.md
    lang: str
    text: str  # the content, without the fence's indentation
    marker: Marker

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


@dataclass(frozen=True)
class Readme:
    blocks: list[Block]
    prose: list[tuple[int, str]]  # (line number, text) of every line outside the blocks
    problems: list[str]


def _parse_marker(body: str) -> Marker:
    head, colon, reason = body.partition(":")
    mode, _, arg = head.strip().partition(" ")
    return Marker(mode.strip(), arg.strip(), reason.strip() if colon else "")


def extract(text: str) -> Readme:
    """The fenced blocks of a Markdown text, each with its marker, and the lines between."""
    lines = text.splitlines()
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    problems: list[str] = []
    markers: dict[int, Marker] = {}  # index of the fence line -> the marker right above it
    i = 0
    while i < len(lines):
        found = _MARKER.match(lines[i])
        if found is not None:
            if i + 1 < len(lines) and _FENCE.match(lines[i + 1]):
                markers[i + 1] = _parse_marker(found["body"])
            else:
                problems.append(
                    f"README.md:{i + 1}: a readme-test marker must sit right before a fence"
                )
        fence = _FENCE.match(lines[i])
        if fence is None:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        char, width, indent = fence["fence"][0], len(fence["fence"]), fence["indent"]
        closing = re.compile(rf"^[ \t]*{re.escape(char)}{{{width},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            problems.append(f"README.md:{i + 1}: this fence is never closed")
            break
        body = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : end]
        ]
        lang = _LANGS.get(fence["lang"].lower(), fence["lang"].lower())
        blocks.append(Block(i + 1, lang, "\n".join(body), markers.get(i, Marker())))
        i = end + 1
    for block in blocks:
        mode, modes = block.marker.mode, _MODES.get(block.lang, _OTHER_MODES)
        if mode not in modes:
            allowed = ", ".join(sorted(m for m in modes if m))
            problems.append(
                f"{block.where}: marker `{mode}` does not apply to a ```{block.lang} block "
                f"(use one of: {allowed})"
            )
        elif mode == "skip" and not block.marker.reason:
            problems.append(f"{block.where}: `skip` needs a reason: `skip: REASON`")
        elif mode in _NEEDS_NAME and not block.marker.arg:
            problems.append(f"{block.where}: `{mode}` needs the name of a scenario")
        elif block.marker.arg and mode in SCENARIOS and block.marker.arg not in SCENARIOS[mode]:
            problems.append(
                f"{block.where}: no `{mode}` scenario named {block.marker.arg!r} in "
                "tests/test_readme.py"
            )
    return Readme(blocks, prose, problems)


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


# ----------------------------------------------------------------------------------- scenarios
# A `run` scenario is a generator given the block's namespace: it adds names before its `yield`
# (FILL: what a bare `...` statement stands for) and checks what the block did after it.
# An `output` scenario prepares files in the working directory and returns the output it
# produced itself, or None when the block's `$ policyengine ...` line is to be run.
# A `check` scenario is given the block.

SCENARIOS: dict[str, dict[str, Any]] = {"run": {}, "output": {}, "check": {}}
FILL = "__readme_fill__"


def scenario(mode: str, name: str) -> Callable[[Any], Any]:
    def register(fn: Any) -> Any:
        SCENARIOS[mode][name] = fn
        return fn

    return register


async def _refused(*_args: object) -> None:
    raise ConnectionError("connection refused")


@scenario("run", "using-it")
def _using_it(ns: dict[str, Any]) -> Iterator[None]:
    yield
    assert ns["result"] == {"charged": ns["order"]}
    assert ns["report"] == f"report for {ns['month']}"
    engine: Engine = ns["engine"]
    handle = engine.guard("payments")
    assert handle.state in {"closed", "open", "half_open", "forced_open", "disabled"}
    listed = {"calls", "successes", "failures", "rejections", "retries", "timeouts"}
    listed |= {"fallbacks", "in_flight", "queued", "failure_rate"}
    assert listed <= handle.metrics().keys(), listed - handle.metrics().keys()
    status = engine.status()  # after engine.close(): "status() still answers"
    listed = {"version", "loaded_at", "sources", "last_error", "reloads", "policies"}
    assert listed <= status.keys(), listed - status.keys()
    assert not status["watching"]


@scenario("run", "fake-clock")
def _fake_clock(ns: dict[str, Any]) -> Iterator[None]:
    # retries sleep 100 ms then 200 ms (no jitter); five failures open the breaker for 30 s
    ns["POLICIES"] = """
[policies.payments.retry]
max_attempts = 3
initial_delay = "100ms"
max_delay = "1s"
jitter = "none"

[policies.payments.breaker]
consecutive_failures = 5
open_duration = "30s"
"""

    def make_it_fail_five_times() -> None:
        async def fail() -> None:
            guard = ns["g"]
            with contextlib.suppress(ConnectionError):
                await guard.call(_refused)  # three attempts, two backoff sleeps
            for _ in range(2):  # two more single attempts
                with contextlib.suppress(ConnectionError):
                    async with guard:
                        await _refused()
            assert guard.state == "open", guard.state

        asyncio.run(fail())

    ns[FILL] = make_it_fail_five_times
    yield  # the block's own asserts check the rest


@scenario("run", "isolated")
def _isolated(ns: dict[str, Any]) -> Iterator[None]:
    ns["pytest"] = types.SimpleNamespace(fixture=lambda *_a, **_k: lambda fn: fn)  # run by hand
    yield
    fixture = ns["policies"]()
    engine = next(fixture)
    try:
        assert policyengine.default_engine() is engine, "isolated() must become the default"
        assert isinstance(engine.clock, FakeClock)
        assert engine.guards and all(g.max_attempts == 1 for g in engine.guards.values())
    finally:
        fixture.close()
    assert _default._default is None, "the previous default engine must be back"


_LOG_POLICY = """
[policies.payments.retry]
max_attempts = 1

[policies.payments.breaker]
consecutive_failures = 5
open_duration = "30s"
"""


def _policy_log_records(directory: Path) -> list[logging.LogRecord]:
    """What the `policyengine` logger says when a breaker opens, half-opens, and an edit of the
    policy file is rejected."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.INFO)
    logger = logging.getLogger("policyengine")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    path = directory / "logged.toml"
    path.write_text(_LOG_POLICY, encoding="utf-8")
    clock = FakeClock()
    engine = policyengine.load(path, clock=clock, default=False)
    try:
        guard = engine.guard("payments")

        async def fail_five_times() -> None:
            for _ in range(5):
                with contextlib.suppress(ConnectionError):
                    await guard.call(_refused)

        asyncio.run(fail_five_times())
        clock.advance(30)
        assert guard.state == "half_open"
        path.write_text(_LOG_POLICY.replace('"30s"', "30"), encoding="utf-8")
        assert not engine.reload()
    finally:
        engine.close()
        logger.removeHandler(handler)
        logger.setLevel(level)
    return records


@scenario("output", "breaker-log")
def _breaker_log(directory: Path) -> str:
    formatter = logging.Formatter("%(levelname)-7s %(name)s: %(message)s")
    return "\n".join(formatter.format(r).splitlines()[0] for r in _policy_log_records(directory))


@scenario("run", "log-format")
def _log_format(ns: dict[str, Any]) -> Iterator[None]:
    config: dict[str, Any] = {}
    ns["logging"] = types.SimpleNamespace(basicConfig=lambda **kw: config.update(kw))
    yield
    formatter = logging.Formatter(config["format"])
    lines = [formatter.format(r) for r in _policy_log_records(Path.cwd())]  # a missing field raises
    assert any("guard=payments event=state_change" in line for line in lines), lines
    assert any("guard=* event=reload_failed" in line for line in lines), lines


@scenario("output", "validate-errors")
def _validate_errors(directory: Path) -> None:
    """A policies/ whose only file has the three mistakes the README's output shows."""
    shutil.rmtree(directory / "policies", ignore_errors=True)
    (directory / "policies").mkdir()
    (directory / "policies" / "payments.toml").write_text(
        "# Payments: a card processor behind an HTTP API.\n"
        "schema_version = 1\n"
        "\n"
        "[policies.payments]\n"
        'mode = "enforce"\n'
        "\n"
        "[policies.payments.timeout]\n"
        'total = "3s"\n'
        'attempt = "450ms"\n'
        "\n"
        "[policies.payments.retry]\n"
        "retries = 3\n"  # line 12
        'initial_delay = "100ms"\n'
        'max_delay = "1s"\n'
        "\n"
        "[policies.payments.breaker]\n"
        "consecutive_failures = 5\n"
        "failure_rate = 0.5\n"
        "open_duration = 30\n"  # line 19
        "\n"
        "[policies.payments.bulkhead]\n"
        "max_concurent = 20\n",  # line 22
        encoding="utf-8",
    )
    return None


readme_rollout.register(scenario)  # the record -> suggest -> simulate example


@scenario("check", "layout")
def _layout(block: Block) -> None:
    """Every directory and file the layout names exists: names on an indented line are in the
    directory of the last unindented line (a file after a directory on the same indented line
    is in that directory); on an unindented line, a name with a slash is in the repository's
    root and a bare file name is in the line's first directory."""
    section = ROOT
    for number, line in enumerate(block.text.splitlines(), start=block.line + 1):
        indented = line[:1].isspace()
        tokens = re.findall(
            r"(?<![\w./])(?:\.\w+/\w+|\w[\w.]*/)(?=[\s;,)]|$)|\b\w[\w.]*\.(?:py|json|toml)\b", line
        )
        if not indented and tokens:
            section = ROOT / tokens[0]
        within = section
        for token in tokens:
            if indented and token.endswith("/"):
                within = section / token
                path = within
            else:
                path = within / token if indented or "/" not in token else ROOT / token
            if not path.exists():
                fail(f"README.md:{number}: the layout names {token!r}, but {path} does not exist")


# ------------------------------------------------------------------------------- python blocks


@scenario("run", "httpx")
def _httpx(ns: dict[str, Any]) -> Iterator[None]:
    """The transports need policies whose fallbacks can give a response (the shipped payments
    policy's value cannot: `GuardedTransport` refuses it), so this block gets HTTP policies."""
    pytest.importorskip("httpx")
    Path("policies/policies.toml").write_text(
        "schema_version = 1\n"
        "[templates.default.retry]\n"
        "max_attempts = 3\n"
        'max_delay = "2s"\n'
        'retry_on = ["httpx.TransportError", '
        '{ type = "httpx.HTTPStatusError", status = [429, 502, 503, 504] }]\n'
        "[policies.payments.breaker]\n"
        "consecutive_failures = 5\n"
        "[policies.reports]\n"
        "[policies.http]\n"
        "[policies.search]\n",
        encoding="utf-8",
    )
    yield
    from policyengine.httpx import GuardedTransport

    transport = ns["payments"]._transport
    assert isinstance(transport, GuardedTransport)
    shipped = policyengine.loads(_SHIPPED.read_text(encoding="utf-8"), default=False)
    try:
        with pytest.raises(UnusableFallbackError, match=r"'payments' has fallback\.value"):
            GuardedTransport("payments", engine=shipped)
    finally:
        shipped.close()


@scenario("output", "top")
def _top(directory: Path) -> str:
    """`policyengine top URL --once` against the shipped policies, payments' breaker open. The
    URL (a free port here) and the stamps of the sample (the interval plus scheduling) are
    written as the README shows them."""
    pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install '.[dev]'")
    from policyengine.asgi import status_app
    from tests.helpers.asgi_servers import serve

    engine = policyengine.load(directory / "policies" / "policies.toml", default=False)
    try:

        async def trip() -> None:
            for _ in range(5):  # consecutive_failures = 5, one attempt each
                with contextlib.suppress(ConnectionError):
                    async with engine.guard("payments"):
                        await _refused()

        with serve(status_app(engine)) as url:
            asyncio.run(trip())
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert _cli.main(["top", url, "--once"]) == 0
    finally:
        engine.close()
    text = out.getvalue().replace(url, "http://127.0.0.1:8000/ops")
    return re.sub(
        r"\[\s*(\d+\.\d)s\]", lambda m: "[   1.0s]" if 1.0 <= float(m[1]) < 2.0 else m[0], text
    )


@scenario("run", "fastapi")
def _fastapi(ns: dict[str, Any]) -> Iterator[None]:
    """The FastAPI example served by uvicorn, against a local payments server: healthy, hung
    (504s from the middleware while the breaker counts), then the breaker open (the fallback
    value, at once)."""
    pytest.importorskip("fastapi", reason="fastapi is not installed: pip install '.[dev]'")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install '.[dev]'")
    import os

    from tests.helpers.asgi_servers import Downstream, serve

    payments = Downstream("payments")
    with serve(payments) as payments_url:
        os.environ["PAYMENTS_URL"] = payments_url
        try:
            yield
            with serve(ns["app"], lifespan="on") as url:
                _fastapi_outages(url, payments)
        finally:
            payments.mode = "ok"  # lets hung requests end
            del os.environ["PAYMENTS_URL"]


def _fastapi_outages(url: str, payments: Any) -> None:
    import httpx

    def charge(order: str) -> httpx.Response:
        return httpx.post(f"{url}/orders/{order}/charge", timeout=30)

    healthy = charge("o-1")
    assert healthy.status_code == 200, healthy.text
    assert healthy.json() == {"from": "payments", "status": 200}
    status = httpx.get(f"{url}/ops/status").json()
    assert status["guards"]["payments"]["state"] == "closed"
    assert status["guards"]["inventory"]["successes"] == 1

    payments.mode = "hang"

    async def two_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return list(await asyncio.gather(
                client.post("/orders/o-2/charge"), client.post("/orders/o-3/charge")
            ))  # fmt: skip

    for response in asyncio.run(two_at_once()):
        assert response.status_code == 504, (response.status_code, response.text)
        assert response.json()["error"] == "timeout" and response.json()["guard"] == "payments"
    status = httpx.get(f"{url}/ops/status").json()
    assert status["guards"]["payments"]["state"] == "open", status["guards"]["payments"]
    assert any(e["name"] == "state_change" for e in status["events"])
    before = payments.requests
    queued = charge("o-4")
    assert queued.status_code == 200 and queued.json() == {"status": "queued"}, queued.text
    assert payments.requests == before  # the open breaker kept the call off the network
    metrics = httpx.get(f"{url}/ops/metrics")
    assert 'policyengine_breaker_state{guard="payments"} 1.0' in metrics.text


def _stubs() -> dict[str, Any]:
    """The names the README's sketches take for granted."""

    async def charge(order: object) -> dict[str, object]:
        return {"charged": order}

    def render(month: object) -> str:
        return f"report for {month}"

    class Client:
        async def post(self, *args: object, **kwargs: object) -> str:
            return "posted"

        async def get(self, *args: object, **kwargs: object) -> str:
            return "got"

    return {
        "__name__": "__readme__",
        "policyengine": policyengine,
        "charge": charge,
        "order": "order-1",
        "render": render,
        "month": "2024-05",
        "client": Client(),
    }


def parse_python(block: Block) -> ast.Module:
    """The block's syntax tree, with README line numbers; it must compile."""
    source = "\n" * block.line + block.text
    lines = source.splitlines(keepends=True)
    linecache.cache["README.md"] = (len(source), None, lines, "README.md")  # for tracebacks
    try:
        tree = ast.parse(source, filename="README.md")
        compile(tree, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError as exc:
        fail(f"README.md:{exc.lineno}: {exc.msg} (in the python block at {block.where})")
    return tree


_MISSING = object()


def check_python_names(block: Block, tree: ast.Module) -> None:
    """Every `policyengine` module and name the block imports or uses exists, and every call of
    one fits its signature."""

    def fail_at(node: ast.AST, message: str) -> NoReturn:
        line = getattr(node, "lineno", block.line)
        fail(f"README.md:{line}: {message} (in the python block at {block.where})")

    bound: dict[str, Any] = {"policyengine": policyengine}  # stubbed when not imported
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _ours(node.module or ""):
            names = [(f"{node.module}.{a.name}", a.asname or a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [
                (a.name, a.asname or a.name.split(".")[0]) for a in node.names if _ours(a.name)
            ]
        else:
            continue
        for dotted, as_name in names:
            value = _lookup(dotted)
            if value is _MISSING:
                fail_at(node, f"{dotted} does not exist")
            bound[as_name] = value if as_name != "policyengine" else policyengine

    def resolve(expr: ast.AST) -> Any:
        if isinstance(expr, ast.Name):
            return bound.get(expr.id, _MISSING)
        if not isinstance(expr, ast.Attribute):
            return _MISSING
        base = resolve(expr.value)
        if not isinstance(base, types.ModuleType | type):
            return _MISSING
        value = getattr(base, expr.attr, _MISSING)
        if value is _MISSING and isinstance(base, types.ModuleType):
            with contextlib.suppress(ImportError):
                value = importlib.import_module(f"{base.__name__}.{expr.attr}")
        if value is _MISSING:
            fail_at(expr, f"{ast.unparse(expr)} does not exist")
        return value

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            resolve(node)
        if not isinstance(node, ast.Call):
            continue
        target = resolve(node.func)
        if target is _MISSING or not callable(target):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            continue
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*node.args, **{k.arg: k.value for k in node.keywords if k.arg})
        except TypeError as exc:
            fail_at(
                node,
                f"`{ast.unparse(node)}` does not fit {ast.unparse(node.func)}{signature}: {exc}",
            )


def _ours(module: str) -> bool:
    return module.split(".")[0] == "policyengine"


def _lookup(dotted: str) -> Any:
    """What `a.b.c` names (importing the modules on the way), or _MISSING."""
    parts = dotted.split(".")
    value: Any = _MISSING
    for i, part in enumerate(parts, start=1):
        found = getattr(value, part, _MISSING) if i > 1 else _MISSING
        if found is _MISSING and (i == 1 or isinstance(value, types.ModuleType)):
            with contextlib.suppress(ImportError):
                found = importlib.import_module(".".join(parts[:i]))
        if found is _MISSING:
            return _MISSING
        value = found
    return value


def _describe(exc: BaseException, what: str, line: int) -> str:
    """The exception at the README line it came from, with the traceback from there on."""
    frames = traceback.extract_tb(exc.__traceback__)
    first = next((i for i, f in enumerate(frames) if f.filename == "README.md"), 0)
    lines = [f.lineno for f in frames if f.filename == "README.md"]
    tb = "".join(traceback.format_list(frames[first:]))
    return (
        f"README.md:{lines[-1] if lines else line}: {what} raised {type(exc).__name__}: {exc}\n{tb}"
    )


def _close_engines(ns: dict[str, Any]) -> None:
    engines = [v for v in ns.values() if isinstance(v, Engine)]
    if _default._default is not None:
        engines.append(_default._default)
    for engine in {id(e): e for e in engines}.values():
        engine.close()
    policyengine.set_default_engine(None)


def run_python(block: Block, tree: ast.Module) -> None:
    """Run the block in the current directory, as a scenario says if its marker names one."""
    ns = _stubs()
    name = block.marker.arg
    steps: Iterator[None] = SCENARIOS["run"][name](ns) if name else iter([None])
    try:
        next(steps)
        if FILL in ns:  # a bare `...` statement stands for code the scenario supplies
            for i, statement in enumerate(tree.body):
                value = getattr(statement, "value", None)
                if isinstance(value, ast.Constant) and value.value is Ellipsis:
                    call = ast.Call(ast.Name(FILL, ast.Load()), [], [])
                    tree.body[i] = ast.copy_location(ast.Expr(call), statement)
            ast.fix_missing_locations(tree)
        code = compile(tree, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        error = None
        try:
            result = eval(code, ns)
            if inspect.iscoroutine(result):
                asyncio.run(result)
        except Exception as exc:
            error = _describe(exc, f"the python block at {block.where}", block.line)
        if error is None:
            try:
                next(steps, None)
            except AssertionError as exc:
                error = f"{block.where}: after the block ran, scenario {name!r} found: {exc}"
            except Exception as exc:
                error = _describe(
                    exc, f"scenario {name!r} after the block at {block.where}", block.line
                )
        if error is not None:
            fail(error)
    finally:
        _close_engines(ns)


# --------------------------------------------------------------------------------- toml blocks


def check_toml(block: Block) -> None:
    """Validate the block as a policy file; issues carry README line numbers."""
    marker = block.marker
    if marker.mode == "fragment":  # the table header goes on the fence's line
        header = f"[{marker.arg.strip('[]') or 'policies.example'}]"
        text = "\n" * (block.line - 1) + header + "\n" + block.text
    else:
        text = "\n" * block.line + block.text
    try:
        load_text(text, "README.md", strict=True)
        problems = ""
    except PolicyValidationError as exc:
        problems = str(exc)
    if marker.mode != "invalid" and problems:
        fail(
            f"{block.where}: this ```toml example does not validate (a fragment or a "
            f"deliberately invalid example needs a marker):\n{problems}"
        )
    if marker.mode == "invalid" and not problems:
        fail(f"{block.where}: this ```toml example is marked invalid but validates")
    if marker.mode == "invalid" and marker.reason not in problems:
        fail(f"{block.where}: the README expects the error {marker.reason!r}; it is:\n{problems}")


# ----------------------------------------------------------------------- commands and outputs


def _cli_parsers() -> tuple[dict[str, argparse.ArgumentParser], dict[str, argparse.ArgumentParser]]:
    """The `policyengine` subcommands' parsers: as declared, and as used (after `demo` every
    argument goes to the demo's own parser)."""
    parser = _cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    declared = dict(action.choices)
    used = dict(declared, demo=importlib.import_module("policyengine._demo").parser())
    return declared, used


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.MULTILINE))


def _extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return set(project["optional-dependencies"])


def _distribution() -> str:
    name: str = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "name"
    ]
    return name


def check_command(tokens: list[str], where: str, *, whole: bool) -> int:
    """Check the `make`, `pip install "DIST[...]"` and `policyengine` commands in one command
    line. `whole`: the arguments must parse (else only the options must exist). Returns how
    many were checked. A requirement must name pyproject.toml's distribution: PyPI's
    `policyengine` is an unrelated project."""
    checked = 0
    for i, token in enumerate(tokens):
        extras = re.fullmatch(r"(?:(?P<dist>[\w.-]+)|\./[\w./-]*)\[(?P<extras>[\w,-]+)\]", token)
        if extras is not None:
            dist = extras["dist"]
            if dist is not None and dist != _distribution():
                fail(f"{where}: {token!r} is not this project: install {_distribution()!r}")
            for extra in extras["extras"].split(","):
                if extra not in _extras():
                    fail(f"{where}: pyproject.toml has no extra {extra!r} ({sorted(_extras())})")
            checked += 1
        elif token == "make" and i + 1 < len(tokens):
            if tokens[i + 1] not in _make_targets():
                fail(f"{where}: the Makefile has no target {tokens[i + 1]!r}")
            checked += 1
        elif token == "policyengine" or token.endswith("/policyengine"):
            checked += _check_policyengine(tokens[i + 1 :], where, whole=whole)
            break
    return checked


def _check_policyengine(argv: list[str], where: str, *, whole: bool) -> int:
    if not argv or argv[0].isupper():  # `policyengine COMMAND ...`: a placeholder
        return 0
    _, parsers = _cli_parsers()
    shown = " ".join(["policyengine", *argv])
    parser = parsers.get(argv[0])
    if parser is None:
        fail(f"{where}: `{shown}`: there is no command {argv[0]!r} ({', '.join(parsers)})")
    if whole:
        errors, out = io.StringIO(), io.StringIO()
        quiet = contextlib.redirect_stderr(errors), contextlib.redirect_stdout(out)
        with quiet[0], quiet[1], contextlib.suppress(SystemExit):  # --help exits 0, quietly
            parser.parse_args(argv[1:])
        if errors.getvalue():
            fail(f"{where}: `{shown}` does not parse: {errors.getvalue().strip()}")
    else:
        options = {o for a in parser._actions for o in a.option_strings}
        for arg in argv[1:]:
            if arg.startswith("-") and arg.split("=")[0] not in options:
                fail(f"{where}: `{shown}`: {argv[0]} has no option {arg!r}")
    return 1


def check_commands(block: Block) -> int:
    checked = 0
    for number, line in enumerate(block.text.splitlines(), start=block.line + 1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # not a shell line
            continue
        if tokens[:1] == ["$"]:
            tokens = tokens[1:]
        checked += check_command(tokens, f"README.md:{number}", whole=True)
    return checked


def compare_output(block: Block, expected: list[str], first: int, actual: str) -> None:
    """`expected` (README lines from line `first`) against the real output."""
    for number, (want, got) in enumerate(zip_longest(expected, actual.splitlines()), start=first):
        elided = want is not None and got is not None and want.endswith("...")
        if want != got and not (elided and got.startswith(want[:-3].rstrip())):
            fail(
                f"README.md:{number}: the output in the block at {block.where} differs from the "
                f"code's:\n  README: {want!r}\n  real:   {got!r}\nwhole real output:\n{actual}"
            )


def check_output(block: Block) -> None:
    produced = SCENARIOS["output"][block.marker.arg](Path.cwd())
    lines = block.text.splitlines()
    if lines and lines[0].startswith("$ "):
        argv = shlex.split(lines[0][2:])
        check_command(argv, f"README.md:{block.line + 1}", whole=True)
        if argv[0] != "policyengine":
            fail(f"README.md:{block.line + 1}: only `policyengine ...` transcripts can be run")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            _cli.main(argv[1:])
        compare_output(block, lines[1:], block.line + 2, out.getvalue())
    elif produced is None:
        fail(f"{block.where}: scenario {block.marker.arg!r} produced no output to compare")
    else:
        compare_output(block, lines, block.line + 1, produced)


def _prometheus_families() -> dict[str, tuple[str, set[str], set[str]]]:
    """Family name -> (type, label names, sample names) of what the collector exports."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from policyengine.prometheus import PolicyEngineCollector

    engine = policyengine.load(ROOT / "policies" / "policies.toml", default=False)
    try:
        registry = prometheus_client.CollectorRegistry()
        registry.register(PolicyEngineCollector(engine))
        return {
            family.name: (
                family.type,
                {label for s in family.samples for label in s.labels},
                {s.name for s in family.samples},
            )
            for family in registry.collect()
        }
    finally:
        engine.close()


def check_promql(block: Block) -> None:
    families = _prometheus_families()
    samples = {name: labels for _, labels, names in families.values() for name in names}
    for number, line in enumerate(block.text.splitlines(), start=block.line + 1):
        expr = line.split("#")[0]
        used = re.findall(r"\b(policyengine_\w+)\s*(?:\{([^}]*)\})?", expr)
        labels: set[str] = set()
        for name, selector in used:
            if name not in samples:
                fail(f"README.md:{number}: the collector exports no {name!r} ({sorted(samples)})")
            labels |= samples[name]
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                if label not in samples[name]:
                    fail(f"README.md:{number}: {name} has no label {label!r}")
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in re.split(r"\s*,\s*", group.strip()):
                if label not in labels:
                    fail(f"README.md:{number}: no metric of this line has the label {label!r}")


def check_block(block: Block) -> None:
    """Every check a block gets (see the module's docstring)."""
    marker = block.marker
    if block.lang == "python":
        tree = parse_python(block)
        check_python_names(block, tree)
        if marker.mode == "skip":
            pytest.skip(f"{block.where}: compiled and its names checked; not run: {marker.reason}")
        run_python(block, tree)
    elif marker.mode == "skip":
        pytest.skip(f"{block.where}: {marker.reason}")
    elif block.lang == "toml":
        check_toml(block)
    elif marker.mode == "output":
        check_output(block)
    elif marker.mode == "check":
        SCENARIOS["check"][marker.arg](block)
    elif block.lang == "promql":
        check_promql(block)
    elif check_commands(block) == 0:
        fail(
            f"{block.where}: nothing in this ```{block.lang} block can be checked: give it a "
            "marker (`<!-- readme-test: skip: REASON -->`, `output NAME`, `check NAME`)"
        )


# --------------------------------------------------------------------------------------- tests

DOC = extract(README.read_text(encoding="utf-8"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory like an application's: a copy of policies/, no $POLICYENGINE_FILE, fresh
    handles behind guard(), and the reader's modules that the examples name (myapp.errors)."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLICYENGINE_FILE", raising=False)
    monkeypatch.setattr(_default, "_handles", {})
    errors = types.ModuleType("myapp.errors")
    errors.CardDeclined = type("CardDeclined", (Exception,), {})  # type: ignore[attr-defined]
    app = types.ModuleType("myapp")
    app.errors = errors  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", app)
    monkeypatch.setitem(sys.modules, "myapp.errors", errors)
    yield tmp_path
    _close_engines({})


@pytest.mark.parametrize(
    "block", DOC.blocks, ids=[f"line{b.line}-{b.lang or 'text'}" for b in DOC.blocks]
)
def test_readme_block(block: Block, workdir: Path) -> None:
    check_block(block)


def test_readme_markers_are_well_formed() -> None:
    assert DOC.blocks, "no fenced blocks found in README.md"
    assert not DOC.problems, "\n".join(DOC.problems)


def test_every_scenario_is_used_by_exactly_one_block() -> None:
    used = [(b.marker.mode, b.marker.arg) for b in DOC.blocks if b.marker.arg]
    for mode, names in SCENARIOS.items():
        for name in names:
            count = used.count((mode, name))
            assert count == 1, f"scenario `{mode} {name}` is used by {count} README blocks, not 1"


def test_example_policy_files_validate() -> None:
    for path in sorted((ROOT / "policies").glob("*.toml")):
        ps = load_path(path, strict=True)
        assert ps.policies, path
    load_path(ROOT / "policies", strict=True)  # `policyengine validate policies/`: one namespace


def test_the_edit_the_quick_start_suggests_isolates_checkout() -> None:
    """'edit policies/demo.toml: add force = "open" under [policies.checkout.breaker]'."""
    text = (ROOT / "policies" / "demo.toml").read_text(encoding="utf-8")
    header = "[policies.checkout.breaker]\n"
    assert header in text
    edited = text.replace(header, header + 'force = "open"\n')
    engine = policyengine.loads(edited, default=False)
    try:
        assert engine.guard("checkout").state == "forced_open"
    finally:
        engine.close()


def _readme_dotted_names() -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        for name in re.findall(r"(?<![\w.\[/-])policyengine(?:\.[A-Za-z_]\w*)+", line):
            found.append((number, name))
    return found


def test_every_policyengine_name_the_readme_mentions_exists() -> None:
    names = _readme_dotted_names()
    assert len(names) >= 5, f"only {len(names)} names found: is the extraction broken?"
    for number, name in names:
        if _lookup(name) is _MISSING:
            fail(f"README.md:{number}: the README names {name}, which does not exist")


def _inline_spans() -> list[tuple[int, str]]:
    spans = []
    for number, line in DOC.prose:
        for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", line.replace("\\|", "|")):
            spans.append((number, span))
    return spans


def test_inline_commands_exist() -> None:
    """`policyengine validate policies/`, `make lint`, `pip install "policyengine[redis]"`, ...
    in the prose: each command, option, target and extra exists."""
    checked = 0
    for number, span in _inline_spans():
        try:
            tokens = shlex.split(span)
        except ValueError:
            continue
        if tokens and (
            tokens[0] in ("make", "pip", "python") or tokens[0].endswith("policyengine")
        ):
            checked += check_command(tokens, f"README.md:{number}", whole=False)
    assert checked >= 5, f"only {checked} inline commands found: is the extraction broken?"


def test_inline_repository_paths_exist() -> None:
    checked = 0
    for number, span in _inline_spans():
        for token in span.split():
            token = token.strip("()[],;:\"'")
            if token.startswith(("-", ".venv", "$")) or "://" in token:
                continue
            if re.fullmatch(r"[\w.*-]+(?:/[\w.*-]*)+", token):
                checked += 1
                if not list(ROOT.glob(token.rstrip("/"))):
                    fail(f"README.md:{number}: the README names {token!r}, which does not exist")
    assert checked >= 5, f"only {checked} paths found: is the extraction broken?"


def _table_after(header: str) -> list[tuple[int, list[str]]]:
    """The rows (line number, cells) of the README table whose header line starts so."""
    rows: list[tuple[int, list[str]]] = []
    lines = iter(DOC.prose)
    for _number, line in lines:
        if line.startswith(header):
            break
    else:
        fail(f"README.md: no table whose header starts with {header!r}")
    next(lines)  # |---|---|
    for number, line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((number, cells))
    return rows


def test_command_line_reference_matches_the_parsers() -> None:
    declared, _ = _cli_parsers()
    rows = _table_after("| command |")
    documented = {cells[0].strip("`").split()[0] for _, cells in rows}
    assert documented == set(declared), f"commands: README {documented}, parser {set(declared)}"
    for number, cells in rows:
        usage = cells[0].strip("`")
        command, where = usage.split()[0], f"README.md:{number}"
        parser = declared[command]
        shown = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage))
        known = {o for a in parser._actions for o in a.option_strings}
        if shown - known:
            fail(f"{where}: `{command}` has no option {sorted(shown - known)}")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings:
                metavar = str(action.metavar or action.dest).upper()
                if not re.search(rf"\b{re.escape(metavar)}\b", usage):
                    fail(f"{where}: `{command}` takes {metavar}, which the table does not show")
                continue
            options = [o for o in action.option_strings if o in shown]
            if not options:
                fail(
                    f"{where}: `{command}` has {'/'.join(action.option_strings)}, not in the table"
                )
            if action.choices is not None:
                listed = re.search(rf"{re.escape(options[0])} ([\w|]+)", usage)
                choices = listed[1].split("|") if listed else []
                if choices != list(action.choices):
                    real = "|".join(action.choices)
                    fail(f"{where}: {options[0]} takes {real}, the table says {choices}")


def test_prometheus_metrics_table_matches_the_collector() -> None:
    families = _prometheus_families()
    by_sample = {
        n: (name, kind, labels) for name, (kind, labels, names) in families.items() for n in names
    }
    rows = _table_after("| metric |")
    shown = set()
    for number, cells in rows:
        metric, kind, labels = cells[0].strip("`"), cells[1], set(re.findall(r"`(\w+)`", cells[2]))
        found = by_sample.get(metric) or (
            (metric, *families[metric]) if metric in families else None
        )
        if found is None:
            fail(f"README.md:{number}: the collector exports no {metric!r}")
        name, real_kind, real_labels = found[0], found[1], found[2]
        shown.add(name)
        if kind != real_kind:
            fail(f"README.md:{number}: {metric} is a {real_kind}, the table says {kind}")
        real = real_labels - {"le"}  # a histogram's buckets
        if labels != real:
            fail(f"README.md:{number}: {metric}'s labels are {sorted(real)}, not {sorted(labels)}")
    assert shown == set(families), f"not in the table: {sorted(set(families) - shown)}"


# ---------------------------------------------------------------------- the checks catch drift

_SYNTHETIC = """# example

```toml
[policies.api.retry]
max_attemps = 3
```

<!-- readme-test: fragment [policies.api] -->
```toml
retry = { max_attempts = 2, jitter = "sometimes" }
```

<!-- readme-test: invalid: a duration needs a unit -->
```toml
[policies.api.breaker]
open_duration = "30s"
```

```python
from policyengine.otel import instrument

instrument(engine, provider=None)
```

```sh
policyengine validate --strikt policies/
```
"""


def test_drift_is_reported_at_the_readme_line() -> None:
    doc = extract(_SYNTHETIC)
    assert not doc.problems
    expected = [
        r"README.md:5: policies.api.retry.max_attemps: error: unknown key",
        r"README.md:10: policies.api.retry.jitter: error",
        r"README.md:14: .*marked invalid but validates",
        r"README.md:22: .*instrument\(engine, provider=None\)",
        r"(?s)README.md:26: .*does not parse: .*unrecognized arguments: --strikt",
    ]
    for block, pattern in zip(doc.blocks, expected, strict=True):
        with pytest.raises(pytest.fail.Exception, match=pattern):
            check_block(block)


def test_a_misspelled_key_in_the_real_readme_is_reported_at_its_line() -> None:
    """The real README's first policy example, with its first key misspelled."""
    lines = README.read_text(encoding="utf-8").splitlines()
    block = next(b for b in DOC.blocks if b.lang == "toml" and not b.marker.mode)
    offset, key = next(
        (i, m[1])
        for i, line in enumerate(block.text.splitlines())
        if (m := re.match(r"(\w+) = ", line))
    )
    number = block.line + 1 + offset
    lines[number - 1] = lines[number - 1].replace(key, key + "x", 1)
    drifted = extract("\n".join(lines))
    broken = next(b for b in drifted.blocks if b.line == block.line)
    with pytest.raises(pytest.fail.Exception, match=rf"README.md:{number}: \S*{key}x: error"):
        check_block(broken)


def test_a_marker_away_from_its_fence_is_reported() -> None:
    doc = extract("<!-- readme-test: skip: later -->\n\n```toml\nx = 1\n```\n")
    assert doc.problems == ["README.md:1: a readme-test marker must sit right before a fence"]
    doc = extract("<!-- readme-test: run nowhere -->\n```python\npass\n```\n")
    assert doc.problems == [
        "README.md:2: no `run` scenario named 'nowhere' in tests/test_readme.py"
    ]
