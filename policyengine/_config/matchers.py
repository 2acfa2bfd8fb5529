"""Exception matchers: import paths and HTTP status filters, resolved once at load time.

A matcher is ``"pkg.mod.Name"``, ``"pkg.mod:Name"``, a bare builtin (``"TimeoutError"``), or a
table ``{ type = "...", status = ["4xx", 503], except_status = [429] }`` whose status is read from
the exception's ``response.status_code``, ``status_code`` or ``status`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .imports import import_object

__all__ = ["Matcher", "compile_matchers", "resolve_exception_type", "status_of"]

Predicate = Callable[[BaseException], bool]


def resolve_exception_type(path: str) -> type[BaseException]:
    """Import `path` and check it names an exception class. ValueError with the reason if not."""
    obj = import_object(path)
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ValueError(f"{path.strip()!r} is not an exception class")
    return obj


def parse_status(spec: int | str) -> tuple[int, int]:
    """A status code or class (``503``, ``"5xx"``) as an inclusive range."""
    if isinstance(spec, bool):
        raise ValueError(f"{spec!r} is not an HTTP status")
    if isinstance(spec, int):
        if not 100 <= spec <= 599:
            raise ValueError(f"{spec} is not an HTTP status (100-599)")
        return (spec, spec)
    text = str(spec).strip().lower()
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        base = int(text[0]) * 100
        return (base, base + 99)
    if text.isdigit():
        return parse_status(int(text))
    raise ValueError(f'{spec!r} is not an HTTP status: use a code (503) or a class ("5xx")')


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any."""
    response = getattr(exc, "response", None)
    for holder, attr in ((response, "status_code"), (exc, "status_code"), (exc, "status")):
        if holder is None:
            continue
        value = getattr(holder, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _in(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One compiled matcher: an exception class and optional status filters."""

    type: type[BaseException]
    status: tuple[tuple[int, int], ...] | None = None
    except_status: tuple[tuple[int, int], ...] = ()

    def __call__(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.type):
            return False
        if self.status is None and not self.except_status:
            return True
        code = status_of(exc)
        if code is None:
            return self.status is None
        if self.status is not None and not _in(code, self.status):
            return False
        return not _in(code, self.except_status)


def compile_matchers(matchers: Iterable[Matcher]) -> Predicate:
    """One predicate for a list: a single isinstance check when no matcher filters on status."""
    items = tuple(matchers)
    if not items:
        return lambda exc: False
    if all(m.status is None and not m.except_status for m in items):
        types = tuple(m.type for m in items)
        return lambda exc: isinstance(exc, types)
    return lambda exc: any(m(exc) for m in items)
