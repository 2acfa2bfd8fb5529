"""Keyed guards: a registry of lanes, one per key (host, tenant, shard), each with its own breaker
and, with `bulkhead = "per_key"`, its own bulkhead.

Why: one breaker for every host behind a client is the best-known failure of the standard
handlers (dotnet/extensions#5021: one sick host opens the circuit for all). A breaker per key
fixes that, and brings two new duties, both borrowed from Envoy's outlier detection:

- Bounded memory. Keys come from traffic, so their number must not grow with it. The lanes sit in
  one LRU order (an `OrderedDict`; a use moves a lane to the young end, at most once per
  `idle_ttl / 100` (1 s at most), so a hot key costs a dict read and a clock read): past
  `max_keys` the least recently used closed, idle lane is dropped, and a closed lane unused for
  `idle_ttl` (engine clock) is dropped. Both happen lazily, a few steps at a time, when a key is
  added or the oldest lane fell due, so the cost is amortised O(1). A lane whose breaker is
  open, half-open or forced open is never dropped (its state is the point), nor one whose own
  bulkhead has calls in it. A dropped key that comes back starts afresh.
- An ejection cap (`max_open_ratio`, Envoy's `max_ejection_percent`). If a fault is fleet-wide,
  opening every key's breaker turns a partial outage into a total one. So at most
  `max(1, floor(max_open_ratio * keys))` lanes may be open at once (at least one, as Envoy
  always ejects one host). A trip past that is only observed: counted (`would_trip`), emitted as
  a ``would_trip`` event, and not enforced: the lane gets a fresh breaker, so the key keeps
  being called, as Envoy keeps a host it may not eject in the pool. Once the open share falls,
  the key's next trip is enforced. Re-opens after a failed probe are not new trips.

The registry does not care how a breaker or bulkhead is built: the compile step hands it a
`LaneFactories` (see `policy_factories`), and a reload hands it new ones (`reconfigure`). Lanes
pick up new options lazily, at their next use (one identity test per call), so a reload costs
O(1) however many keys there are; a breaker is reconfigured in place, so every key keeps its
state (open stays open, counts stay counted) under the new thresholds.

Each breaker reports its transitions through a `Sink` of its own lane: that is how the
registry knows which lanes are open (a flag per lane, read under the registry lock) and where
the cap is applied. A sink of a breaker the lane no longer holds is ignored.

Concurrency: one `threading.Lock` guards the order, the counts and the lanes' flags: every change
of the order is made under it (a sweep iterates the order), reads of one lane (`dict.get`) are
not. It is never held while calling into a breaker or a factory (a breaker emits from inside its
methods).
Between a trip the cap refuses and the swap to a fresh breaker, another thread may see the old
breaker open for a moment (microseconds; coroutines on one loop never do): closing that window
needs a hook inside the breaker (a trip gate consulted under its lock).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._telemetry.events import Event
from .lane import Lane, LaneFactories, Sink, repaired_after_fork

if TYPE_CHECKING:
    from .._config.partition_models import PartitionOptions
    from .._runtime.clock import Clock

__all__ = ["UNKEYED", "KeyRegistry", "Lane", "LaneFactories"]

UNKEYED = ""
"""The key of a call made without one: it runs in the lane "" (a key like any other)."""

_SWEEP_STEPS = 8  # lanes looked at per sweep: amortised O(1) per added key
_NOT_CLOSED = frozenset({"open", "half_open", "forced_open"})


class KeyRegistry:
    """key -> `Lane`, bounded by `max_keys` and `idle_ttl`, with the open-share cap (module doc)."""

    __slots__ = (
        "__weakref__",
        "_cap_ratio",
        "_due",
        "_emit",
        "_factories",
        "_grain",
        "_lanes",
        "_lock",
        "_max_keys",
        "_now",
        "_open",
        "_own",
        "_ttl",
        "dropped",
        "name",
        "would_trip",
    )

    def __init__(
        self,
        name: str,
        options: PartitionOptions,
        clock: Clock,
        emit: Callable[[Event], None],
        factories: LaneFactories,
    ) -> None:
        self.name = name
        self._now = clock.now
        self._emit = emit
        self._lock = threading.Lock()
        self._lanes: OrderedDict[str, Lane] = OrderedDict()
        self._open = 0  # lanes whose breaker is not closed
        self._due = math.inf  # no lane can fall idle before this (a lower bound)
        self.would_trip = 0  # trips the cap did not enforce
        self.dropped = 0  # lanes dropped (LRU or idle)
        self._factories = factories
        self._own = factories.own_bulkheads  # some lane may have a bulkhead of its own
        self._set_options(options)
        repaired_after_fork(self)

    def _set_options(self, options: PartitionOptions) -> None:
        self._max_keys = options.max_keys
        self._ttl = options.idle_ttl
        self._grain = min(1.0, options.idle_ttl / 100)
        self._cap_ratio = options.max_open_ratio

    # -- the hot path ----------------------------------------------------------------------------

    def lane(self, key: str) -> Lane:
        """The lane of `key` (made if new), marked as used now.

        A key used again within `_grain` (idle_ttl / 100, at most 1 s) is not touched again: a
        dict read (atomic), a clock read and two comparisons, no lock. Otherwise `_touch` marks
        it used and moves it to the young end of the LRU order, under the lock (so the order,
        and the idle time, are exact to within `_grain`)."""
        lane = self._lanes.get(key)
        if lane is None:
            return self._add(key, self._now())
        now = self._now()
        if now - lane.used >= self._grain:
            return self._touch(key, lane, now)
        if lane.factories is not self._factories:
            self._update(lane)
        return lane

    def _touch(self, key: str, lane: Lane, now: float) -> Lane:
        """Mark a lane used and move it to the young end, under the lock (every change of the
        order is: a sweep iterates it). A lane dropped meanwhile, or idle, is made afresh."""
        with self._lock:
            kept = self._lanes.get(key) is lane and self._kept(lane, now)
            if kept:
                lane.used = now
                self._lanes.move_to_end(key)
                if now >= self._due:
                    self._sweep(now, _SWEEP_STEPS)
        if not kept:
            return self._add(key, now)
        if lane.factories is not self._factories:
            self._update(lane)
        return lane

    def _add(self, key: str, now: float) -> Lane:
        factories = self._factories
        lane = Lane(key, now)
        self._build(lane, factories)  # outside the lock: factories may do anything
        with self._lock:
            lanes = self._lanes
            other = lanes.get(key)
            if other is not None:
                if self._kept(other, now):  # added meanwhile, or busy: one lane per key
                    other.used = now
                    lanes.move_to_end(key)
                    return other
                self._drop(key, other)  # an idle one: the key starts afresh
            lanes[key] = lane
            if len(lanes) > self._max_keys:  # the steady state past max_keys: drop the oldest
                old_key, old = lanes.popitem(last=False)
                if old.open or (self._own and self._busy(old)):
                    lanes[old_key] = old  # kept: to the back, and a sweep looks further
                    self._sweep(now, _SWEEP_STEPS)
                else:
                    old.sink = None
                    self.dropped += 1
                    if now >= self._due:  # (still a lower bound: the new oldest is younger)
                        self._sweep(now, _SWEEP_STEPS)
            elif now >= self._due:
                self._sweep(now, _SWEEP_STEPS)
            elif len(lanes) == 1:
                self._due = now + self._ttl
        return lane

    def _build(self, lane: Lane, factories: LaneFactories) -> None:
        key = lane.key
        sink = lane.sink = Sink(self, key)
        lane.breaker = factories.breaker(key, sink)
        if factories.bulkhead is not None:
            lane.bulkhead = factories.bulkhead(key)
        if factories.runner is not None:
            lane.runner = factories.runner(lane)
        lane.factories = factories

    def _update(self, lane: Lane) -> None:
        """Bring a lane built by older factories up to date, keeping its state. When `update`
        leaves the lane no breaker (the policy lost its breaker, or its kind changed: `shared`),
        the lane gets a new one, if the factories make any, with a sink of its own, closed."""
        factories = self._factories
        if factories.update is not None:
            factories.update(lane)
        if lane.breaker is None:
            sink = Sink(self, lane.key)
            breaker = factories.breaker(lane.key, sink)
            with self._lock:
                if self._lanes.get(lane.key) is lane:
                    lane.sink = sink
                if lane.open:
                    lane.open = False
                    self._open -= 1
            lane.breaker = breaker
        if factories.runner is not None:
            lane.runner = factories.runner(lane)
        lane.factories = factories

    # -- bounds (under the lock) -----------------------------------------------------------------

    def _kept(self, lane: Lane, now: float) -> bool:
        """Not droppable as idle: open, used within `idle_ttl`, or calls in its own bulkhead."""
        return lane.open or now - lane.used < self._ttl or (self._own and self._busy(lane))

    def _busy(self, lane: Lane) -> bool:
        """Calls hold this lane's own bulkhead (a shared one never keeps a lane)."""
        bulkhead, factories = lane.bulkhead, lane.factories
        own = factories is not None and factories.own_bulkheads
        return own and bulkhead is not None and bulkhead.active > 0

    def _sweep(self, now: float, steps: int) -> None:
        """Drop what is past `max_keys` or idle, oldest first, looking at most `steps` lanes
        (open and busy ones go to the back). Then `_due` bounds when the next one falls idle."""
        lanes, ttl, limit = self._lanes, self._ttl, self._max_keys
        while lanes and steps > 0:
            steps -= 1
            key = next(iter(lanes))
            lane = lanes[key]
            if lane.open or (self._own and self._busy(lane)):
                lanes.move_to_end(key)
            elif len(lanes) > limit or now - lane.used >= ttl:
                del lanes[key]
                lane.sink = None  # its breaker's later events are stale
                self.dropped += 1
            else:
                break
        self._due = lanes[next(iter(lanes))].used + ttl if lanes else math.inf

    def _drop(self, key: str, lane: Lane) -> None:
        del self._lanes[key]
        lane.sink = None  # its breaker's later events are stale
        self.dropped += 1

    def _cap(self) -> int:
        return max(1, math.floor(self._cap_ratio * len(self._lanes) + 1e-9))

    # -- events from the lanes' breakers ---------------------------------------------------------

    def _holder(self, sink: Sink) -> Lane | None:
        """The lane whose breaker reports to `sink`, if it still is (None: stale)."""
        lane = self._lanes.get(sink.key)
        return lane if lane is not None and lane.sink is sink else None

    def _on_event(self, sink: Sink, event: Event) -> None:
        if event.name != "state_change":
            self._emit(_keyed(event, sink.key, self.name))  # a rejection, stale breaker or not
            return
        data = event.data
        before, after = data.get("from"), data.get("to")
        if before == "closed" and after == "open":
            self._on_trip(sink, event)
            return
        with self._lock:
            lane = self._holder(sink)
            if lane is None:
                return  # a breaker no lane holds any more
            if after in _NOT_CLOSED and not lane.open:
                lane.open = True
                self._open += 1
            elif after == "closed" and lane.open:
                lane.open = False
                self._open -= 1
        self._emit(_keyed(event, sink.key, self.name))

    def _on_trip(self, sink: Sink, event: Event) -> None:
        """closed -> open: enforced within the cap, else observed (the lane gets a fresh
        breaker, built after the decision, outside the lock)."""
        with self._lock:
            lane = self._holder(sink)
            if lane is None:
                return
            enforced = lane.open or self._open < self._cap()
            if enforced:
                if not lane.open:
                    lane.open = True
                    self._open += 1
            else:
                lane.sink = fresh = Sink(self, sink.key)  # the old breaker is stale from now
                self.would_trip += 1
            keys_open, keys = self._open, len(self._lanes)
        if enforced:
            self._emit(_keyed(event, sink.key, self.name))
            return
        factories = lane.factories or self._factories
        breaker = factories.breaker(sink.key, fresh)
        with self._lock:
            if lane.sink is fresh:
                lane.breaker = breaker
        if factories.runner is not None:
            lane.runner = factories.runner(lane)  # it runs through the fresh breaker
        data = {"key": sink.key, "reason": event.data.get("reason"), "keys_open": keys_open}
        data["keys"] = keys
        self._emit(Event("would_trip", self.name, data))

    # -- reading ---------------------------------------------------------------------------------

    def get(self, key: str) -> Lane | None:
        """The lane of `key` if it is kept and not idle (not marked as used)."""
        now = self._now()
        with self._lock:
            lane = self._lanes.get(key)
            if lane is None or self._kept(lane, now):
                return lane
        return None

    def state(self, key: str) -> str:
        """The state of `key`'s breaker: "closed" for a key not kept (it would start afresh)."""
        lane = self.get(key)
        if lane is None:
            return "closed"
        if lane.factories is not self._factories:
            self._update(lane)
        return lane.state

    def keys(self) -> dict[str, str]:
        """{key: state} of the keys kept now, least recently used first."""
        with self._lock:
            self._sweep(self._now(), len(self._lanes) + 1)
            lanes = list(self._lanes.values())
        for lane in lanes:
            if lane.factories is not self._factories:
                self._update(lane)
        return {lane.key: lane.state for lane in lanes}

    def stats(self) -> dict[str, int]:
        """`keys` kept, `keys_open` (open, half-open or forced open), `would_trip`, `dropped`."""
        with self._lock:
            self._sweep(self._now(), len(self._lanes) + 1)
            return {
                "keys": len(self._lanes),
                "keys_open": self._open,
                "would_trip": self.would_trip,
                "dropped": self.dropped,
            }

    def __len__(self) -> int:
        return len(self._lanes)

    # -- reload ----------------------------------------------------------------------------------

    def reconfigure(
        self, options: PartitionOptions, factories: LaneFactories | None = None
    ) -> None:
        """Apply reloaded options: new bounds now (a tighter `max_keys` drops the excess closed,
        idle lanes at once), new factories for new lanes, and, lazily at each lane's next use,
        `factories.update` for the old ones: every key keeps its state under the new options."""
        with self._lock:
            self._set_options(options)
            if factories is not None:
                self._factories = factories
                self._own = self._own or factories.own_bulkheads
            self._sweep(self._now(), len(self._lanes) + 1)

    def lanes(self) -> list[Lane]:
        """Every lane kept now, each up to date with the options in force (for exporters)."""
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            if lane.factories is not self._factories:
                self._update(lane)
        return lanes

    def _after_fork(self) -> None:
        """In a forked child: fresh locks for the registry and every lane's breaker and own
        bulkhead (a thread of the parent may have held one; see `_registry.fork`). Called by
        `_keys.lane`'s at-fork hook, so the engine needs no knowledge of lanes."""
        self._lock = threading.Lock()
        for lane in list(self._lanes.values()):
            if lane.breaker is not None:
                lane.breaker._after_fork()
            factories = lane.factories
            if lane.bulkhead is not None and factories is not None and factories.own_bulkheads:
                lane.bulkhead._after_fork()


def _keyed(event: Event, key: str, guard: str) -> Event:
    """`event` with the lane's key in its data, under the policy's name (a key's shared breaker
    has a name of its own)."""
    return Event(event.name, guard, {**event.data, "key": key})
