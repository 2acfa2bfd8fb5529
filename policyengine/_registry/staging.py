"""What a reload prepares aside before the one swap, and the errors a reload reports.

A reload has two halves. The first reads and validates the files and compiles the guards aside
(`Staged`); it touches nothing live, so it can run in any thread, and an engine bound to an
asyncio loop runs it off the loop (see `_registry.onloop`). The second, the commit, runs the
in-place updates the compile queued and swaps the guards in; it is short and, on the loop path, runs
on the loop. A `Staged` remembers the engine's generation when it was compiled: if another reload
committed in between, the commit compiles again against the guards now in force.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._config.loader import PolicySet
from ..exceptions import PolicyIssue, PolicyValidationError, UnknownGuardError
from .compile import CompiledSet

__all__ = ["Staged", "read_failure", "state_issue", "unknown_guard"]

_LISTED = 20  # names an UnknownGuardError lists at most


@dataclass
class Staged:
    """One reload's result, compiled aside: nothing live has changed yet."""

    policy_set: PolicySet
    compiled: CompiledSet
    backend: Any  # the state backend the guards were compiled against (None: memory)
    how: str | None  # None | "retuned" | "new backend" (see `Engine._next_state`)
    generation: int  # the engine's generation the compile saw


def read_failure(path: Path | None, exc: BaseException) -> PolicyValidationError:
    """What reading the policies raised, as the failure a reload reports.

    A reload never raises what a read raised: a `RecursionError` from a file nested too deep, a
    `MemoryError`, a `SystemExit` or `KeyboardInterrupt` raised by a module the file names, all
    become a failed reload (`last_error`, a `reload_failed` event), and the policies in force stay.
    """
    source = str(path) if path is not None else "<policies>"
    message = f"reading the policies raised {type(exc).__name__}: {exc}"
    return PolicyValidationError([PolicyIssue(source, None, "", message)])


def state_issue(policy_set: PolicySet, exc: Exception) -> PolicyIssue:
    """The problem of a `[state]` that validated but whose backend cannot be built (a missing
    redis package, a url redis-py cannot parse), located where `[state]` was written (the set
    remembers the document, so no file is read again)."""
    key = "backend" if isinstance(exc, ImportError) else "url"
    message = str(exc)
    try:
        password = urlsplit(policy_set.state.url).password
    except ValueError:
        password = None
    if password:
        message = message.replace(password, "***")
    message = f"the state backend cannot be set up: {message}"
    doc = policy_set.state_doc
    if doc is not None:
        line = doc.line(("state", key)) or doc.line(("state",))
        return PolicyIssue(doc.source, line, f"state.{key}", message)
    source = policy_set.sources[0] if policy_set.sources else "<string>"
    return PolicyIssue(source, None, f"state.{key}", message)


def unknown_guard(name: str, known: Collection[str]) -> UnknownGuardError:
    """UnknownGuardError whose message lists at most `_LISTED` names, the closest first (a set
    of thousands of policies would otherwise print them all); `.known` keeps every name."""
    error = UnknownGuardError(name, list(known))
    if len(error.known) > _LISTED:
        close = difflib.get_close_matches(name, error.known, n=5, cutoff=0.6)
        shown = close + [n for n in error.known if n not in close][: _LISTED - len(close)]
        more = len(error.known) - len(shown)
        error.args = (
            f"no policy named {name!r}; known policies: {', '.join(shown)} "
            f"and {more} more (engine.names() lists them all)",
        )
    return error
