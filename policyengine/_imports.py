"""Import paths named in policy files: ``"pkg.mod.Name"``, ``"pkg.mod:Name"``, bare builtins."""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["import_object", "resolve_handler"]


def import_object(path: str) -> object:
    """The object `path` names; ValueError saying what is wrong and how to fix it."""
    text = path.strip()
    if not text:
        raise ValueError('an import path needs a name, such as "package.module:Name"')
    if ":" in text:
        module_name, _, attr = text.partition(":")
    elif "." in text:
        module_name, _, attr = text.rpartition(".")
    else:
        module_name, attr = "builtins", text
    if module_name == "builtins":
        if not hasattr(builtins, attr):
            raise ValueError(
                f"{text!r} is not a builtin; write the full import path "
                '("package.module.Name" or "package.module:Name")'
            )
        return getattr(builtins, attr)
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} for {text!r} ({exc}); check the spelling, "
            "or install the package / put it on the import path"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve_handler(path: str) -> Callable[..., Any]:
    """A fallback handler: a callable (sync or async) taking the error."""
    obj = import_object(path)
    if not callable(obj):
        raise ValueError(f"{path!r} is not callable")
    return obj
