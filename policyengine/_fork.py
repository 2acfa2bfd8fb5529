"""Fork safety: an engine created before `os.fork()` keeps working in the child.

A forked child has one thread, the one that forked. Every other thread is gone: the watcher, the
Redis backend's loop, the workers of `kind = "threads"` pools; and a lock one of them held at the
fork stays locked forever. That is how gunicorn ``--preload`` (and a `multiprocessing` "fork"
start) runs an app whose module does ``engine = policyengine.load(..., watch=True)``.

One ``after_in_child`` hook, registered once when this module is imported, walks the engines
still alive (a `weakref.WeakSet`: an engine collected by the parent is not kept alive here) and
calls `Engine._after_fork` on each, which in this order: replaces the locks its parts use (the
engine's, each guard's breaker, metrics, bulkhead and retry budget) and drops the bulkhead queues
and thread pools the child cannot use; rebuilds the state backend (new loop, thread, clients);
restarts the watcher if it was running; then logs one INFO line. The default engine's lock is
replaced here. Nothing runs on a guarded call: the whole cost is paid once per fork.

What the child inherited from the parent's threads and shares with the parent at the OS level
(an inotify instance, an epoll instance, Redis sockets) must never be closed or finalized in the
child: closing an inherited event loop or transport unregisters the parent's descriptors from the
epoll instance both processes share, and a TLS transport would write its close_notify into the
parent's stream. `abandon` keeps such objects alive and unfinalized for the life of the child.
"""

from __future__ import annotations

import ctypes  # imported now: a forked child should not import (another thread's import lock)
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["abandon", "track"]

logger = logging.getLogger("policyengine")

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_abandoned: list[Any] = []  # inherited objects that must outlive the child (see `abandon`)
_pinned = False


def track(engine: Engine) -> None:
    """Have `engine` repaired in every child forked from now on (it is not kept alive)."""
    _engines.add(engine)


def abandon(*objects: Any) -> None:
    """Keep `objects` (inherited from the parent) alive and never finalized in this process.

    A module-level list alone is not enough: interpreter shutdown clears module globals, and the
    finalizers would then close the inherited loops and transports. So the list itself gets one
    extra reference that nothing ever releases (CPython), which keeps it and its contents out of
    reach of both reference counting and the cyclic collector at exit.
    """
    global _pinned
    _abandoned.append(objects)
    if not _pinned:
        _pinned = True
        try:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(_abandoned))
        except Exception:  # not CPython: the list alone keeps them until shutdown
            pass


def _after_fork_in_child() -> None:
    from . import _default  # (imported with the package: no import happens here)

    _default._lock = threading.Lock()  # guards `set_default_engine` / `default_engine`
    for engine in list(_engines):
        try:
            engine._after_fork()
        except Exception:
            logger.exception("policyengine: repairing an engine after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
