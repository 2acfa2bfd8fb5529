"""The connection and lease thread behind an engine's fleet-wide rate limits (`_limiter`).

One daemon thread per store runs every Redis command, with redis-py's synchronous client, so
nothing touches the network on a caller's thread or on an event loop. Every `FETCH_EVERY` seconds
(sooner when a call found no slot) it tops up each limiter's leases.

- Live processes: every process renews its entry in each policy's registry every `LIVE_EVERY`
  seconds; entries older than `LIVE_TTL` seconds are dropped. The count divides each limiter's
  per-process share.
- After `os.fork()` the child gets a thread, locks and a live-registry entry of its own.
- Store unreachable (a command fails or outlasts the timeout; redis-py's retries are off, so a
  script is never re-run): the store is marked degraded and every limiter falls back to its
  per-process share at once; a PING every `RECOVER_EVERY` seconds looks for the store, and once
  it answers, leasing resumes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._limiter_script import LIMITER_LUA, LIMITER_SHA, procs_key

if TYPE_CHECKING:
    from ._limiter import SharedRateLimiter

__all__ = ["LimiterStore"]

logger = logging.getLogger("policyengine")

FETCH_EVERY = 0.005  # the lease loop's period
LIVE_EVERY = 1.0
LIVE_TTL = 3.0
RECOVER_EVERY = 0.25


class LimiterStore:
    """The Redis connection and lease thread behind an engine's shared rate limits."""

    def __init__(
        self,
        url: str,
        prefix: str = "policyengine",
        timeout: float = 0.05,
        *,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """`alive`: polled by the thread; once it says False the store closes itself (the
        engine's state backend it belongs to was closed)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = prefix
        self.timeout = timeout
        self._alive = alive
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._noscript = redis.exceptions.NoScriptError
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            decode_responses=True,
            protocol=2,
        )
        self.member = uuid.uuid4().hex
        self.degraded = False
        self.errors = 0
        self.last_error: str | None = None
        self._limiters: weakref.WeakSet[SharedRateLimiter] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = self._new_thread()
        _live.add(self)

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="policyengine-ratelimit", daemon=True)

    def _after_fork(self) -> None:
        """In a forked child: a thread, locks and a registry entry of its own (redis-py's pool
        drops the parent's connections itself on the first command in a new process); each
        limiter forgets the slots it had leased (the parent uses them)."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.member = uuid.uuid4().hex
        started = self._thread.ident is not None
        self._thread = self._new_thread()
        for limiter in list(self._limiters):
            limiter.after_fork()
        if started and not self._closing:
            self._thread.start()

    def register(self, limiter: SharedRateLimiter) -> None:
        with self._lock:
            self._limiters.add(limiter)
            if not self._thread.is_alive() and not self._closing:
                self._thread.start()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop the thread; every limiter on this store falls back to its per-process share."""
        self._closing = True
        self.degraded = True
        self.wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(self.timeout * 4 + 1.0)
        self._client.close()

    def call(self, keys: list[str], args: list[Any]) -> Any:
        """One script call (store thread only). NOSCRIPT means it did not run: EVAL it."""
        try:
            return self._client.evalsha(LIMITER_SHA, len(keys), *keys, *args)
        except self._noscript:
            return self._client.eval(LIMITER_LUA, len(keys), *keys, *args)

    def _run(self) -> None:
        live_at = retry_at = 0.0
        while not self._closing:
            self._wake.wait(FETCH_EVERY)
            self._wake.clear()
            now = time.monotonic()
            if self._alive is not None and not self._alive():
                self._closing = self.degraded = True
                break
            if self.degraded:
                if now >= retry_at:
                    retry_at = now + RECOVER_EVERY
                    self._recover()
                continue
            try:
                limiters = list(self._limiters)
                if now >= live_at:
                    live_at = now + LIVE_EVERY
                    for limiter in limiters:
                        key = procs_key(self.prefix, limiter.name)
                        args = ["live", self.member, round(LIVE_TTL * 1000)]
                        limiter.set_live(int(self.call([key], args)))
                for limiter in limiters:
                    limiter.sync(self)
            except Exception as exc:  # the store's errors, or a reply we cannot read
                self._fail(exc)
                retry_at = time.monotonic() + RECOVER_EVERY
        self._client.close()

    def _fail(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self.degraded:
            self.degraded = True
            logger.warning(
                "policyengine: rate-limit store unreachable (%s); shared rate limits fall back "
                "to each process's share",
                self.last_error,
            )

    def _recover(self) -> None:
        try:
            self._client.ping()
        except self._errors as exc:
            self._fail(exc)
            return
        self.degraded = False
        logger.warning("policyengine: rate-limit store is back; shared rate limits lease again")

    def status(self) -> dict[str, Any]:
        return {"degraded": self.degraded, "errors": self.errors, "last_error": self.last_error}


_live: weakref.WeakSet[LimiterStore] = weakref.WeakSet()


def _after_fork() -> None:
    for store in list(_live):
        store._after_fork()


os.register_at_fork(after_in_child=_after_fork)
