"""The pub/sub listener: applies the transitions other processes publish on ``{prefix}:events``.

It runs on the backend's loop with a connection of its own that blocks on reads (no timeout).
After (re)subscribing it asks for a resync, since messages may have been missed meanwhile; losing
the subscription counts as a store failure. The backend restarts it after every recovery, since a
connection to a store that vanished may hang without knowing it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from ._wire import parse_message

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from ._backend import RedisBackend

__all__ = ["listen"]

RETRY_EVERY = 0.25  # after a lost subscription


async def listen(backend: RedisBackend) -> None:
    while True:
        pubsub: PubSub = backend.subscriber.pubsub()
        try:
            async with asyncio.timeout(backend.timeout * 4):
                await pubsub.subscribe(backend.channel)
                while True:  # until the subscription is confirmed
                    message = await pubsub.get_message(timeout=backend.timeout)
                    if message is not None and message.get("type") == "subscribe":
                        break
            backend.resync_soon()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    _apply(backend, message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            backend.fail(exc)
            backend.rotate_subscriber()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        await asyncio.sleep(RETRY_EVERY)


def _apply(backend: RedisBackend, data: str) -> None:
    parsed = parse_message(data)
    if parsed is not None:
        store = backend.store(parsed[0])
        if store is not None:
            store.adopt(parsed[1], message=True)
