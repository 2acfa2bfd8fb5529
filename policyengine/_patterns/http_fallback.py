"""What the HTTP client integrations share about fallbacks: a client can only hand its caller a
response, so a policy whose fallback cannot produce one is refused (see `policyengine.httpx`).
"""

from __future__ import annotations

import logging
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._config.imports import resolve_handler
from .._telemetry.events import Event
from ..exceptions import PolicyEngineError

if TYPE_CHECKING:
    from .._registry.handle import GuardHandle
    from .._runtime.guard import Guard

__all__ = ["UnusableFallbackError", "bound", "fallback_problem", "report_unusable"]

logger = logging.getLogger("policyengine")


class UnusableFallbackError(PolicyEngineError, TypeError):
    """A policy's fallback cannot stand in for the client's response (see `fallback_problem`)."""


def _returns(handler: Callable[..., Any], response: type) -> bool | None:
    """Whether the handler's return annotation admits a `response` (None: it does not say)."""
    name = response.__name__
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # an annotation that does not resolve here: judge its text
        raw = getattr(handler, "__annotations__", {}).get("return")
        return None if raw is None else name in str(raw)
    ret = hints.get("return")
    if ret is None or ret is Any:
        return None
    union = typing.get_origin(ret) in (typing.Union, types.UnionType)
    for arm in typing.get_args(ret) if union else (ret,):
        if arm is Any:
            return None
        target = typing.get_origin(arm) or arm
        if isinstance(target, type) and issubclass(target, response):
            return True
    return False


def fallback_problem(guard: Guard, response: type, client: str) -> str | None:
    """Why `guard`'s fallback cannot give `client` a `response`, or None when it can (or might:
    a handler without a return annotation is checked when it is used)."""
    options = guard.policy.fallback
    if options is None or guard.mode != "enforce":
        return None
    wanted = f"{response.__module__.split('.')[0]}.{response.__name__}"
    fix = (
        f"use a fallback.handler that returns an {wanted} (a cached or placeholder response), "
        "or no fallback (the guard's error then propagates, and "
        "policyengine.asgi.GuardErrorMiddleware answers it with 503 or 504)"
    )
    if options.handler is None:
        return (
            f"policy {guard.name!r} has fallback.value = {options.value!r}, but {client} can "
            f"only return an {wanted}: {fix}"
        )
    if _returns(resolve_handler(options.handler), response) is False:
        return (
            f"policy {guard.name!r} has fallback.handler = {options.handler!r}, annotated to "
            f"return something other than an {wanted}: {fix}"
        )
    return None


def bound(handles: list[GuardHandle]) -> list[GuardHandle]:
    """The handles whose engine exists already: a client made at import time, before
    ``load()``, must not load the default engine as a side effect (its guards are checked at
    their first request instead)."""
    from .._registry import default as _default

    return [h for h in handles if h._engine is not None or _default._default is not None]


def report_unusable(handle: GuardHandle, problem: str, client: str) -> None:
    """A reload put such a policy in force: one ERROR line and a ``fallback_unusable`` event
    (the client cannot veto an engine-wide reload; requests keep flowing)."""
    handle.engine._emit(
        Event("fallback_unusable", handle.name, {"problem": f"{client}: {problem}"})
    )
