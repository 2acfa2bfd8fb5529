"""Guard every request of an httpx client with a named policy (``pip install
"resilience-policyengine[httpx]"``)::

    from policyengine.httpx import GuardedTransport, GuardedSyncTransport

    client = httpx.AsyncClient(transport=GuardedTransport("payments"))
    client = httpx.Client(transport=GuardedSyncTransport({"api.example.com": "payments",
                                                          "*": "default-http"}))

`guard` is a policy name (looked up in `engine`, else the default engine), a `GuardHandle`, a
mapping from host (``"host"`` or ``"host:port"``; ``"*"`` for any other) to either, or a
callable ``request -> name | handle | None``. A request with no guard goes straight through.

What a request goes through:

- Each attempt sends the request to the wrapped transport. A response whose status is one the
  policy's `retry_on` status matchers retry (``{ type = "httpx.HTTPStatusError", status =
  ["5xx"] }``), or else 429, 502, 503 and 504 (or `retry_statuses`), is read in full (which
  frees the connection) and raised *inside the attempt* as `RetryableStatusError`, a subclass of
  `httpx.HTTPStatusError` with ``.response``: the breaker counts it as a failure, the retry
  policy classifies it by type and status, and ``Retry-After`` (seconds or an HTTP date) sets
  the wait when the policy has ``respect_retry_after = true``.
- When the guard gives up on such a status (attempts, deadline or budget exhausted, or the
  status is not retried), the transport **returns the last response**, as httpx would without
  the guard: the client sees a 503, with its body, and `raise_for_status()` works as usual.
  Transport errors (``httpx.ConnectError``...) are re-raised as they are. The guard's own
  errors (`CircuitOpenError`, `BulkheadFullError`, `GuardTimeoutError`) propagate as they are.
- Only idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; or `retry_methods`) and
  requests with an ``Idempotency-Key`` header are retried or hedged, and only when their body
  can be sent again (not a generator or a multipart upload). Any other request makes a single
  attempt under the breaker, the bulkhead and the timeouts (as ``async with guard:``) without
  retry, hedging or fallback.
- A fallback must give an `httpx.Response` (a handler that builds one), since a transport can
  only return a response. A transport **refuses** a policy whose fallback cannot: a
  ``fallback.value``, or a handler annotated to return something else (``-> dict``). At
  creation that is an `UnusableFallbackError` (for every guard a name, handle or host mapping
  names; a callable `guard` is checked at each guard's first request). A reload cannot be
  vetoed by one client, so a reload to such a policy is reported instead, at the first request
  under it: one ERROR log line and a ``fallback_unusable`` event (data ``problem``); requests
  keep flowing, and if that fallback is then used, the request fails with
  `UnusableFallbackError` naming the policy and the fix (a plain `TypeError` before).
- A policy with `[partition]` is keyed by the request URL's authority (``host``, or
  ``host:port`` when the URL names a port; never the user info): every host gets its own
  breaker, so one sick host does not open the circuit for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeAlias

import httpx

from ._config.matchers import Matcher
from ._config.models import resolve_matchers
from ._keys.keyed_handle import KeyedHandle, partition_of
from ._patterns.http_fallback import UnusableFallbackError, bound, report_unusable
from ._patterns.http_fallback import fallback_problem as _fallback_problem
from ._registry.handle import GuardHandle

if TYPE_CHECKING:
    from ._registry.engine import Engine
    from ._runtime.guard import Guard

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "GuardedSyncTransport",
    "GuardedTransport",
    "RetryableStatusError",
    "UnusableFallbackError",
    "fallback_problem",
]

DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

GuardRef: TypeAlias = str | GuardHandle
GuardSpec: TypeAlias = (
    GuardRef | Mapping[str, GuardRef] | Callable[[httpx.Request], GuardRef | None]
)


class RetryableStatusError(httpx.HTTPStatusError):
    """A response with a retryable status, raised inside an attempt so that the policy can
    classify it (``status_of`` reads ``.response.status_code``; Retry-After its headers)."""

    def __init__(self, request: httpx.Request, response: httpx.Response) -> None:
        code = response.status_code
        phrase = httpx.codes.get_reason_phrase(code)
        super().__init__(
            f"{code} {phrase} for url '{request.url}' (a status the policy retries)",
            request=request,
            response=response,
        )


def fallback_problem(guard: Guard) -> str | None:
    """Why `guard`'s fallback cannot give this transport its `httpx.Response`, or None."""
    return _fallback_problem(guard, httpx.Response, "an httpx transport")


def _replayable(response: httpx.Response, raw: bytes, request: httpx.Request) -> httpx.Response:
    """A fresh, unread response with the same status, headers and (still encoded) body, so the
    client reads, decodes, times and closes it as it would the original."""
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(raw),
        extensions=response.extensions,
        request=request,
    )


class _StatusRule:
    """Which statuses one guard version turns into `RetryableStatusError` (decided per code,
    once)."""

    __slots__ = ("_known", "_matchers", "_should_retry", "guard")

    def __init__(self, guard: Guard, explicit: frozenset[int] | None) -> None:
        self.guard = guard
        self._known: dict[int, bool] = {}
        self._matchers: list[Matcher] = []
        self._should_retry: Callable[[BaseException], bool] | None = None
        options = guard.policy.retry
        if explicit is not None:
            self._known = {code: True for code in explicit}
        elif options is not None and options.retry_on is not None and guard.retry is not None:
            self._matchers = [
                m
                for m in resolve_matchers(list(options.retry_on))
                if (m.status is not None or m.except_status)
                and issubclass(RetryableStatusError, m.type)
            ]
            self._should_retry = guard.retry.should_retry
        if explicit is None and not self._matchers:
            self._known = {code: True for code in DEFAULT_RETRY_STATUSES}
            self._matchers = []

    def __call__(self, request: httpx.Request, code: int) -> bool:
        known = self._known.get(code)
        if known is not None:
            return known
        if not self._matchers or code < 400:
            return False
        probe = RetryableStatusError(request, httpx.Response(code, request=request))
        should = self._should_retry
        ok = any(m(probe) for m in self._matchers) and (should is None or should(probe))
        self._known[code] = ok
        return ok


class _Guarding:
    """What both transports share: choosing the guard, the statuses and whether to retry."""

    def __init__(
        self,
        guard: GuardSpec,
        *,
        engine: Engine | None,
        retry_methods: Iterable[str] | None,
        retry_statuses: Iterable[int] | None,
    ) -> None:
        self._engine = engine
        self._methods = (
            IDEMPOTENT_METHODS
            if retry_methods is None
            else frozenset(m.upper() for m in retry_methods)
        )
        self._explicit = None if retry_statuses is None else frozenset(retry_statuses)
        self._rules: dict[GuardHandle, _StatusRule] = {}
        self._unusable: dict[GuardHandle, str] = {}  # handle -> problem of the guard in force
        self._resolve = self._resolver(guard)
        self._checked = set(bound(self._static))
        for handle in self._checked:  # refuse at creation: a configuration error, said at once
            problem = fallback_problem(handle.current())
            if problem is not None:
                raise UnusableFallbackError(problem)
            self._rule(handle)

    def _handle(self, ref: GuardRef) -> GuardHandle:
        if isinstance(ref, GuardHandle):
            return ref
        if self._engine is not None:
            return self._engine.guard(ref)
        from ._registry.default import guard

        return guard(ref)

    def _resolver(self, spec: GuardSpec) -> Callable[[httpx.Request], GuardHandle | None]:
        self._static: list[GuardHandle] = []  # the handles known before any request
        if isinstance(spec, str | GuardHandle):
            handle = self._handle(spec)
            self._static = [handle]
            return lambda _request: handle
        if isinstance(spec, Mapping):
            hosts = {key.lower(): self._handle(ref) for key, ref in spec.items()}
            self._static = list(hosts.values())
            any_host = hosts.get("*")

            def by_host(request: httpx.Request) -> GuardHandle | None:
                url = request.url
                if url.port is not None:
                    found = hosts.get(f"{url.host}:{url.port}")
                    if found is not None:
                        return found
                return hosts.get(url.host, any_host)

            return by_host
        if callable(spec):
            choose = spec

            def by_callable(request: httpx.Request) -> GuardHandle | None:
                ref = choose(request)
                return None if ref is None else self._handle(ref)

            return by_callable
        raise TypeError(f"guard must be a name, a GuardHandle, a mapping or a callable: {spec!r}")

    def _rule(self, handle: GuardHandle) -> _StatusRule:
        guard = handle.current()
        rule = self._rules.get(handle)
        if rule is None or rule.guard is not guard:
            rule = self._rules[handle] = _StatusRule(guard, self._explicit)
            self._check_fallback(handle, guard, first=rule is None)
        return rule

    @staticmethod
    def _keyed(
        handle: GuardHandle, rule: _StatusRule, request: httpx.Request
    ) -> GuardHandle | KeyedHandle:
        """A partitioned policy's handle on the request's authority (see the module)."""
        if partition_of(rule.guard) is None:
            return handle
        url = request.url
        return handle.key(url.host if url.port is None else f"{url.host}:{url.port}")

    def _check_fallback(self, handle: GuardHandle, guard: Guard, *, first: bool) -> None:
        """A new guard version (a reload, or a guard a callable spec chose): say at once when
        its fallback cannot give a response; never fail the request for it."""
        problem = fallback_problem(guard)
        if problem is None:
            self._unusable.pop(handle, None)
            return
        self._unusable[handle] = problem
        if not (first and handle in self._checked):  # else the constructor raises
            report_unusable(handle, problem, "httpx transport")

    def _single_attempt(self, request: httpx.Request, guard: Guard) -> bool:
        """True when the request must not be retried or hedged (and the policy would)."""
        if (guard.max_attempts <= 1 and guard.hedge is None) or guard.mode != "enforce":
            return False
        if request.method.upper() not in self._methods and "idempotency-key" not in request.headers:
            return True
        return not isinstance(request.stream, httpx.ByteStream)

    def _response(self, result: object, handle: GuardHandle) -> httpx.Response:
        if isinstance(result, httpx.Response):
            return result
        problem = self._unusable.get(handle) or (
            f"guard {handle.name!r} gave a fallback {type(result).__name__} where the transport "
            "needs an httpx.Response: use a fallback handler that returns one, or no fallback"
        )
        raise UnusableFallbackError(problem)


class GuardedTransport(_Guarding, httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` sending each request through a guard (see the module)."""

    def __init__(
        self,
        guard: GuardSpec,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        engine: Engine | None = None,
        retry_methods: Iterable[str] | None = None,
        retry_statuses: Iterable[int] | None = None,
    ) -> None:
        super().__init__(
            guard, engine=engine, retry_methods=retry_methods, retry_statuses=retry_statuses
        )
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def _attempt(self, request: httpx.Request, rule: _StatusRule) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        if response.status_code >= 400 and rule(request, response.status_code):
            if not response.is_closed:  # read the body now: it frees the connection
                try:
                    raw = b"".join([part async for part in response.aiter_raw()])
                finally:
                    await response.aclose()
                response = _replayable(response, raw, request)
            raise RetryableStatusError(request, response)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        handle = self._resolve(request)
        if handle is None:
            return await self._transport.handle_async_request(request)
        rule = self._rule(handle)
        target = self._keyed(handle, rule, request)
        try:
            if self._single_attempt(request, rule.guard):
                async with target:
                    return await self._attempt(request, rule)
            result = await target.call(self._attempt, request, rule)
        except RetryableStatusError as exc:
            return exc.response
        return self._response(result, handle)

    async def aclose(self) -> None:
        await self._transport.aclose()


class GuardedSyncTransport(_Guarding, httpx.BaseTransport):
    """The `httpx.Client` twin of `GuardedTransport` (attempts run in the calling thread)."""

    def __init__(
        self,
        guard: GuardSpec,
        transport: httpx.BaseTransport | None = None,
        *,
        engine: Engine | None = None,
        retry_methods: Iterable[str] | None = None,
        retry_statuses: Iterable[int] | None = None,
    ) -> None:
        super().__init__(
            guard, engine=engine, retry_methods=retry_methods, retry_statuses=retry_statuses
        )
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def _attempt(self, request: httpx.Request, rule: _StatusRule) -> httpx.Response:
        response = self._transport.handle_request(request)
        if response.status_code >= 400 and rule(request, response.status_code):
            if not response.is_closed:  # read the body now: it frees the connection
                try:
                    raw = b"".join(response.iter_raw())
                finally:
                    response.close()
                response = _replayable(response, raw, request)
            raise RetryableStatusError(request, response)
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        handle = self._resolve(request)
        if handle is None:
            return self._transport.handle_request(request)
        rule = self._rule(handle)
        target = self._keyed(handle, rule, request)
        try:
            if self._single_attempt(request, rule.guard):
                with target:
                    return self._attempt(request, rule)
            result = target.call_sync(self._attempt, request, rule)
        except RetryableStatusError as exc:
            return exc.response
        return self._response(result, handle)

    def close(self) -> None:
        self._transport.close()
