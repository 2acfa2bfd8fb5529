"""Which callables a policy file may name as a fallback handler, checked at load (issue 14):
the application's own code, callable with the error; never builtins or the standard library;
only under `allow_modules` when the loader is given one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from policyengine._config.imports import module_allowed
from policyengine._config.loader import load_path, load_text
from policyengine.exceptions import PolicyIssue, PolicyValidationError

HANDLERS = """
import functools
import os
from os import system

def one(error):
    return "one"

def keyword_extra(error, *, extra=1):
    return "kw"

def star(*args):
    return "star"

async def coro(exc):
    return "async"

def two(error, context):
    return "two"

def none():
    return "none"

def keyword_only(*, error):
    return "kw-only"

class Callable:
    def __call__(self, error):
        return "instance"

instance = Callable()

def _both(prefix, error):
    return prefix

partial = functools.partial(_both, "partial")
exported_system = system
"""


@pytest.fixture(autouse=True)
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "myapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fallbacks.py").write_text(HANDLERS)
    (tmp_path / "elsewhere.py").write_text("IMPORTED = True\ndef one(error):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("myapp", "myapp.fallbacks", "elsewhere"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def text(handler: str) -> str:
    return f'schema_version = 1\n[policies.p.fallback]\nhandler = "{handler}"\n'


def error(handler: str, **kw: object) -> PolicyIssue:
    with pytest.raises(PolicyValidationError) as info:
        load_text(text(handler), "p.toml", **kw)  # type: ignore[arg-type]
    [found] = info.value.errors
    assert (found.file, found.path, found.line) == ("p.toml", "policies.p.fallback.handler", 3)
    return found


@pytest.mark.parametrize("name", ["one", "keyword_extra", "star", "coro", "instance", "partial"])
def test_a_callable_that_takes_the_error_is_accepted(name: str) -> None:
    ps = load_text(text(f"myapp.fallbacks:{name}"))
    assert ps.policies["p"].fallback is not None


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("two", "its parameters are (error, context)"),
        ("none", "its parameters are ()"),
        ("keyword_only", "its parameters are (*, error)"),
        ("Callable", "its parameters are ()"),  # the class: constructing it takes no error
    ],
)
def test_a_handler_that_cannot_take_the_error_is_refused_at_load(name: str, says: str) -> None:
    found = error(f"myapp.fallbacks:{name}")
    assert found.message.startswith(f"'myapp.fallbacks:{name}' cannot be called with the error")
    assert says in found.message and "def handler(error)" in found.message


@pytest.mark.parametrize(
    ("handler", "says"),
    [
        ("eval", "'eval' is a builtin code (builtins)"),
        ("exec", "is a builtin"),
        ("builtins.print", "is a builtin"),
        ("os:system", "is standard library code (os)"),
        ("os.system", "is standard library code (os)"),
        ("subprocess:run", "is standard library code (subprocess)"),
        ("shutil.rmtree", "is standard library code (shutil)"),
        ("myapp.fallbacks:exported_system", "is standard library code (posix)"),
        ("myapp.fallbacks:os.system", "is standard library code (posix)"),
    ],
)
def test_builtins_and_the_standard_library_are_refused_always(handler: str, says: str) -> None:
    found = error(handler)
    assert says in found.message
    assert "must be a function of your application" in found.message


def test_allow_modules_restricts_handlers_and_never_imports_an_unallowed_module() -> None:
    allow = ("myapp.",)
    assert load_text(text("myapp.fallbacks:one"), allow_modules=allow).policies["p"]
    found = error("elsewhere:one", allow_modules=allow)
    assert "outside the modules this engine allows handlers from" in found.message
    assert "'myapp.'" in found.message
    assert "elsewhere" not in sys.modules  # refused before its code could run
    assert "is standard library code" in error("os:system", allow_modules=("os",)).message
    assert "allow_modules: none" in error("myapp.fallbacks:one", allow_modules=()).message


def test_allow_modules_reaches_a_file_load(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text("elsewhere:one"))
    assert load_path(path).policies["p"]
    with pytest.raises(PolicyValidationError, match="outside the modules"):
        load_path(path, allow_modules=["myapp"])


@pytest.mark.parametrize(
    ("module", "prefixes", "allowed"),
    [
        ("myapp", ("myapp.",), True),
        ("myapp.fallbacks", ("myapp.",), True),
        ("myapp.fallbacks", ("myapp",), True),
        ("myapp_evil", ("myapp",), False),
        ("myapp.fallbacks_evil", ("myapp.fallbacks",), False),
        ("other", ("myapp.", "other"), True),
        ("anything", (), False),
        ("anything", ("",), False),
    ],
)
def test_module_prefixes_match_on_dotted_boundaries(
    module: str, prefixes: tuple[str, ...], allowed: bool
) -> None:
    assert module_allowed(module, prefixes) is allowed


def test_the_compiled_fallback_calls_the_checked_handler() -> None:
    import policyengine

    engine = policyengine.loads(
        text("myapp.fallbacks:one").replace("handler", 'on = ["timeout"]\nhandler'),
        default=False,
    )
    from policyengine.exceptions import GuardTimeoutError

    def slow() -> str:
        raise GuardTimeoutError("p", "attempt", 1.0)

    assert engine.guard("p").call_sync(slow) == "one"


def test_a_handler_whose_inspection_raises_is_a_validation_error(tmp_path: Path) -> None:
    (tmp_path / "weird.py").write_text(
        "class Weird:\n"
        "    @property\n"
        "    def __signature__(self):\n"
        "        raise SystemExit(5)\n"
        "    def __call__(self, error):\n"
        "        return 1\n"
        "handler = Weird()\n"
    )
    sys.modules.pop("weird", None)
    found = error("weird:handler")
    assert found.message == "inspecting 'weird:handler' failed: SystemExit: 5"


def test_a_reload_keeps_the_allow_list_of_the_first_load(tmp_path: Path) -> None:
    from policyengine._registry.engine import Engine

    path = tmp_path / "p.toml"
    path.write_text(text("myapp.fallbacks:one"))
    engine = Engine(load_path(path, allow_modules=("myapp.",)), path=path)
    path.write_text(text("elsewhere:one"))
    assert engine.reload() is False
    assert "outside the modules" in (engine.status()["last_error"] or "")
