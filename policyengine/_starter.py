"""The commented starter file that `policyengine init` writes (it validates as written)."""

from __future__ import annotations

__all__ = ["starter"]

_BODY = """\
# Resilience policies: one named policy per dependency you call.
# Check this file with `policyengine validate {path}`;
# see what a policy does with `policyengine explain {path} NAME`.
schema_version = 1

# Every policy without `extends` inherits this template.
[templates.default]
timeout = {{ total = "10s", attempt = "2s" }}   # the whole call / each attempt

[templates.default.retry]
max_attempts = 3                 # total attempts, the first included (1 = no retry)
backoff = "exponential"          # "constant" | "linear" | "exponential"
initial_delay = "100ms"
max_delay = "2s"                 # required for "exponential"
jitter = "full"                  # "none" | "full" | "equal" | "decorrelated"
retry_on = ["ConnectionError", "TimeoutError"]   # default: any Exception

# A dependency: rename it, then `guard("example")` in your code.
[policies.example]
extends = "default"              # a template or another policy; fields merge one by one
mode = "enforce"                 # "enforce" | "observe" (count, never act) | "disabled"

[policies.example.breaker]
consecutive_failures = 5         # open after 5 failures in a row ...
open_duration = "30s"            # ... for 30s, then let one probe through

[policies.example.bulkhead]
max_concurrent = 10              # calls running at once
max_queue = 20                   # callers that may wait for a slot ...
max_wait = "100ms"               # ... this long

# [policies.example.fallback]
# value = {{ status = "unavailable" }}   # returned instead of raising
# on = ["circuit_open", "bulkhead_full", "timeout", "retries_exhausted"]
"""


def starter(path: str, schema: str | None) -> str:
    """The starter text for a file at `path`; `schema` is the relative path of the JSON Schema
    for the ``#:schema`` line that editors read (None to leave it out)."""
    head = f"#:schema {schema}\n" if schema else ""
    return head + _BODY.format(path=path)
