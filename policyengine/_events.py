"""Events a guard or engine emits to listeners, and the logging listener installed by default.

Event names: ``state_change``, ``rejected``, ``retry``, ``timeout``, ``fallback``,
``budget_exhausted``, ``would_reject`` and ``would_retry`` (observe mode), ``reload``,
``reload_failed``, ``policy_removed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Listener", "Listeners", "log_listener"]

logger = logging.getLogger("policyengine")


@dataclass(frozen=True, slots=True)
class Event:
    """Something a guard did: `name` is one of the module's event names, `guard` the policy."""

    name: str
    guard: str
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]

_LEVELS = {
    "state_change": logging.WARNING,
    "reload": logging.INFO,
    "reload_failed": logging.ERROR,
    "policy_removed": logging.WARNING,
}


def log_listener(event: Event) -> None:
    """Log state changes and reloads (never one line per call)."""
    level = _LEVELS.get(event.name)
    if level is None or not logger.isEnabledFor(level):
        return
    details = " ".join(f"{k}={v}" for k, v in event.data.items())
    logger.log(
        level,
        "%s %s %s",
        event.name,
        event.guard,
        details,
        extra={
            "guard": event.guard,
            "event": event.name,
            **{f"pe_{k}": v for k, v in event.data.items()},
        },
    )


class Listeners:
    """A list of listeners; a listener that raises is logged and never breaks a call.

    `hot` is False while only the default log listener is installed: guards then skip building
    events for rejections, which the log listener ignores anyway.
    """

    __slots__ = ("_items", "hot")

    def __init__(self) -> None:
        self._items: tuple[Listener, ...] = (log_listener,)
        self.hot = False

    def add(self, listener: Listener) -> None:
        self._items = (*self._items, listener)
        self.hot = True

    def remove(self, listener: Listener) -> None:
        self._items = tuple(x for x in self._items if x is not listener)
        self.hot = any(x is not log_listener for x in self._items)

    def __call__(self, event: Event) -> None:
        for listener in self._items:
            try:
                listener(event)
            except Exception:
                logger.exception("policyengine listener %r failed on %s", listener, event.name)
