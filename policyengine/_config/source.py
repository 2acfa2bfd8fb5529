"""Policy sources: where an engine's policies come from, at construction and on every reload.

An engine holds one source and calls its `read()` to load (construction) and to reload (the
watcher, `Engine.reload()`): one route for both, so what a load does a reload does too (strict
validation, test adjustments). `read()` returns a validated `PolicySet` or raises
`PolicyValidationError`; `path` is what a watcher watches (None: nothing to watch or re-read).

- `FileSource(path, strict)`: a file, or a directory of ``*.toml`` (what `load()` uses);
- `TextSource(text, name, strict)`: a TOML string (what `loads()` uses; it never changes);
- `AdjustedSource(inner, adjust)`: another source whose every read is passed through `adjust`
  (what `testing.isolated()` uses: memory state, capped retries, on reloads too);
- `FixedSource(policy_set, path)`: a set validated by the caller (`Engine(policy_set)`), with
  reloads read from `path` if one is given.

`default_path()` is the one place the default file is resolved: `$POLICYENGINE_FILE`, else
``policies/policies.toml`` under the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .loader import PolicySet, load_path, load_text

__all__ = [
    "DEFAULT_FILE",
    "AdjustedSource",
    "FileSource",
    "FixedSource",
    "PolicySource",
    "TextSource",
    "default_path",
]

DEFAULT_FILE = "policies/policies.toml"


def default_path() -> Path:
    """The file the default engine loads: `$POLICYENGINE_FILE`, else policies/policies.toml."""
    return Path(os.environ.get("POLICYENGINE_FILE") or DEFAULT_FILE)


class PolicySource(Protocol):
    """What an engine loads from and reloads from."""

    @property
    def path(self) -> Path | None:
        """The file or directory to watch and re-read; None: a source that never changes."""

    def read(self) -> PolicySet:
        """The validated policies now; PolicyValidationError lists every problem."""


@dataclass(frozen=True)
class FileSource:
    """A policy file, or a directory whose ``*.toml`` files form one set; `strict` and
    `allow_modules` as for `load_path`, on every read."""

    path: Path
    strict: bool = False
    allow_modules: tuple[str, ...] | None = None

    def read(self) -> PolicySet:
        return load_path(self.path, strict=self.strict, allow_modules=self.allow_modules)


@dataclass(frozen=True)
class TextSource:
    """A TOML document given as a string (`loads`)."""

    text: str
    name: str = "<string>"
    strict: bool = False
    allow_modules: tuple[str, ...] | None = None
    path: None = None

    def read(self) -> PolicySet:
        return load_text(self.text, self.name, strict=self.strict, allow_modules=self.allow_modules)


@dataclass(frozen=True)
class FixedSource:
    """A set already validated by the caller; reloads read `reload_from` (if any)."""

    policy_set: PolicySet
    reload_from: FileSource | None = None

    @property
    def path(self) -> Path | None:
        return None if self.reload_from is None else self.reload_from.path

    def read(self) -> PolicySet:
        return self.policy_set if self.reload_from is None else self.reload_from.read()


@dataclass(frozen=True)
class AdjustedSource:
    """`inner`, with `adjust` applied to every set it reads (test adjustments)."""

    inner: PolicySource
    adjust: Callable[[PolicySet], PolicySet]

    @property
    def path(self) -> Path | None:
        return self.inner.path

    def read(self) -> PolicySet:
        return self.adjust(self.inner.read())
