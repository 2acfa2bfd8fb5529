"""Import paths named in policy files: ``"pkg.mod.Name"``, ``"pkg.mod:Name"``, bare builtins."""

from __future__ import annotations

import builtins
import difflib
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["import_object", "resolve_handler"]


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
    except Exception as exc:  # a user module that raises on import is bad input, not a crash
        raise ValueError(
            f"importing {name!r} for {path!r} failed: {type(exc).__name__}: {exc}"
        ) from None


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
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ValueError(
                f"{module.__name__!r} has no attribute {attr!r}{_suggest(part, names)}"
            )
        obj = getattr(obj, part)
    return obj


def resolve_handler(path: str) -> Callable[..., Any]:
    """A fallback handler: a callable (sync or async) taking the error."""
    obj = import_object(path)
    if not callable(obj):
        raise ValueError(f"{path!r} is not callable: a handler is a function taking the error")
    return obj
