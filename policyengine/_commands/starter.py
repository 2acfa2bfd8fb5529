"""The commented starter file that `policyengine init` writes (it validates as written).

Its `retry_on` must name what the client really raises: httpx's errors are not the builtin
`ConnectionError` / `TimeoutError` (``httpx.ConnectError`` derives from ``httpx.TransportError``
only), and `GuardedTransport` raises a retryable status as ``httpx.HTTPStatusError`` only when a
status matcher lists it. So when httpx is installed the starter retries httpx's network errors,
its timeouts and the statuses 429, 502, 503, 504 (tests/test_starter.py sends a real
`httpx.ConnectError` and a 503 through `GuardedTransport`); without httpx it names the builtins
only (an import path of a missing package would not validate).
"""

from __future__ import annotations

import importlib.util

__all__ = ["has_httpx", "starter"]

_PLAIN_RETRY = """\
retry_on = ["ConnectionError", "TimeoutError"]   # default: any Exception
# with httpx, also: "httpx.NetworkError", "httpx.TimeoutException", and
# {{ type = "httpx.HTTPStatusError", status = [429, 502, 503, 504] }}
"""

_HTTPX_RETRY = """\
retry_on = [                     # default: any Exception
  "ConnectionError", "TimeoutError",                 # the standard library's network errors
  "httpx.NetworkError", "httpx.TimeoutException",    # httpx: ConnectError, ReadTimeout, ...
  "httpx.RemoteProtocolError",                       # the server hung up mid-response
  {{ type = "httpx.HTTPStatusError", status = [429, 502, 503, 504] }},   # retryable statuses
]
never_retry = [                  # always wins over retry_on
  {{ type = "httpx.HTTPStatusError", status = ["4xx"], except_status = [408, 429] }},
]
"""

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
{retry}
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


def has_httpx() -> bool:
    """Is httpx importable here (then the starter names its errors)?"""
    try:
        return importlib.util.find_spec("httpx") is not None
    except (ImportError, ValueError):
        return False


def starter(path: str, schema: str | None, *, httpx: bool = False) -> str:
    """The starter text for a file at `path`; `schema` is the relative path of the JSON Schema
    for the ``#:schema`` line that editors read (None to leave it out); `httpx`: retry what
    httpx raises (see the module docstring)."""
    head = f"#:schema {schema}\n" if schema else ""
    retry = (_HTTPX_RETRY if httpx else _PLAIN_RETRY).format()
    return head + _BODY.format(path=path, retry=retry)
