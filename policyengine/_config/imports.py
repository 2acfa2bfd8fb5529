"""Import paths named in policy files: ``"pkg.mod.Name"``, ``"pkg.mod:Name"``, bare builtins.

Importing runs the module's code, and a module's `__getattr__` runs on every attribute looked
up: anything either raises (`SystemExit`, `KeyboardInterrupt` included) becomes a ValueError
saying which module failed and how, so the loader reports it at the key and line that named it
and a reload never dies of it.

Fallback handlers are code the guard calls, so `resolve_handler` is stricter (the README's
"Which callables a policy file may name"): the handler must be the application's own code, not
a builtin or a function of the standard library (`eval`, `exec`, `os:system`, `subprocess.run`
are refused always), it must accept being called with one argument (the error), and, when the
loader is given ``allow_modules=("myapp.", ...)``, its module must be one of those (or under
one of them).
"""

from __future__ import annotations

import builtins
import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

__all__ = ["import_object", "module_allowed", "resolve_handler"]

_STDLIB = frozenset(sys.stdlib_module_names) | {"builtins"}


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _import_module(name: str, path: str) -> ModuleType | None:
    """The module, None if it does not exist; ValueError if importing it fails otherwise."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise ValueError(f"importing {name!r} for {path!r} failed: {exc}") from None
    except BaseException as exc:  # a module that raises on import (even SystemExit) is bad input
        raise ValueError(
            f"importing {name!r} for {path!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def _attribute(obj: object, part: str, path: str) -> tuple[bool, object]:
    """(found, value) of `obj.part`; a `__getattr__` that raises anything else is reported."""
    try:
        return True, getattr(obj, part)
    except AttributeError:
        return False, None
    except BaseException as exc:
        raise ValueError(
            f"looking up {part!r} for {path!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def _public_names(obj: object) -> list[str]:
    try:
        return [n for n in dir(obj) if not n.startswith("_")]
    except BaseException:  # a module's own __dir__ may fail too; then no suggestion
        return []


def _split(text: str) -> tuple[ModuleType, str]:
    """The module part of `text` (the longest importable prefix) and the attribute path."""
    if ":" in text:
        module_name, _, attr = text.partition(":")
        module = _import_module(module_name, text)
        if module is None:
            raise ValueError(_missing(module_name, text))
        return module, attr
    parts = text.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = _import_module(".".join(parts[:cut]), text)
        if module is not None:
            return module, ".".join(parts[cut:])
    raise ValueError(_missing(".".join(parts[:-1]), text))


def _missing(module_name: str, text: str) -> str:
    return (
        f"cannot import {text!r}: no module named {module_name!r}; check the spelling, "
        "or install the package / put its directory on the import path (-I DIR)"
    )


def import_object(path: str) -> object:
    """The object `path` names; ValueError saying what is wrong and how to fix it."""
    text = path.strip()
    if not text or text.startswith((".", ":")) or text.endswith((".", ":")):
        raise ValueError(
            f'{path!r} is not an import path: write "package.module.Name", '
            '"package.module:Name" or a builtin such as "TimeoutError"'
        )
    if ":" not in text and "." not in text:
        if not hasattr(builtins, text):
            names = [n for n in dir(builtins) if n[:1].isupper()]
            raise ValueError(
                f"{text!r} is not a builtin{_suggest(text, names)}; for another type write its "
                'full import path ("package.module.Name" or "package.module:Name")'
            )
        return getattr(builtins, text)
    module, attr = _split(text)
    obj: object = module
    for part in attr.split("."):
        found, value = _attribute(obj, part, text)
        if not found:
            names = _public_names(obj)
            raise ValueError(
                f"{module.__name__!r} has no attribute {attr!r}{_suggest(part, names)}"
            )
        obj = value
    return obj


def module_allowed(module: str, prefixes: Iterable[str]) -> bool:
    """Is `module` one of `prefixes` or under one (``"myapp."`` and ``"myapp"`` both allow
    ``myapp`` and ``myapp.fallbacks``, not ``myapp_evil``)?"""
    for prefix in prefixes:
        base = prefix.strip().rstrip(".:")
        if base and (module == base or module.startswith(base + ".")):
            return True
    return False


def _module_of(path: str) -> str:
    text = path.strip()
    if ":" in text:
        return text.partition(":")[0]
    return text.rpartition(".")[0] or "builtins"


def _defined_in(obj: object) -> str | None:
    """The module a function or class was defined in (None for other callables)."""
    if inspect.isroutine(obj) or inspect.isclass(obj):
        module = getattr(obj, "__module__", None)
        return module if isinstance(module, str) else "builtins"
    return None


def _check_origin(path: str, obj: object, allow: tuple[str, ...] | None) -> None:
    named = _module_of(path)
    defined = _defined_in(obj)
    for module in (named, defined):
        if module is not None and module.partition(".")[0] in _STDLIB:
            raise ValueError(
                f"{path.strip()!r} is {'a builtin' if module == 'builtins' else 'standard library'}"
                f" code ({module}): a fallback handler must be a function of your application, "
                'such as "myapp.fallbacks:cached_quote"'
            )
    if allow is not None and not module_allowed(named, allow):
        shown = ", ".join(repr(p) for p in allow) or "none"
        raise ValueError(
            f"{path.strip()!r} is outside the modules this engine allows handlers from "
            f"(allow_modules: {shown}): move the handler there, or allow its module"
        )


def _check_signature(path: str, obj: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # no signature to read (some C callables): trust it
        return
    try:
        signature.bind(ValueError("the error"))
    except TypeError:
        raise ValueError(
            f"{path.strip()!r} cannot be called with the error: its parameters are "
            f"{signature}; a handler takes one argument, the error (def handler(error): ...)"
        ) from None


def resolve_handler(path: str, allow_modules: Iterable[str] | None = None) -> Callable[..., Any]:
    """A fallback handler: the application's own callable (sync or async) taking the error;
    ValueError saying why not (see the module docstring)."""
    allow = None if allow_modules is None else tuple(allow_modules)
    _check_origin(path, None, allow)  # before importing: a refused module's code never runs
    obj = import_object(path)
    if not callable(obj):
        raise ValueError(f"{path!r} is not callable: a handler is a function taking the error")
    try:
        _check_origin(path, obj, allow)
        _check_signature(path, obj)
    except ValueError:
        raise
    except BaseException as exc:  # an object whose __signature__ or __module__ raises
        raise ValueError(
            f"inspecting {path.strip()!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    return obj
