"""Compiling the hedge section and the adaptive bulkhead: their runtimes, carried over a reload.

Called by `_registry.compile` for each policy; like the rest of compilation, nothing here changes a
runtime in force: in-place updates of objects shared with the old guard are returned as commits,
run only once the whole set compiled.

- hedge: the old guard's `Hedge` is kept and retuned (its latency estimator and budget window
  survive the reload); a new section gets a new one.
- adaptive bulkhead: the `AdaptiveLimit` layer over the guard's `Bulkhead`. With the same
  algorithm the learned limit is kept, clamped to the new bounds (`retune`, a commit); a new or
  changed algorithm starts at `initial_limit`. A fixed bulkhead has no layer: nothing is added
  to its hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._patterns.adaptive import AdaptiveLimit, make_algorithm
from .._patterns.hedge import Hedge

if TYPE_CHECKING:
    from .._config.models import Policy
    from .._patterns.bulkhead import Bulkhead
    from .._runtime.clock import Clock
    from .._runtime.guard import Guard
    from .._runtime.layer import AttemptLayer
    from .._telemetry.events import Listeners
    from .._telemetry.metrics import GuardMetrics

__all__ = ["compile_adaptive", "compile_hedge"]


def compile_hedge(
    name: str,
    policy: Policy,
    old: Guard | None,
    clock: Clock,
    emit: Listeners,
    metrics: GuardMetrics,
    commits: list[Callable[[], None]],
) -> Hedge | None:
    options = policy.hedge
    if options is None:
        return None
    previous = old.hedge if old is not None else None
    if previous is not None:
        commits.append(lambda: previous.retune(options))
        return previous
    return Hedge(name, options, clock, emit, count=metrics.count)


def _timeout_of(policy: Policy) -> float | None:
    """AIMD's timeout: the policy's attempt timeout, else its total one."""
    timeout = policy.timeout
    if timeout is None:
        return None
    return timeout.attempt if timeout.attempt is not None else timeout.total


def compile_adaptive(
    policy: Policy,
    old: Guard | None,
    bulkhead: Bulkhead | None,
    commits: list[Callable[[], None]],
) -> tuple[AttemptLayer, ...]:
    """The layers of an adaptive bulkhead (one `AdaptiveLimit`, or none)."""
    options = policy.bulkhead
    if options is None or options.kind != "adaptive" or bulkhead is None:
        return ()
    previous = None
    if old is not None and old.bulkhead is bulkhead:
        previous = next((x for x in old.layers if isinstance(x, AdaptiveLimit)), None)
    same = (
        previous is not None
        and old is not None
        and old.policy.bulkhead is not None
        and old.policy.bulkhead.algorithm == options.algorithm
    )
    if previous is not None and same:
        kept = previous
        timeout = _timeout_of(policy)
        commits.append(lambda: kept.retune(options, timeout))
        return (kept,)
    layer = AdaptiveLimit(bulkhead, make_algorithm(options, _timeout_of(policy)))
    if previous is None and (old is None or old.bulkhead is not bulkhead):
        layer.start()  # a bulkhead of its own: start at initial_limit now
    else:
        commits.append(layer.start)  # shared with the guard in force: at the swap
    return (layer,)
