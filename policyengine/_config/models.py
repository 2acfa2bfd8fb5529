"""The validated policy data: Pydantic v2 models for the whole file format.

These are data, not behaviour: `_registry.compile` turns a `Policy` into a runtime `Guard`. Every
model is frozen and forbids unknown keys. Defaults here are the documented defaults of the format.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Strict, ValidationInfo, field_validator, model_validator

from .._rollout.chaos import ChaosOptions
from .._rollout.ramp import RampOptions
from .._rollout.record import RecordOptions
from .adaptive_models import check_bulkhead, require_limit
from .admission_models import RateLimitOptions, ThrottleOptions
from .hedge_models import HedgeOptions
from .imports import resolve_handler
from .matcher_models import (
    ExceptionMatcher,
    FieldError,
    FrozenModel,
    MatcherSpec,
    resolve_matchers,
)
from .partition_models import PartitionOptions, check_partition
from .state_url import URL_PATTERN, check_state_url
from .units import Duration, Ratio, format_duration

__all__ = [
    "FALLBACK_KINDS",
    "BreakerOptions",
    "BudgetOptions",
    "BulkheadOptions",
    "ExceptionMatcher",
    "FallbackOptions",
    "FieldError",
    "HedgeOptions",
    "MatcherSpec",
    "OpenBackoff",
    "PartitionOptions",
    "Policy",
    "PolicyFile",
    "RateLimitOptions",
    "RetryOptions",
    "StateOptions",
    "ThrottleOptions",
    "TimeoutOptions",
    "resolve_matchers",
]

FallbackKind = Literal[
    "circuit_open", "bulkhead_full", "timeout", "retries_exhausted", "rate_limited", "throttled"
]
FALLBACK_KINDS: tuple[FallbackKind, ...] = (
    "circuit_open",
    "bulkhead_full",
    "timeout",
    "retries_exhausted",
    "rate_limited",
    "throttled",
)


class TimeoutOptions(FrozenModel):
    """Deadlines: `total` covers attempts, backoff sleeps and queueing; `attempt` each attempt."""

    total: Duration | None = Field(default=None, description="Deadline of the whole guarded call.")
    attempt: Duration | None = Field(default=None, description="Deadline of each attempt.")

    @model_validator(mode="after")
    def _attempt_within_total(self) -> TimeoutOptions:
        if self.total is not None and self.total <= 0:
            raise FieldError("total", "timeout.total must be greater than 0s")
        if self.attempt is not None and self.attempt <= 0:
            raise FieldError("attempt", "timeout.attempt must be greater than 0s")
        if self.total is not None and self.attempt is not None and self.attempt > self.total:
            raise FieldError(
                "attempt",
                f"timeout.attempt ({format_duration(self.attempt)}) must not exceed timeout.total "
                f"({format_duration(self.total)}): lower `attempt` or raise `total`",
            )
        return self


class BudgetOptions(FrozenModel):
    """Retries allowed over a sliding 10 s window: ratio x calls + min_per_second x 10."""

    ratio: Ratio = Field(default=0.2, description="Retries as a share of recent calls.")
    min_per_second: float = Field(default=10.0, ge=0, description="Retries always allowed per s.")


class RetryOptions(FrozenModel):
    """Retry with backoff and jitter. `max_attempts` counts the first call."""

    max_attempts: int = Field(
        default=3,
        ge=1,
        strict=True,
        description="Total attempts, the first included; 1 = no retry.",
    )
    backoff: Literal["constant", "linear", "exponential"] = "exponential"
    initial_delay: Duration = Field(default=0.1, description="Delay before the first retry.")
    max_delay: Duration | None = Field(
        default=None, description='Cap of every delay; required for "exponential".'
    )
    multiplier: float = Field(default=2.0, ge=1.0, description="Growth factor (exponential).")
    jitter: Literal["none", "full", "equal", "decorrelated"] = "full"
    retry_on: list[MatcherSpec] | None = Field(
        default=None, description="Exception types to retry (default: any Exception)."
    )
    never_retry: list[MatcherSpec] = Field(
        default_factory=list, description="Never retried; wins over retry_on."
    )
    respect_retry_after: bool = Field(
        default=False, strict=True, description="Honour Retry-After hints."
    )
    max_retry_after: Duration | None = Field(
        default=None, description="Cap of a Retry-After wait (default: the remaining deadline)."
    )
    budget: BudgetOptions | None = None

    @model_validator(mode="after")
    def _exponential_needs_cap(self) -> RetryOptions:
        if self.backoff == "exponential" and self.max_delay is None and self.max_attempts > 1:
            raise FieldError(
                "backoff", 'backoff = "exponential" needs max_delay (for example max_delay = "2s")'
            )
        return self

    def delay_warning(self) -> str | None:
        """A `max_delay` below `initial_delay` is allowed (every delay is capped at it, as in
        tenacity and Polly) but is almost always a slip: the loader warns with this message."""
        if self.max_delay is None or self.max_delay >= self.initial_delay:
            return None
        return (
            f"max_delay ({format_duration(self.max_delay)}) is smaller than initial_delay "
            f"({format_duration(self.initial_delay)}): every delay is capped at max_delay, so "
            f"each retry waits at most {format_duration(self.max_delay)}; raise max_delay or "
            "lower initial_delay if that is not what you meant"
        )


class OpenBackoff(FrozenModel):
    """Each re-open after a failed probe multiplies the open duration, up to `max`."""

    multiplier: float = Field(default=2.0, ge=1.0, description="Growth of each re-open.")
    max: Duration = Field(default=300.0, description="Longest open duration.")


class BreakerOptions(FrozenModel):
    """Circuit breaker: trips on consecutive failures and/or a failure or slow-call rate."""

    consecutive_failures: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Trip after N failures in a row (default 5 with no rate).",
    )
    window: Literal["count", "time"] = Field(
        default="count", description="Window of the rate rules: last N calls, or a time span."
    )
    window_size: int = Field(
        default=100,
        ge=1,
        le=100_000,
        strict=True,
        description='Calls, for window = "count" (the window keeps one slot per call).',
    )
    window_duration: Duration = Field(default=60.0, description='For window = "time".')
    minimum_calls: int = Field(
        default=20, ge=1, le=100_000_000, strict=True, description="No rate judged below this."
    )
    failure_rate: Ratio | None = Field(default=None, description="Trip at this failure ratio.")
    slow_call_duration: Duration | None = Field(default=None, description="A slower call is slow.")
    slow_call_rate: Ratio | None = Field(default=None, description="Trip at this slow ratio.")
    open_duration: Duration = Field(default=30.0, description="Time open before probing.")
    open_backoff: OpenBackoff | None = None
    half_open_calls: int = Field(
        default=1, ge=1, strict=True, description="Probes admitted at once."
    )
    half_open_max_wait: Duration | None = Field(
        default=None, description="A probe hanging this long re-opens the breaker."
    )
    ignore: list[MatcherSpec] = Field(
        default_factory=list, description="Neither success nor failure; wins over record."
    )
    record: list[MatcherSpec] | None = Field(
        default=None, description="Only these count as failures (others as successes)."
    )
    force: Literal["open", "closed"] | None = Field(
        default=None, description="Operator override, sticky until removed."
    )
    shared: Annotated[bool, Strict()] | Literal["quorum"] = Field(
        default=False,
        description='Keep state in [state]: true (one fleet breaker) or "quorum" (see quorum).',
    )
    quorum: Annotated[int, Strict()] | Annotated[float, Strict()] | None = Field(
        default=None,
        description='shared = "quorum": open everywhere once this many live processes (3) or '
        "this share of them (0.5, the default) have opened their own breaker.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> BreakerOptions:
        if self.window == "count" and self.minimum_calls > self.window_size:
            raise FieldError(
                "minimum_calls",
                f"minimum_calls ({self.minimum_calls}) must not exceed window_size "
                f"({self.window_size}): no rate could ever be judged",
            )
        if (self.slow_call_rate is None) != (self.slow_call_duration is None):
            given, other = (
                ("slow_call_rate", "slow_call_duration")
                if self.slow_call_duration is None
                else ("slow_call_duration", "slow_call_rate")
            )
            raise FieldError(given, f"{given} needs {other}: set both or neither")
        for key in ("open_duration", "window_duration", "half_open_max_wait", "slow_call_duration"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise FieldError(key, f"{key} must be greater than 0s")
        if self.quorum is not None and self.shared != "quorum":
            raise FieldError("quorum", 'quorum needs shared = "quorum"')
        q = self.quorum
        if (isinstance(q, int) and q < 1) or (isinstance(q, float) and not 0 < q <= 1):
            raise FieldError("quorum", "quorum: a count of processes (>= 1) or a share (0..1]")
        if self.open_backoff is not None and self.open_backoff.max < self.open_duration:
            raise FieldError(
                "open_backoff",
                f"open_backoff.max ({format_duration(self.open_backoff.max)}) must not be "
                f"smaller than open_duration ({format_duration(self.open_duration)})",
            )
        return self

    @property
    def trip_after(self) -> int | None:
        """The consecutive-failure rule in force (5 when no rate rule is set)."""
        if self.consecutive_failures is not None:
            return self.consecutive_failures
        if self.failure_rate is None and self.slow_call_rate is None:
            return 5
        return None


class BulkheadOptions(FrozenModel):
    """Concurrency limit with a bounded, time-limited queue; `kind = "adaptive"` finds the limit
    from latency (see `_patterns.adaptive`)."""

    kind: Literal["async", "threads", "adaptive"] = Field(
        default="async",
        description='"threads" runs blocking functions in an own thread pool; "adaptive" lets '
        "the limit follow latency.",
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        validate_default=True,
        description="Calls running at once (required unless adaptive).",
    )
    max_queue: int = Field(
        default=0, ge=0, strict=True, description="Callers allowed to wait for a slot."
    )
    max_wait: Duration | None = Field(
        default=None, description="How long one may wait (default: up to the total deadline)."
    )
    algorithm: Literal["gradient2", "vegas", "aimd"] | None = Field(
        default=None, description='How an adaptive limit follows latency (kind = "adaptive").'
    )
    initial_limit: int | None = Field(
        default=None, ge=1, strict=True, description="Adaptive: the limit to start from (20)."
    )
    min_limit: int | None = Field(
        default=None, ge=1, strict=True, description="Adaptive: the lowest limit (1)."
    )
    max_limit: int | None = Field(
        default=None, ge=1, strict=True, description="Adaptive: the highest limit (200)."
    )

    @field_validator("max_concurrent")
    @classmethod
    def _required_unless_adaptive(cls, value: int | None, info: ValidationInfo) -> int | None:
        return require_limit(value, info.data.get("kind"))

    @model_validator(mode="after")
    def _consistent(self) -> BulkheadOptions:
        check_bulkhead(self)
        return self

    @property
    def limit(self) -> int:
        """The limit a new bulkhead starts with: max_concurrent, or initial_limit (adaptive)."""
        value = self.initial_limit if self.kind == "adaptive" else self.max_concurrent
        assert value is not None
        return value


class FallbackOptions(FrozenModel):
    """A value or a handler used instead of raising, for the listed failure kinds."""

    value: Any = Field(default=None, description="Returned instead of raising (any TOML value).")
    handler: str | None = Field(
        default=None, description='"module:function", sync or async, called with the error.'
    )
    on: list[FallbackKind] = Field(
        default_factory=lambda: list(FALLBACK_KINDS),
        description="Failure kinds that use the fallback (default: all of them).",
    )

    @field_validator("handler")
    @classmethod
    def _callable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            context = info.context
            allow = context.get("allow_modules") if isinstance(context, dict) else None
            resolve_handler(value, allow)
        return value

    @model_validator(mode="after")
    def _value_or_handler(self) -> FallbackOptions:
        if self.value is not None and self.handler is not None:
            raise FieldError("handler", "fallback takes `value` or `handler`, not both")
        if self.value is None and self.handler is None:
            raise ValueError("fallback needs `value` (any TOML value) or `handler`")
        return self


class Policy(FrozenModel):
    """One named policy (or template). Each missing section means no such layer."""

    extends: str | None = Field(default=None, description="A template or policy to inherit.")
    mode: Literal["enforce", "observe", "disabled"] = Field(
        default="enforce",
        description='"observe" counts and reports but never rejects; "disabled" passes through.',
    )
    timeout: TimeoutOptions | None = None
    retry: RetryOptions | None = None
    breaker: BreakerOptions | None = None
    bulkhead: BulkheadOptions | None = None
    fallback: FallbackOptions | None = None
    rate_limit: RateLimitOptions | None = None
    throttle: ThrottleOptions | None = None
    hedge: HedgeOptions | None = None
    enforce: Ratio | None = Field(default=None, description="Share of calls enforced (_ramp).")
    ramp: RampOptions | None = None
    chaos: ChaosOptions | None = None
    partition: PartitionOptions | None = None

    @model_validator(mode="after")
    def _partition_has_lanes(self) -> Policy:
        kind = None if self.bulkhead is None else self.bulkhead.kind
        check_partition(self.partition, self.breaker is not None, kind)
        return self


class StateOptions(FrozenModel):
    """Where shared breaker state lives."""

    backend: Literal["memory", "redis"] = "memory"
    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis://, rediss://, unix://, redis+cluster://h1:p1,h2:p2, "
        "redis+sentinel://h1:p1,h2:p2/service, valkey://, valkeys:// (backend redis).",
        json_schema_extra={"pattern": URL_PATTERN},  # editors flag the scheme; we check the rest
    )
    prefix: str = Field(default="policyengine", min_length=1, description="Key namespace.")
    on_error: Literal["local", "open", "closed"] = Field(
        default="local", description="What breakers do while the store is unreachable."
    )
    timeout: Duration = Field(default=0.05, description="Per store round trip.")

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        return check_state_url(value)

    @model_validator(mode="after")
    def _positive(self) -> StateOptions:
        if self.timeout <= 0:
            raise FieldError("timeout", "state.timeout must be greater than 0s")
        return self


class PolicyFile(FrozenModel):
    """A whole policy file (or the merge of a directory of them)."""

    schema_version: Literal[1] = Field(default=1, description="Version of the file format.")
    state: StateOptions = Field(default_factory=StateOptions)
    templates: dict[str, Policy] = Field(
        default_factory=dict, description="Reusable partial policies; `default` is implicit."
    )
    policies: dict[str, Policy] = Field(default_factory=dict, description="Named guards.")
    record: RecordOptions | None = None
