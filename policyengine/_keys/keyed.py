"""The compile side of keyed guards: the lane factories of a policy (what `KeyRegistry` builds
each key's breaker and bulkhead with), kept apart from the registry so that the registry never
needs to know what a policy is.

`policy_factories(name, policy, clock, ...)` returns a `LaneFactories` whose

- `breaker` builds the key's breaker from `policy.breaker` (through `make_breaker`, the engine's
  breaker factory, so a `shared` breaker comes from the state backend, stored per key under
  `shared_name`), observe-mode included;
- `bulkhead` returns the policy's one bulkhead (`partition.bulkhead = "shared"`) or a new one per
  key with the policy's limits (`"per_key"`);
- `update` brings a lane built under older options up to date in place: the breaker is
  reconfigured (state and counts kept), its observe flag set, an own bulkhead resized (held
  permits stay counted); a layer the policy dropped is dropped, one it gained is built (so is a
  breaker whose `shared` changed: its state is elsewhere).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._patterns.breaker import Breaker
from .._patterns.bulkhead import Bulkhead
from .partition import KeyRegistry, Lane, LaneFactories

if TYPE_CHECKING:
    from .._config.models import Policy
    from .._runtime.clock import Clock
    from .._runtime.guard import Guard
    from .._telemetry.events import Event

__all__ = ["guard_runner", "partition_guard", "policy_factories", "shared_name"]

MakeBreaker = Callable[[str, "Policy", "Clock", Callable[["Event"], None]], Breaker]


def _plain_breaker(
    name: str, policy: Policy, clock: Clock, emit: Callable[[Event], None]
) -> Breaker:
    assert policy.breaker is not None
    return Breaker(name, policy.breaker, clock, emit, observe=policy.mode == "observe")


def shared_name(name: str, key: str) -> str:
    """The name a key's `shared` breaker is stored under: ``name[key]`` (the state backend
    encodes it whole into its Redis key, ``{prefix}:breaker:{name%5Bkey%5D}``), so each key has
    its own state in the store, shared by every process that calls that key."""
    return f"{name}[{key}]"


def policy_factories(
    name: str,
    policy: Policy,
    clock: Clock,
    *,
    make_breaker: MakeBreaker = _plain_breaker,
    shared_bulkhead: Bulkhead | None = None,
    runner: Callable[[Lane], Any] | None = None,
) -> LaneFactories:
    """The lane factories of `policy` (see the module docstring). `shared_bulkhead` is the
    policy's own bulkhead, used by every key unless `partition.bulkhead = "per_key"`."""
    per_key = policy.partition is not None and policy.partition.bulkhead == "per_key"
    limits = policy.bulkhead
    options = policy.breaker
    observe = policy.mode == "observe"

    def breaker(key: str, emit: Callable[[Event], None]) -> Breaker | None:
        if options is None:
            return None
        if make_breaker is _plain_breaker:  # the usual case, one call less per new key
            return Breaker(name, options, clock, emit, observe=observe)
        # a shared breaker keeps its state under its name: one per key (`shared_name`)
        return make_breaker(shared_name(name, key) if options.shared else name, policy, clock, emit)

    def bulkhead(key: str) -> Bulkhead | None:
        if limits is None:
            return None
        if not per_key:
            return shared_bulkhead
        return Bulkhead(name, limits.limit, limits.max_queue, limits.max_wait, limits.kind)

    def update(lane: Lane) -> None:
        current = lane.breaker
        shared_now = getattr(current, "_backend", None) is not None  # from the state backend
        if options is None or current is None or shared_now != options.shared:
            lane.breaker = None  # none now, or of another kind: the registry builds anew
        else:
            current.reconfigure(options)
            current.observe = observe
        own = lane.bulkhead
        was_own = lane.factories is not None and lane.factories.own_bulkheads
        if (
            limits is not None
            and per_key
            and was_own
            and own is not None
            and own.kind == limits.kind
        ):
            own.resize(limits.limit, limits.max_queue, limits.max_wait)
            return
        lane.bulkhead = bulkhead(lane.key)

    return LaneFactories(
        breaker, None if limits is None else bulkhead, runner, update, own_bulkheads=per_key
    )


def guard_runner(guard: Guard, template: Guard | None = None) -> Callable[[Lane], Guard]:
    """A runner factory: each lane runs through a guard of its own over the lane's breaker and
    bulkhead, sharing everything else (metrics, retry, budget, fallback, layers, hedge, events)
    with `guard`,
    the policy's. So every driver (`call`, `call_sync`, `async with`, observe mode) serves a key
    unchanged, and a keyed call costs one registry lookup more than an unkeyed one.

    `template`: the policy's guard as compiled, with its ramp (`enforce`) and drill (`chaos`):
    each lane's guard gets them continued from it, so they run per policy (one ramp timeline,
    one drill), each call drawing as an unkeyed one would."""
    from .._rollout.drill import attach_drill
    from .._rollout.enforce import attach_ramp
    from .partition_guard import LaneGuard

    def runner(lane: Lane) -> Guard:
        out = LaneGuard(
            guard.name,
            guard.policy,
            guard.clock,
            guard.emit,
            guard.metrics,
            breaker=lane.breaker,
            bulkhead=lane.bulkhead,
            retry=guard.retry,
            budget=guard.budget,
            fallback=guard.fallback,
            layers=guard.layers,
            hedge=guard.hedge,
        )
        out.owner = guard  # deadlines in the policy guard's queues: one timer for every key
        if template is not None:
            attach_ramp(out, template)  # each returns at once when the policy has none
            attach_drill(out, template)
        return out

    return runner


def partition_guard(
    guard: Guard,
    old: Guard | None,
    make_breaker: MakeBreaker,
    emit: Callable[[Event], None],
    commits: list[Callable[[], None]],
) -> Guard:
    """The compiled guard of a partitioned policy, from `guard` (compiled without a breaker of
    its own; its bulkhead is the shared one): a `PartitionedGuard` over `old`'s registry when
    `old` was partitioned (every key keeps its state: the new options reach the registry in a
    commit, and each lane lazily at its next use), else over a new one. `emit` is the breakers'
    event sink."""
    from .partition_guard import PartitionedGuard

    policy = guard.policy
    assert policy.partition is not None
    out = PartitionedGuard.from_guard(guard)
    factories = policy_factories(
        guard.name,
        policy,
        guard.clock,
        make_breaker=make_breaker,
        shared_bulkhead=guard.bulkhead,
        runner=guard_runner(out, guard),
    )
    registry = getattr(old, "partition", None)
    if isinstance(registry, KeyRegistry):
        commits.append(functools.partial(registry.reconfigure, policy.partition, factories))
    else:
        registry = KeyRegistry(guard.name, policy.partition, guard.clock, emit, factories)
    out.bind(registry)
    return out
