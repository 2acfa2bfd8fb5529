"""Fork safety: an engine created before `os.fork()` keeps working in the child.

A forked child has one thread, the one that forked. Every other thread is gone: the watcher, the
Redis backend's loop, the workers of `kind = "threads"` pools; and a lock one of them held at the
fork stays locked forever. That is how gunicorn ``--preload`` (and a `multiprocessing` "fork"
start) runs an app whose module does ``engine = policyengine.load(..., watch=True)``.

The protocol: an object that must be repaired in a child has an `_after_fork()` method and
registers itself with `register(obj)` (a `weakref.WeakSet`: an object collected by the parent is
not kept alive here). One ``after_in_child`` hook, registered once when this module is imported,
calls `_after_fork()` on each registered object; this module reaches into none of them. Engines
register themselves (`Engine._after_fork`, in this order: replaces the locks its parts use, the
engine's, each guard's breaker, metrics, bulkhead and retry budget, and drops the bulkhead queues
and thread pools the child cannot use; rebuilds the state backend; restarts the watcher if it was
running, as a thread if it ran on the parent's event loop; then logs one INFO line), and so does
the default engine's slot in `_registry.default` (its lock). Nothing runs on a guarded call: the
whole cost is paid once per fork.

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
import weakref
from typing import Any, Protocol

__all__ = ["AfterFork", "abandon", "register"]

logger = logging.getLogger("policyengine")


class AfterFork(Protocol):
    """Something a forked child must repair before use."""

    def _after_fork(self) -> object: ...


_registered: weakref.WeakSet[AfterFork] = weakref.WeakSet()
_abandoned: list[Any] = []  # inherited objects that must outlive the child (see `abandon`)
_pinned = False


def register(obj: AfterFork) -> None:
    """Have `obj._after_fork()` called in every child forked from now on (`obj` is not kept
    alive by this)."""
    _registered.add(obj)


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
    for obj in list(_registered):
        try:
            obj._after_fork()
        except Exception:
            logger.exception("policyengine: repairing %r after fork failed", obj)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
