"""Compile validated policies into guards, carrying runtime state over from the guards in force.

Compilation is done aside and has no side effects: it returns the new guards plus a list of
`commits` (in-place updates of breakers and bulkheads shared with the old guards) that the engine
runs only once the whole set compiled, right before it swaps the one reference. So a failed
reload touches nothing, and a good one keeps every breaker's state:

- unchanged policy: the very same Guard object (all state, all counters);
- changed thresholds or durations: the same Breaker, reconfigured in place (state and window);
- changed window shape: the same Breaker with a new window (open/closed state kept);
- changed bulkhead limits: the same Bulkhead, resized in place (held permits stay counted);
- a layer added: a new runtime for it; a layer removed: gone (metrics stay);
- a `shared` breaker whose state lives elsewhere than the engine's state backend now says (listed
  in `renew`: `[state]` was changed by this reload, or by one since the guard was removed): a new
  breaker from the new backend ("new state backend"); the rest of the guard carries over.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from ._admission import admission_layers
from ._breaker import Breaker
from ._bulkhead import Bulkhead
from ._clock import Clock
from ._compile_layers import compile_adaptive, compile_hedge
from ._drill import attach_drill
from ._enforce import attach_ramp
from ._events import Event, Listeners
from ._fallback import Fallback
from ._guard import Guard
from ._keyed import partition_guard
from ._metrics import GuardMetrics
from ._models import Policy
from ._retry import RetryBudget, RetryStrategy

__all__ = ["CompiledSet", "compile_guards"]

BreakerFactory = Callable[[str, Policy, Clock, Callable[[Event], None]], Breaker]


@dataclass
class CompiledSet:
    """The outcome of compiling one PolicySet against the guards in force."""

    guards: dict[str, Guard]
    # name -> "new" | "unchanged" | "kept state" | "kept state, new window" | "reset state"
    #         | "new state backend"
    changes: dict[str, str]
    commits: list[Callable[[], None]] = field(default_factory=list)


def _default_breaker(
    name: str, policy: Policy, clock: Clock, emit: Callable[[Event], None]
) -> Breaker:
    assert policy.breaker is not None
    return Breaker(name, policy.breaker, clock, emit, observe=policy.mode == "observe")


def compile_guards(
    policies: Mapping[str, Policy],
    previous: Mapping[str, Guard],
    clock: Clock,
    emit: Listeners,
    make_breaker: BreakerFactory = _default_breaker,
    renew: Collection[str] = (),
) -> CompiledSet:
    """`renew`: names in `previous` whose breaker must not be kept, since it keeps its state in
    another backend than `make_breaker`'s (see the module docstring)."""
    out = CompiledSet({}, {})
    for name, policy in policies.items():
        old = previous.get(name)
        if old is not None and old.policy == policy and name not in renew:
            out.guards[name] = old
            out.changes[name] = "unchanged"
            continue
        out.guards[name], out.changes[name] = _compile_one(
            name, policy, old, clock, emit, make_breaker, out.commits, out.changes, name in renew
        )
    return out


def _compile_one(
    name: str,
    policy: Policy,
    old: Guard | None,
    clock: Clock,
    emit: Listeners,
    make_breaker: BreakerFactory,
    commits: list[Callable[[], None]],
    changes: dict[str, str],
    renew: bool = False,
) -> tuple[Guard, str]:
    change = "new" if old is None else "kept state"
    metrics = old.metrics if old is not None else GuardMetrics()
    breaker = None
    if policy.breaker is not None and policy.partition is None:  # partitioned: one per key
        prev = old.breaker if old is not None else None
        same_kind = (
            prev is not None
            and old is not None
            and old.policy.breaker is not None
            and old.policy.breaker.shared == policy.breaker.shared
        )
        if prev is not None and same_kind and not renew:
            breaker = prev
            commits.append(_reconfigure(prev, policy, name, changes))
        else:
            breaker = make_breaker(name, policy, clock, _counting(emit, metrics))
            if prev is not None and same_kind:
                change = "new state backend"  # `renew`: state from the new store
            elif old is not None and old.breaker is not None:
                change = "reset state"
    bulkhead = None
    if policy.bulkhead is not None:
        opts = policy.bulkhead
        prev_b = old.bulkhead if old is not None else None
        if prev_b is not None and prev_b.kind == opts.kind:
            bulkhead = prev_b
            if opts.kind != "adaptive":  # an adaptive one is retuned by its layer
                commits.append(
                    functools.partial(prev_b.resize, opts.limit, opts.max_queue, opts.max_wait)
                )
        else:
            bulkhead = Bulkhead(name, opts.limit, opts.max_queue, opts.max_wait, opts.kind)
    retry = budget = None
    if policy.retry is not None:
        retry = RetryStrategy(policy.retry, clock)
        if policy.retry.budget is not None:
            same = (
                old is not None
                and old.policy.retry is not None
                and old.policy.retry.budget == policy.retry.budget
                and old.budget is not None
            )
            budget = old.budget if same and old is not None else None
            budget = budget or RetryBudget(policy.retry.budget, clock)
    fallback = Fallback(policy.fallback) if policy.fallback is not None else None
    admission = admission_layers(
        name, policy, old.layers if old is not None else (), clock, emit, commits,
        getattr(make_breaker, "__self__", None),
    )  # fmt: skip
    layers = (*admission, *compile_adaptive(policy, old, bulkhead, commits))
    hedge = compile_hedge(name, policy, old, clock, emit, metrics, commits)
    guard = Guard(
        name,
        policy,
        clock,
        emit,
        metrics,
        breaker=breaker,
        bulkhead=bulkhead,
        retry=retry,
        budget=budget,
        fallback=fallback,
        layers=layers,
        hedge=hedge,
    )
    attach_ramp(guard, old)  # enforce / ramp (_enforce), if the policy has them
    attach_drill(guard, old)  # a chaos drill (_drill), if the policy has one
    if policy.partition is not None:  # a breaker (and bulkhead) per key: `_keyed`
        guard = partition_guard(guard, old, make_breaker, _counting(emit, metrics), commits)
    return guard, change


def _counting(emit: Callable[[Event], None], metrics: GuardMetrics) -> Callable[[Event], None]:
    """The breaker's event sink: counts observe-mode rejections, then passes events on."""

    def sink(event: Event) -> None:
        if event.name == "would_reject":
            metrics.count("would_reject")
        emit(event)

    return sink


def _reconfigure(
    breaker: Breaker, policy: Policy, name: str, changes: dict[str, str]
) -> Callable[[], None]:
    assert policy.breaker is not None
    options = policy.breaker
    observe = policy.mode == "observe"

    def commit() -> None:
        if breaker.reconfigure(options) == "window_reset":
            changes[name] = "kept state, new window"
        breaker.observe = observe

    return commit
