"""The validated policy data: Pydantic v2 models for the whole file format.

These are data, not behaviour: `_compile` turns a `Policy` into a runtime `Guard`. Every model is
frozen and forbids unknown keys. Defaults here are the documented defaults of the format.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from ._matchers import Matcher, parse_status, resolve_exception_type
from ._units import Duration, Ratio

__all__ = [
    "BreakerOptions",
    "BudgetOptions",
    "BulkheadOptions",
    "ExceptionMatcher",
    "FallbackOptions",
    "MatcherSpec",
    "OpenBackoff",
    "Policy",
    "PolicyFile",
    "RetryOptions",
    "StateOptions",
    "TimeoutOptions",
    "resolve_matchers",
]

FALLBACK_KINDS = ("circuit_open", "bulkhead_full", "timeout", "retries_exhausted")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


StatusSpec = Annotated[int | str, Field(description='An HTTP status code (503) or class ("5xx").')]


class ExceptionMatcher(_Model):
    """An exception type, optionally narrowed by the HTTP status it carries."""

    type: str = Field(description='Import path: "pkg.mod.Name", "pkg.mod:Name" or a builtin.')
    status: list[StatusSpec] | None = Field(
        default=None, description="Match only these statuses (codes or classes such as \"4xx\")."
    )
    except_status: list[StatusSpec] = Field(
        default_factory=list, description="Never match these statuses (wins over `status`)."
    )
    _compiled: Matcher = PrivateAttr()

    @model_validator(mode="after")
    def _resolve(self) -> ExceptionMatcher:
        cls = resolve_exception_type(self.type)
        status = tuple(parse_status(s) for s in self.status) if self.status is not None else None
        excluded = tuple(parse_status(s) for s in self.except_status)
        self._compiled = Matcher(cls, status, excluded)
        return self

    @property
    def matcher(self) -> Matcher:
        return self._compiled


MatcherSpec = Annotated[
    str,
    Field(description='An exception type: "pkg.mod.Name", "pkg.mod:Name" or a builtin.'),
] | ExceptionMatcher


def resolve_matchers(specs: list[str | ExceptionMatcher]) -> list[Matcher]:
    """Compiled matchers for a validated list (strings were checked importable at load)."""
    return [
        s.matcher if isinstance(s, ExceptionMatcher) else Matcher(resolve_exception_type(s))
        for s in specs
    ]


def _validate_type_strings(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                resolve_exception_type(item)
    return value


class TimeoutOptions(_Model):
    """Deadlines: `total` covers attempts, backoff sleeps and queueing; `attempt` each attempt."""

    total: Duration | None = Field(default=None, description="Deadline of the whole guarded call.")
    attempt: Duration | None = Field(default=None, description="Deadline of each attempt.")

    @model_validator(mode="after")
    def _attempt_within_total(self) -> TimeoutOptions:
        if self.total is not None and self.total <= 0:
            raise ValueError("timeout.total must be greater than 0s")
        if self.attempt is not None and self.attempt <= 0:
            raise ValueError("timeout.attempt must be greater than 0s")
        if self.total is not None and self.attempt is not None and self.attempt > self.total:
            raise ValueError(
                "timeout.attempt must not exceed timeout.total: lower `attempt` or raise `total`"
            )
        return self


class BudgetOptions(_Model):
    """Retries allowed over a sliding 10 s window: ratio x calls + min_per_second x 10."""

    ratio: Ratio = Field(default=0.2, description="Retries as a share of recent calls.")
    min_per_second: float = Field(default=10.0, ge=0, description="Retries always allowed per s.")


class RetryOptions(_Model):
    """Retry with backoff and jitter. `max_attempts` counts the first call."""

    max_attempts: int = Field(default=3, ge=1, description="Total attempts; 1 means no retry.")
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
    respect_retry_after: bool = Field(default=False, description="Honour Retry-After hints.")
    max_retry_after: Duration | None = Field(
        default=None, description="Cap of a Retry-After wait (default: the remaining deadline)."
    )
    budget: BudgetOptions | None = None

    _check_retry_on = field_validator("retry_on", "never_retry", mode="before")(
        _validate_type_strings
    )

    @model_validator(mode="after")
    def _exponential_needs_cap(self) -> RetryOptions:
        if self.backoff == "exponential" and self.max_delay is None and self.max_attempts > 1:
            raise ValueError('backoff = "exponential" needs max_delay (for example "2s")')
        if self.max_delay is not None and self.max_delay < self.initial_delay:
            raise ValueError("max_delay must not be smaller than initial_delay")
        return self


class OpenBackoff(_Model):
    """Each re-open after a failed probe multiplies the open duration, up to `max`."""

    multiplier: float = Field(default=2.0, ge=1.0)
    max: Duration = Field(default=300.0, description="Longest open duration.")


class BreakerOptions(_Model):
    """Circuit breaker: trips on consecutive failures and/or a failure or slow-call rate."""

    consecutive_failures: int | None = Field(
        default=None, ge=1, description="Trip after N failures in a row (default 5 with no rate)."
    )
    window: Literal["count", "time"] = Field(
        default="count", description="Window of the rate rules: last N calls, or a time span."
    )
    window_size: int = Field(default=100, ge=1, description="Calls, for window = \"count\".")
    window_duration: Duration = Field(default=60.0, description='For window = "time".')
    minimum_calls: int = Field(default=20, ge=1, description="No rate judged below this.")
    failure_rate: Ratio | None = Field(default=None, description="Trip at this failure ratio.")
    slow_call_duration: Duration | None = Field(default=None, description="A slower call is slow.")
    slow_call_rate: Ratio | None = Field(default=None, description="Trip at this slow ratio.")
    open_duration: Duration = Field(default=30.0, description="Time open before probing.")
    open_backoff: OpenBackoff | None = None
    half_open_calls: int = Field(default=1, ge=1, description="Probes admitted at once.")
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
    shared: bool = Field(default=False, description="Keep state in the [state] backend.")

    _check_types = field_validator("ignore", "record", mode="before")(_validate_type_strings)

    @model_validator(mode="after")
    def _consistent(self) -> BreakerOptions:
        if self.window == "count" and self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls ({self.minimum_calls}) must not exceed window_size "
                f"({self.window_size}): no rate could ever be judged"
            )
        if (self.slow_call_rate is None) != (self.slow_call_duration is None):
            raise ValueError("slow_call_duration and slow_call_rate go together: set both or neither")
        if self.open_duration <= 0:
            raise ValueError("open_duration must be greater than 0s")
        return self

    @property
    def trip_after(self) -> int | None:
        """The consecutive-failure rule in force (5 when no rate rule is set)."""
        if self.consecutive_failures is not None:
            return self.consecutive_failures
        if self.failure_rate is None and self.slow_call_rate is None:
            return 5
        return None


class BulkheadOptions(_Model):
    """Concurrency limit with a bounded, time-limited queue."""

    kind: Literal["async", "threads"] = Field(
        default="async", description='"threads" runs blocking functions in an own thread pool.'
    )
    max_concurrent: int = Field(ge=1, description="Calls running at once.")
    max_queue: int = Field(default=0, ge=0, description="Callers allowed to wait for a slot.")
    max_wait: Duration | None = Field(
        default=None, description="How long one may wait (default: up to the total deadline)."
    )


class FallbackOptions(_Model):
    """A value or a handler used instead of raising, for the listed failure kinds."""

    value: Any = Field(default=None, description="Returned instead of raising (any TOML value).")
    handler: str | None = Field(
        default=None, description='"module:function", sync or async, called with the error.'
    )
    on: list[Literal["circuit_open", "bulkhead_full", "timeout", "retries_exhausted"]] = Field(
        default_factory=lambda: list(FALLBACK_KINDS)
    )

    @model_validator(mode="after")
    def _value_or_handler(self) -> FallbackOptions:
        if (self.value is None) == (self.handler is None):
            raise ValueError("fallback needs exactly one of `value` or `handler`")
        if self.handler is not None:
            from ._imports import resolve_handler

            resolve_handler(self.handler)
        return self


class Policy(_Model):
    """One named policy (or template). Each missing section means no such layer."""

    extends: str | None = Field(default=None, description="A template or policy to inherit.")
    mode: Literal["enforce", "observe", "disabled"] = "enforce"
    timeout: TimeoutOptions | None = None
    retry: RetryOptions | None = None
    breaker: BreakerOptions | None = None
    bulkhead: BulkheadOptions | None = None
    fallback: FallbackOptions | None = None


class StateOptions(_Model):
    """Where shared breaker state lives."""

    backend: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = Field(default="policyengine", min_length=1)
    on_error: Literal["local", "open", "closed"] = "local"
    timeout: Duration = Field(default=0.05, description="Per store round trip.")


class PolicyFile(_Model):
    """A whole policy file (or the merge of a directory of them)."""

    schema_version: Literal[1] = 1
    state: StateOptions = Field(default_factory=StateOptions)
    templates: dict[str, Policy] = Field(default_factory=dict)
    policies: dict[str, Policy] = Field(default_factory=dict)
