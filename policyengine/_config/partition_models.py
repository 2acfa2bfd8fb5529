"""The `[policies.X.partition]` section: one breaker (and optionally one bulkhead) per key.

A model of its own (not in `_config.models`) so that `_config.models` only declares the field and
the runtime (`_keys.partition`) can import the options without importing every other section.

Cross-field rule, checked on the whole policy (`check_partition`): a partition must have
something to partition, a `breaker` or `bulkhead = "per_key"` with a `bulkhead` section. It is an
error, not a warning: a partition without either would silently run every key through one shared
breaker, which is the very failure (dotnet/extensions#5021: one sick host opens the circuit for
all) that the section exists to prevent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .matcher_models import FieldError, FrozenModel
from .units import Duration, Ratio

__all__ = ["PartitionOptions", "check_partition"]


class PartitionOptions(FrozenModel):
    """Keyed guards: a breaker (and with `bulkhead = "per_key"` a bulkhead) per key, bounded in
    number (`max_keys`, `idle_ttl`) and in how many may be open at once (`max_open_ratio`)."""

    by: Literal["key"] = Field(
        default="key", description='What a lane is keyed by: "key", given by the caller.'
    )
    max_keys: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        strict=True,
        description="Keys kept; past it the least recently used closed, idle key is dropped.",
    )
    idle_ttl: Duration = Field(
        default=600.0, description="A closed key unused this long is dropped (open ones are kept)."
    )
    max_open_ratio: Ratio = Field(
        default=0.5,
        description="At most this share of known keys open at once (at least one); past it new "
        "trips are only observed.",
    )
    bulkhead: Literal["shared", "per_key"] = Field(
        default="shared", description='"shared": one bulkhead for the policy; "per_key": one each.'
    )

    @model_validator(mode="after")
    def _positive(self) -> PartitionOptions:
        if self.idle_ttl <= 0:
            raise FieldError("idle_ttl", "partition.idle_ttl must be greater than 0s")
        return self


def check_partition(
    partition: PartitionOptions | None, has_breaker: bool, bulkhead_kind: str | None
) -> None:
    """Raise a `FieldError` on `partition` when it has nothing to partition (module docstring),
    or would give each key a thread pool of its own (`bulkhead.kind = "threads"`, per key: up to
    `max_keys` pools, whose threads a dropped key would leave behind), or an adaptive limit
    (`kind = "adaptive"`: one limit, learnt by the policy's layer, not one per key)."""
    if partition is None:
        return
    if partition.bulkhead == "per_key" and bulkhead_kind is None:
        raise FieldError(
            "partition",
            'partition.bulkhead = "per_key" needs a [bulkhead] section (its limits apply to '
            'each key): add one, or set partition.bulkhead = "shared"',
        )
    if partition.bulkhead == "per_key" and bulkhead_kind in ("threads", "adaptive"):
        why = "a thread pool per key" if bulkhead_kind == "threads" else "its limit is the policy's"
        raise FieldError(
            "partition",
            f'partition.bulkhead = "per_key" cannot be used with bulkhead.kind = "{bulkhead_kind}" '
            f'({why}): use partition.bulkhead = "shared" or bulkhead.kind = "async"',
        )
    if not has_breaker and partition.bulkhead != "per_key":
        raise FieldError(
            "partition",
            "partition needs a [breaker] section (a breaker per key), or a [bulkhead] with "
            'partition.bulkhead = "per_key": without either every key would share one lane',
        )
