"""Guard every request of an aiohttp client with a named policy (``pip install
"resilience-policyengine[aiohttp]"``; aiohttp 3.12 or later, for client middlewares)::

    from policyengine.aiohttp import GuardedMiddleware

    session = aiohttp.ClientSession(middlewares=[GuardedMiddleware("payments")])
    session = aiohttp.ClientSession(middlewares=[GuardedMiddleware({"api.example.com": "payments",
                                                                     "*": "default-http"})])

The twin of `policyengine.httpx.GuardedTransport`, with the same rules:

- `guard` is a policy name (looked up in `engine`, else the default engine), a `GuardHandle`, a
  mapping from host (``"host"`` or ``"host:port"``; ``"*"`` for any other) to either, or a
  callable ``request -> name | handle | None``. A request with no guard goes straight through.
- Each attempt sends the request on (the next middleware, then the connection). A response whose
  status the policy's `retry_on` status matchers retry (``{ type =
  "aiohttp.ClientResponseError", status = ["5xx"] }``), or else 429, 502, 503 and 504 (or
  `retry_statuses`), is read in full (which frees the connection) and raised *inside the
  attempt* as `RetryableStatusError`, an `aiohttp.ClientResponseError` with ``.status`` and
  ``.response``: the breaker counts it, the retry policy classifies it by type and status, and
  its ``Retry-After`` (seconds or an HTTP date) sets the wait with ``respect_retry_after``.
- When the guard gives up on such a status, the middleware **returns the last response** (its
  body already read, so ``await response.json()`` works and ``raise_for_status()`` raises as
  usual). Connection errors (``aiohttp.ClientConnectionError``...) are re-raised as they are;
  the guard's own errors (`CircuitOpenError`, `BulkheadFullError`, `GuardTimeoutError`)
  propagate (`policyengine.asgi.GuardErrorMiddleware` answers them with 503 / 504).
- Only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; or `retry_methods`) and
  requests with an ``Idempotency-Key`` header are retried or hedged, and only when their body can
  be sent again (none, bytes, text, JSON or a URL-encoded form; not a stream or a multipart
  upload). Any other request makes one attempt under the breaker, the bulkhead and the timeouts.
- A fallback must give an `aiohttp.ClientResponse` (a handler that returns one); a policy whose
  fallback cannot (a ``fallback.value``, or a handler annotated to return something else) is
  refused when the middleware is created (`UnusableFallbackError`), and reported (an ERROR line
  and a ``fallback_unusable`` event) at the first request after a reload puts one in force.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeAlias

import aiohttp
from aiohttp import payload

from ._config.matchers import Matcher
from ._config.models import resolve_matchers
from ._patterns.http_fallback import UnusableFallbackError, bound, fallback_problem, report_unusable
from ._registry.handle import GuardHandle

if TYPE_CHECKING:
    from ._registry.engine import Engine
    from ._runtime.guard import Guard

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "GuardedMiddleware",
    "RetryableStatusError",
    "UnusableFallbackError",
]

DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

GuardRef: TypeAlias = str | GuardHandle
GuardSpec: TypeAlias = (
    GuardRef | Mapping[str, GuardRef] | Callable[[aiohttp.ClientRequest], GuardRef | None]
)
Handler: TypeAlias = aiohttp.ClientHandlerType
_RESENDABLE = (payload.BytesPayload,)  # bytes, str, JSON and URL-encoded forms


class RetryableStatusError(aiohttp.ClientResponseError):
    """A response with a retryable status, raised inside an attempt (``.status`` for status
    matchers, ``.response.headers`` for Retry-After, ``.response`` to return it at the end)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        super().__init__(
            response.request_info,
            response.history,
            status=response.status,
            message=f"{response.reason} (a status the policy retries)",
            headers=response.headers,
        )
        self.response = response


def _probe(code: int) -> RetryableStatusError:
    """An error with status `code`, for the policy's matchers (no request behind it)."""
    error = RetryableStatusError.__new__(RetryableStatusError)
    aiohttp.ClientResponseError.__init__(error, None, (), status=code)  # type: ignore[arg-type]
    return error


class _StatusRule:
    """Which statuses one guard version turns into `RetryableStatusError` (decided per code)."""

    __slots__ = ("_known", "_matchers", "_should_retry", "guard")

    def __init__(self, guard: Guard, explicit: frozenset[int] | None) -> None:
        self.guard = guard
        self._known: dict[int, bool] = {}
        self._matchers: list[Matcher] = []
        self._should_retry: Callable[[BaseException], bool] | None = None
        options = guard.policy.retry
        if explicit is not None:
            self._known = dict.fromkeys(explicit, True)
        elif options is not None and options.retry_on is not None and guard.retry is not None:
            self._matchers = [
                m
                for m in resolve_matchers(list(options.retry_on))
                if (m.status is not None or m.except_status)
                and issubclass(RetryableStatusError, m.type)
            ]
            self._should_retry = guard.retry.should_retry
        if explicit is None and not self._matchers:
            self._known = dict.fromkeys(DEFAULT_RETRY_STATUSES, True)

    def __call__(self, code: int) -> bool:
        known = self._known.get(code)
        if known is not None:
            return known
        if not self._matchers or code < 400:
            return False
        probe = _probe(code)
        should = self._should_retry
        ok = any(m(probe) for m in self._matchers) and (should is None or should(probe))
        self._known[code] = ok
        return ok


class GuardedMiddleware:
    """An aiohttp client middleware sending each request through a guard (see the module)."""

    def __init__(
        self,
        guard: GuardSpec,
        *,
        engine: Engine | None = None,
        retry_methods: Iterable[str] | None = None,
        retry_statuses: Iterable[int] | None = None,
    ) -> None:
        self._engine = engine
        self._methods = (
            IDEMPOTENT_METHODS
            if retry_methods is None
            else frozenset(m.upper() for m in retry_methods)
        )
        self._explicit = None if retry_statuses is None else frozenset(retry_statuses)
        self._rules: dict[GuardHandle, _StatusRule] = {}
        self._unusable: dict[GuardHandle, str] = {}
        self._static: list[GuardHandle] = []
        self._resolve = self._resolver(guard)
        self._checked = set(bound(self._static))
        for handle in self._checked:  # refuse at creation: a configuration error, said at once
            problem = self._problem(handle.current())
            if problem is not None:
                raise UnusableFallbackError(problem)
            self._rule(handle)

    # ------------------------------------------------------------ choosing the guard
    def _handle(self, ref: GuardRef) -> GuardHandle:
        if isinstance(ref, GuardHandle):
            return ref
        if self._engine is not None:
            return self._engine.guard(ref)
        from ._registry.default import guard

        return guard(ref)

    def _resolver(self, spec: GuardSpec) -> Callable[[aiohttp.ClientRequest], GuardHandle | None]:
        if isinstance(spec, str | GuardHandle):
            handle = self._handle(spec)
            self._static = [handle]
            return lambda _request: handle
        if isinstance(spec, Mapping):
            hosts = {key.lower(): self._handle(ref) for key, ref in spec.items()}
            self._static = list(hosts.values())
            any_host = hosts.get("*")

            def by_host(request: aiohttp.ClientRequest) -> GuardHandle | None:
                url = request.url
                host = (url.host or "").lower()
                if url.explicit_port is not None:
                    found = hosts.get(f"{host}:{url.explicit_port}")
                    if found is not None:
                        return found
                return hosts.get(host, any_host)

            return by_host
        if callable(spec):
            choose = spec

            def by_callable(request: aiohttp.ClientRequest) -> GuardHandle | None:
                ref = choose(request)
                return None if ref is None else self._handle(ref)

            return by_callable
        raise TypeError(f"guard must be a name, a GuardHandle, a mapping or a callable: {spec!r}")

    @staticmethod
    def _problem(guard: Guard) -> str | None:
        return fallback_problem(guard, aiohttp.ClientResponse, "an aiohttp client middleware")

    def _rule(self, handle: GuardHandle) -> _StatusRule:
        guard = handle.current()
        rule = self._rules.get(handle)
        if rule is None or rule.guard is not guard:
            first = rule is None
            rule = self._rules[handle] = _StatusRule(guard, self._explicit)
            problem = self._problem(guard)
            if problem is None:
                self._unusable.pop(handle, None)
            else:
                self._unusable[handle] = problem
                if not (first and handle in self._checked):  # else the constructor raises
                    report_unusable(handle, problem, "aiohttp client middleware")
        return rule

    def _single_attempt(self, request: aiohttp.ClientRequest, guard: Guard) -> bool:
        """True when the request must not be retried or hedged (and the policy would)."""
        if (guard.max_attempts <= 1 and guard.hedge is None) or guard.mode != "enforce":
            return False
        if request.method.upper() not in self._methods and "Idempotency-Key" not in request.headers:
            return True
        body = request.body
        return not (body is None or body == b"" or isinstance(body, _RESENDABLE))

    # ------------------------------------------------------------------ a request
    @staticmethod
    async def _attempt(
        request: aiohttp.ClientRequest, handler: Handler, rule: _StatusRule
    ) -> aiohttp.ClientResponse:
        response = await handler(request)
        if response.status >= 400 and rule(response.status):
            try:
                await response.read()  # buffer the body: frees the connection, stays readable
            finally:
                response.release()
            raise RetryableStatusError(response)
        return response

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: Handler
    ) -> aiohttp.ClientResponse:
        handle = self._resolve(request)
        if handle is None:
            return await handler(request)
        rule = self._rule(handle)
        try:
            if self._single_attempt(request, rule.guard):
                async with handle:
                    return await self._attempt(request, handler, rule)
            result = await handle.call(self._attempt, request, handler, rule)
        except RetryableStatusError as exc:
            return exc.response
        if isinstance(result, aiohttp.ClientResponse):
            return result
        raise UnusableFallbackError(
            self._unusable.get(handle)
            or f"guard {handle.name!r} gave a fallback {type(result).__name__} where the "
            "aiohttp middleware needs an aiohttp.ClientResponse: use a fallback handler that "
            "returns one, or no fallback"
        )
