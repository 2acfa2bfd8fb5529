"""The fleet in the store: heartbeats of live processes, and quorum breakers.

Heartbeats: every process with a shared (or quorum) breaker writes one to ``{prefix}:fleet``
every `HEARTBEAT_EVERY` seconds (its id, pid, host, policy version and the state of each of its
shared guards), valid for `HEARTBEAT_TTL`: a process that dies drops out of the live count once
its last heartbeat expires. ``policyengine fleet`` reads them.

Quorum breakers (``shared = "quorum"``): each process keeps its own, local breaker (its own counts
and rules, no round trip on any call). A process whose breaker opens by its own rules votes in
the guard's hash (the vote lives as long as a heartbeat and is renewed by each one while it stays
open or half-open; a close withdraws it). When the votes reach the quorum (a count, or a share of
the live processes) the store marks a fleet trip for `open_duration` and publishes it: every
process opens within a round trip (reason ``quorum``), or at its next heartbeat if it missed the
message, and probes on its own from there. A process's own vote counts toward the quorum; one
opened by the quorum does not vote (until a probe of its own fails).

A forced state written by ``policyengine force`` reaches quorum breakers the same way (message,
then heartbeat), unless their file says `force`, which always wins in that process.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._config.models import BreakerOptions
from .._patterns.breaker import Breaker, State
from .._patterns.outcomes import LocalStore
from .._runtime.clock import Clock
from .._telemetry.events import Event
from ._fleet_lua import FLEET_LUA, FLEET_SHA
from ._scripts import breaker_key, wire_name

if TYPE_CHECKING:
    from ._backend import RedisBackend
    from ._wire import Reply

__all__ = ["Fleet", "QuorumBreaker", "QuorumStore"]

HEARTBEAT_EVERY = 1.0  # seconds between heartbeats (and vote renewals)
HEARTBEAT_TTL = 3.0  # a heartbeat, and a vote, lapse this long after they were written


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class QuorumStore(LocalStore):
    """Local counting, plus this process's vote in the fleet (see the module docstring)."""

    __slots__ = ("backend", "breaker", "key", "left", "need", "spec", "votes", "voting", "wire")

    def __init__(self, name: str, options: BreakerOptions, clock: Clock, backend: Any) -> None:
        self.backend = backend
        self.key = breaker_key(backend.prefix, name)
        self.wire = wire_name(name)
        self.breaker: Breaker | None = None
        self.voting = False
        self.votes = self.need = 0
        self.left = 0.0  # seconds left of a fleet trip, as last read
        self.spec: tuple[str, float] = ("s", 0.5)
        super().__init__(options, clock.now)

    def configure(self, options: BreakerOptions) -> bool:
        q = options.quorum
        self.spec = ("s", 0.5) if q is None else ("n", q) if isinstance(q, int) else ("s", q)
        return super().configure(options)

    def entered(self, state: State, opened_here: bool) -> None:
        if state == State.OPEN and opened_here:
            vote = True  # this process's own rules opened it (a trip, a failed probe)
        else:  # half-open, or opened by the fleet, keeps the vote; any other state ends it
            vote = self.voting and state in (State.OPEN, State.HALF_OPEN)
        if vote != self.voting:
            self.voting = vote
            self.backend.fleet.vote_soon(self)

    def _machine(self) -> Breaker:
        assert self.breaker is not None
        return self.breaker

    def adopt(self, reply: Reply, *, message: bool = False, **_: object) -> None:
        """A published transition: a fleet trip, or a forced state from the command line."""
        self.follow(reply.state, reply.reason or "shared", reply.remaining)

    def voted(self, votes: int, need: int, left: float, state: str, force_left: float) -> None:
        """(On the loop.) The reply of a vote or of its renewal: the fleet's view."""
        self.votes, self.need, self.left = votes, need, left
        if left > 0:
            self.follow("open", "quorum", left)
        self.follow(state, "shared", 0.0)
        if force_left > 0:  # read again when the force lapses: the file's policy comes back
            self.backend.fleet.vote_later(self, force_left + 0.01)

    def follow(self, state: str, reason: str, remaining: float) -> None:
        machine = self._machine()
        now = machine.now()
        event = None
        with machine.lock:
            if machine.forced is not None:
                return  # the file's force wins in this process
            current = machine.current
            forced = current in (State.FORCED_OPEN, State.FORCED_CLOSED)
            if state == "open" and reason == "quorum":
                if current == State.CLOSED or (
                    current == State.OPEN and machine.open_left(now) < remaining
                ):
                    event = machine.follow(State.OPEN, reason, remaining, machine.reopens, now)
            elif state in ("forced_open", "forced_closed"):
                target = State.FORCED_OPEN if state == "forced_open" else State.FORCED_CLOSED
                event = machine.follow(target, "forced", 0.0, 0, now)
            elif state == "closed" and forced:
                event = machine.follow(State.CLOSED, reason, 0.0, 0, now)
        if event is not None:
            machine.publish(event)

    def snapshot(self) -> dict[str, object]:
        return {"quorum_votes": self.votes, "quorum_needed": self.need, "voting": self.voting}


class QuorumBreaker(Breaker):
    """A local breaker that votes, and opens when the fleet's quorum has (see `QuorumStore`)."""

    __slots__ = ("store",)

    def __init__(
        self,
        name: str,
        options: BreakerOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        backend: RedisBackend,
        *,
        observe: bool = False,
    ) -> None:
        self.store = QuorumStore(name, options, clock, backend)
        super().__init__(name, options, clock, emit, observe=observe, store=self.store)
        self.store.breaker = self

    @property
    def _backend(self) -> RedisBackend:  # (read by the engine: which store keeps the state)
        backend: RedisBackend = self.store.backend
        return backend

    @property
    def degraded(self) -> bool:
        return bool(self.store.backend.degraded)


class Fleet:
    """This process in the store: its heartbeat, and its quorum breakers' votes (on the loop)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.key = f"{backend.prefix}:fleet"
        self.id = process_id()
        self.live = 0  # live processes, as of the last heartbeat (0: not known yet)
        self.version: str | None = None  # the policy version in force, for `policyengine fleet`
        self._beat_at = 0.0
        self.quorum: weakref.WeakValueDictionary[str, QuorumBreaker]
        self.quorum = weakref.WeakValueDictionary()

    def add(self, breaker: QuorumBreaker) -> None:
        self.quorum[breaker.store.wire] = breaker

    def store(self, wire: str) -> QuorumStore | None:
        breaker = self.quorum.get(wire)
        return None if breaker is None else breaker.store

    def after_fork(self) -> None:
        self.id = process_id()
        self.live = 0
        self._beat_at = 0.0

    def status(self) -> dict[str, Any]:
        stores = [b.store for b in list(self.quorum.values())]
        return {
            "process": self.id,
            "live_processes": self.live,
            "quorum": {
                s.wire: {"votes": s.votes, "needed": s.need, "voting": s.voting} for s in stores
            },
        }

    # -- from any thread -------------------------------------------------------------------------

    def vote_soon(self, store: QuorumStore) -> None:
        self.backend.start_job(lambda: self._vote(store))

    def vote_later(self, store: QuorumStore, delay: float) -> None:
        """(On the loop.)"""

        def again() -> None:
            self.vote_soon(store)

        self.backend.loop.call_later(delay, again)

    # -- on the loop -----------------------------------------------------------------------------

    async def tick(self, now: float) -> None:
        """Heartbeat, and renew (or re-read) every quorum breaker's vote, when due."""
        if now < self._beat_at:
            return
        self._beat_at = now + HEARTBEAT_EVERY
        try:
            await self._beat()
        except Exception:  # recorded by _eval: the backend is degraded and recovers
            return
        stores = [b.store for b in list(self.quorum.values())]
        await asyncio.gather(*(self._vote(s) for s in stores), return_exceptions=True)

    async def leave(self) -> None:
        """(At close.) Withdraw the votes and the heartbeat: the fleet counts one fewer."""
        for breaker in list(self.quorum.values()):
            breaker.store.voting = False
        stores = [b.store for b in list(self.quorum.values())]
        await asyncio.gather(*(self._vote(s) for s in stores), return_exceptions=True)
        await self._beat(leaving=True)

    async def _beat(self, *, leaving: bool = False) -> None:
        guards: dict[str, str] = {}
        for breaker in (*self.backend.shared_breakers(), *self.quorum.values()):
            guards[breaker.name] = breaker.state
        info = {"pid": os.getpid(), "host": socket.gethostname(), "version": self.version}
        text = "" if leaving else json.dumps({**info, "guards": guards}, sort_keys=True)
        raw = await self._eval(self.key, "beat", self.id, _ms(HEARTBEAT_TTL), text)
        self.live = int(raw[0])

    async def _vote(self, store: QuorumStore) -> None:
        if not self.live:
            await self._beat()
        kind, q = store.spec
        machine = store._machine()
        args: tuple[object, ...] = (self.backend.channel, store.wire, self.id, int(store.voting))
        args += (_ms(HEARTBEAT_TTL), kind, q, self.live or -1, _ms(machine.open_duration))
        votes, need, left, state, force_left = await self._eval(store.key, "vote", *args)
        store.voted(int(votes), int(need), int(left) / 1000, str(state), int(force_left) / 1000)

    async def _eval(self, key: str, *argv: object) -> list[Any]:
        try:
            raw = await self.backend.link.run_script(FLEET_SHA, FLEET_LUA, key, *argv)
        except Exception as exc:
            self.backend.fail(exc)
            raise
        result: list[Any] = raw
        return result


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
