"""The default engine behind the module-level `guard()`, and `load` / `loads`.

Without an explicit `load`, the first use of `guard(name)` loads `$POLICYENGINE_FILE`, else
`policies/policies.toml` (relative to the working directory; see `_config.source.default_path`).

An engine made while an asyncio loop runs in this thread (`load()` / `loads()` called from a
coroutine, or the lazy load at the first `guard(name)` call inside one) is bound to that loop: its
watcher and its reloads run on the loop (see `_registry.onloop`). Otherwise it watches from a thread
until `engine.bind(loop)` is called.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from .._config.source import DEFAULT_FILE, FileSource, TextSource, default_path
from .._runtime.clock import Clock
from .engine import Engine
from .fork import register
from .handle import GuardHandle

__all__ = [
    "DEFAULT_FILE",
    "default_engine",
    "guard",
    "load",
    "loads",
    "replace_default_engine",
    "set_default_engine",
]

_default: Engine | None = None
_handles: dict[str, GuardHandle] = {}


class _Slot:
    """The lock that makes the lazy first load happen once; renewed in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def _after_fork(self) -> None:
        self.lock = threading.Lock()  # a thread of the parent may have held it at the fork


_slot = _Slot()
register(_slot)


def _bind_if_in_loop(engine: Engine) -> None:
    loop = asyncio._get_running_loop()
    if loop is not None:
        engine.bind(loop)


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
    Called inside a running asyncio loop, the engine is bound to it (watched on the loop).
    """
    engine = Engine(FileSource(Path(path), strict), clock=clock)
    _bind_if_in_loop(engine)
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
    engine = Engine(TextSource(text, source, strict), clock=clock)
    _bind_if_in_loop(engine)
    if default:
        set_default_engine(engine)
    return engine


def set_default_engine(engine: Engine | None) -> None:
    """Make `engine` the one behind `guard(name)` (None: load lazily again at next use)."""
    replace_default_engine(engine)


def replace_default_engine(engine: Engine | None) -> Engine | None:
    """Make `engine` the default one; returns the one it replaces (None: none was loaded)."""
    global _default
    with _slot.lock:
        previous, _default = _default, engine
    return previous


def default_engine() -> Engine:
    """The default engine, loading the default file on first use."""
    global _default
    engine = _default
    if engine is not None:
        return engine
    with _slot.lock:
        if _default is None:
            _default = Engine(FileSource(default_path()))
            _bind_if_in_loop(_default)
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
