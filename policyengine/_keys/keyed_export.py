"""What the exporters read of keyed guards: a per-key view whose cardinality never grows with
traffic (Prometheus `policyengine_key_state{guard,key}`, OpenTelemetry
`resilience.policyengine.key.state`).

At most `limit` keys per guard are shown, the open (or half-open, forced open) ones first, then
the most recently used; the others are folded into one ``key="other"`` series whose value is the
highest state value among them (0 when every folded key is closed, or none is folded: the series
is always there), so an open key past the limit still shows. `key_counts` gives the number of
keys kept in each state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._telemetry.metrics import STATE_VALUES
from .keyed_handle import partition_of

if TYPE_CHECKING:
    from .._runtime.guard import Guard
    from .partition import KeyRegistry

__all__ = ["KEYS_SHOWN", "OTHER", "key_counts", "key_states", "view", "would_trips"]

KEYS_SHOWN = 20
"""The default number of keys per guard an exporter shows one by one."""

OTHER = "other"


def view(registry: KeyRegistry, limit: int) -> tuple[dict[str, str], dict[str, int]]:
    """The states of at most `limit` keys (the open ones first, then the most recently used)
    and how many of the others are in each state. Closed lanes are read without a lock."""
    lanes = registry.lanes()
    opened = [lane for lane in lanes if lane.open]
    chosen = opened[:limit]
    if len(chosen) < limit:
        chosen += [lane for lane in reversed(lanes) if not lane.open][: limit - len(chosen)]
    shown = {lane.key: lane.state for lane in chosen}
    rest: dict[str, int] = {}
    closed = len(lanes) - len(opened) - sum(not lane.open for lane in chosen)
    if closed:
        rest["closed"] = closed
    for lane in opened[limit:]:
        state = lane.state
        rest[state] = rest.get(state, 0) + 1
    return shown, rest


def key_states(guard: Guard, limit: int = KEYS_SHOWN) -> list[tuple[str, int]]:
    """[(key, state value)] of a partitioned guard: at most `limit` keys, then ("other", the
    highest value folded, 0 if none). [] for a policy without `partition`."""
    registry = partition_of(guard)
    if registry is None:
        return []
    shown, rest = view(registry, limit)
    folded = [STATE_VALUES.get(state, 0) for state in rest]
    if OTHER in shown:  # a key named "other" would clash with the fold: it joins it
        folded.append(STATE_VALUES.get(shown.pop(OTHER), 0))
    out = [(key, STATE_VALUES.get(state, 0)) for key, state in shown.items()]
    out.append((OTHER, max(folded, default=0)))  # always there: present from the first scrape
    return out


def would_trips(guard: Guard) -> int | None:
    """Trips the ejection cap turned into observations; None for a policy without `partition`."""
    registry = partition_of(guard)
    return None if registry is None else registry.would_trip


def key_counts(guard: Guard) -> dict[str, int]:
    """{state: keys kept in it} of a partitioned guard; {} for a policy without `partition`."""
    registry = partition_of(guard)
    if registry is None:
        return {}
    out = {"closed": 0, "open": 0, "half_open": 0, "forced_open": 0}
    for lane in registry.lanes():
        state = lane.state if lane.open else "closed"
        out[state] = out.get(state, 0) + 1
    return out
