"""A blocking function run in the policy's own thread pool (`bulkhead.kind = "threads"`).

The bulkhead slot is held until the thread really finishes, even when the caller stopped
waiting (an attempt timeout, a cancellation): Python cannot stop a running thread, so the pool
never grows past `max_concurrent` and a slot is never handed on while its thread still runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._patterns.bulkhead import Bulkhead

__all__ = ["in_thread", "submit"]


def submit(
    bulkhead: Bulkhead, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> concurrent.futures.Future[Any]:
    """Start `fn` in the pool; its slot is given back when the thread ends."""
    ctx = contextvars.copy_context()
    try:
        future = bulkhead.pool.submit(ctx.run, fn, *args, **kwargs)
    except BaseException:  # e.g. the interpreter is shutting down: no thread, no slot
        bulkhead.release()
        raise
    future.add_done_callback(lambda _f: bulkhead.release())
    return future


async def in_thread(
    bulkhead: Bulkhead,
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """`await` a blocking `fn` run in the pool (the caller may stop waiting at a deadline)."""
    result = await asyncio.wrap_future(submit(bulkhead, fn, args, kwargs), loop=loop)
    if asyncio.iscoroutine(result):
        return await result
    return result
