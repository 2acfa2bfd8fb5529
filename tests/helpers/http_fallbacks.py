"""Fallback handlers the HTTP client tests name in their policies (importable by path)."""

from __future__ import annotations

from typing import Any

import httpx


def cached_response(error: BaseException) -> httpx.Response:
    """A placeholder response: what a transport can return instead of raising."""
    return httpx.Response(202, json={"status": "queued", "because": type(error).__name__})


def cached_dict(error: BaseException) -> dict[str, Any]:
    """Annotated to return a dict: a transport refuses it before any outage."""
    return {"status": "cached"}


def unannotated(error):  # type: ignore[no-untyped-def]
    """Says nothing about what it returns: checked when used."""
    return {"status": "cached"}
