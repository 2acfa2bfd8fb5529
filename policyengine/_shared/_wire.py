"""What goes over the wire: the Redis client settings, script replies and pub/sub messages."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Reply", "parse_message"]


class Reply(NamedTuple):
    """What every script call returns: the breaker's state in Redis after the operation."""

    state: str
    gen: int
    remaining: float  # seconds left open
    reopens: int
    lease: int  # a granted probe lease, or 0
    wait: float  # seconds until the oldest lease expires (a denied probe)
    consecutive: int
    calls: int
    failures: int
    slow: int
    reason: str  # why the state moved, or ""
    epoch: int  # when the key was created: generations compare within one epoch only
    force_left: float = 0.0  # seconds until a forced state lapses (0: none, or not said)

    @classmethod
    def parse(cls, raw: list[Any]) -> Reply:
        st, gen, left, reopens, lease, wait, consec, calls, fails, slow, why, ep = raw[:12]
        fleft = int(raw[12]) / 1000 if len(raw) > 12 else 0.0
        return cls(
            str(st), int(gen), int(left) / 1000, int(reopens), int(lease), int(wait) / 1000,
            int(consec), int(calls), int(fails), int(slow), str(why), int(ep), fleft,
        )  # fmt: skip


def parse_message(data: str) -> tuple[str, Reply] | None:
    """A published transition: ``name, state, gen, remaining_ms, reopens, reason, epoch`` and,
    from the breaker script, ``force_left_ms``."""
    parts = data.split("\t")
    if len(parts) not in (7, 8):
        return None
    name, state, gen, left, reopens, reason, epoch = parts[:7]
    fleft = int(parts[7]) / 1000 if len(parts) == 8 else 0.0
    reply = Reply(
        state, int(gen), int(left) / 1000, int(reopens), 0, 0.0, 0, 0, 0, 0, reason, int(epoch),
        fleft,
    )  # fmt: skip
    return name, reply
