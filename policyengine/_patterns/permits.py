"""The breaker's states and permits: what a caller holds between `acquire` and its outcome.

A closed call gets `closed_permit(generation)` (even, >= 0), a probe `probe_permit(id)` (odd; the
id is unique and lives only until the next transition), an observe-mode call that enforcement
would have rejected gets `OBSERVED`. Every transition bumps the generation and clears the
probes, so the outcome of a call admitted before it is stale and changes nothing. While the
breaker is not closed its closed permit is `NOT_CLOSED`, which no permit ever equals.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

__all__ = [
    "NAMES",
    "NOT_CLOSED",
    "OBSERVED",
    "State",
    "StateName",
    "closed_permit",
    "is_probe",
    "probe_of",
    "probe_permit",
]


class State(IntEnum):
    """The machine's states (ints, so the hot paths compare them at int speed)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    FORCED_OPEN = 3
    FORCED_CLOSED = 4


StateName = Literal["closed", "open", "half_open", "forced_open"]
"""What `Breaker.state` reads (forced closed reads "closed")."""

NAMES: tuple[StateName, ...] = ("closed", "open", "half_open", "forced_open", "closed")
NOT_CLOSED = -2  # the closed permit while not closed: no permit ever equals it
OBSERVED = -1  # the permit of an observe-mode call that enforcement would have rejected


def closed_permit(generation: int) -> int:
    """The permit of every closed call of `generation` (even, >= 0)."""
    return generation << 1


def probe_permit(probe: int) -> int:
    """The permit of half-open probe number `probe` (odd, > 0)."""
    return probe << 1 | 1


def is_probe(permit: int) -> bool:
    return permit > 0 and permit & 1 == 1


def probe_of(permit: int) -> int:
    """The probe number of a probe permit; 0 for any other permit."""
    return permit >> 1 if permit > 0 and permit & 1 else 0
