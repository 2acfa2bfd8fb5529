"""The default engine behind the module-level `guard()`, and `load` / `loads`.

Without an explicit `load`, the first use of `guard(name)` loads `$POLICYENGINE_FILE`, else
`policies/policies.toml` (relative to the working directory).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ._clock import Clock
from ._engine import Engine
from ._handle import GuardHandle
from ._loader import load_path, load_text

__all__ = ["default_engine", "guard", "load", "loads", "set_default_engine"]

DEFAULT_FILE = "policies/policies.toml"

_lock = threading.Lock()
_default: Engine | None = None
_handles: dict[str, GuardHandle] = {}


def load(
    path: str | os.PathLike[str],
    *,
    watch: bool = False,
    clock: Clock | None = None,
    default: bool = True,
    strict: bool = False,
    **watch_options: Any,
) -> Engine:
    """Validate and compile a policy file (or a directory of them); optionally watch it.

    Raises PolicyValidationError listing every problem. Becomes the default engine for
    `guard()` unless `default=False`. `watch_options` go to the watcher (e.g. `force_polling`).
    """
    engine = Engine(load_path(path, strict=strict), clock=clock, path=Path(path))
    engine.strict = strict
    if watch:
        engine.watch(**watch_options)
    if default:
        set_default_engine(engine)
    return engine


def loads(
    text: str,
    *,
    source: str = "<string>",
    clock: Clock | None = None,
    default: bool = True,
    strict: bool = False,
) -> Engine:
    """Like `load`, from a TOML string (no watching)."""
    engine = Engine(load_text(text, source, strict=strict), clock=clock)
    if default:
        set_default_engine(engine)
    return engine


def set_default_engine(engine: Engine | None) -> None:
    """Make `engine` the one behind `guard(name)` (None: load lazily again at next use)."""
    global _default
    with _lock:
        _default = engine


def default_engine() -> Engine:
    """The default engine, loading the default file on first use."""
    engine = _default
    if engine is not None:
        return engine
    with _lock:
        if _default is None:
            path = os.environ.get("POLICYENGINE_FILE") or DEFAULT_FILE
            globals()["_default"] = Engine(load_path(path), path=Path(path))
        assert _default is not None
        return _default


def guard(name: str) -> GuardHandle:
    """The stable handle of policy `name` in the default engine.

    If the default engine is loaded, an unknown name raises UnknownGuardError now; before any
    load (a decorator at import time), the name is checked at the first call.
    """
    handle = _handles.get(name)
    if handle is None:
        engine = _default
        if engine is not None:
            engine.guard(name)  # raises UnknownGuardError for an unknown name
        handle = _handles.setdefault(name, GuardHandle(name, None))
    elif _default is not None and name not in _default.guards:
        _default.guard(name)
    return handle
