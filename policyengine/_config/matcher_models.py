"""Exception matchers as policy data, and what every policy model shares.

A matcher is an import path (``"pkg.mod.Name"``, ``"pkg.mod:Name"``, a bare builtin) or a table
``{ type = "...", status = ["4xx", 503], except_status = [429] }``; both are resolved (imported)
while the file is validated, so a typo is a validation error on its key and line.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from .matchers import Matcher, parse_status, resolve_exception_type

__all__ = ["ExceptionMatcher", "FieldError", "FrozenModel", "MatcherSpec", "resolve_matchers"]


class FieldError(ValueError):
    """A cross-field error that belongs to one key of the table (`key`), for precise reports."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class FrozenModel(BaseModel):
    """Frozen, and unknown keys are errors: the base of every model of the format."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _status_range(spec: int | str) -> int | str:
    parse_status(spec)
    return spec


StatusSpec = Annotated[
    int | str,
    AfterValidator(_status_range),
    Field(description='An HTTP status code (503) or class ("5xx").'),
]


class ExceptionMatcher(FrozenModel):
    """An exception type, optionally narrowed by the HTTP status it carries."""

    type: str = Field(description='Import path: "pkg.mod.Name", "pkg.mod:Name" or a builtin.')
    status: list[StatusSpec] | None = Field(
        default=None, description='Match only these statuses (codes or classes such as "4xx").'
    )
    except_status: list[StatusSpec] = Field(
        default_factory=list, description="Never match these statuses (wins over `status`)."
    )
    _compiled: Matcher = PrivateAttr()

    @field_validator("type")
    @classmethod
    def _importable(cls, value: str) -> str:
        resolve_exception_type(value)
        return value

    @model_validator(mode="after")
    def _compile(self) -> ExceptionMatcher:
        cls = resolve_exception_type(self.type)
        status = tuple(parse_status(s) for s in self.status) if self.status is not None else None
        excluded = tuple(parse_status(s) for s in self.except_status)
        self._compiled = Matcher(cls, status, excluded)
        return self

    @property
    def matcher(self) -> Matcher:
        return self._compiled


def _exception_path(value: str) -> str:
    resolve_exception_type(value)
    return value


def _matcher_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "path"
    if isinstance(value, dict | ExceptionMatcher):
        return "table"
    return None


MatcherSpec = Annotated[
    Annotated[
        str,
        AfterValidator(_exception_path),
        Field(description='An exception type: "pkg.mod.Name", "pkg.mod:Name" or a builtin.'),
        Tag("path"),
    ]
    | Annotated[ExceptionMatcher, Tag("table")],
    Discriminator(
        _matcher_kind,
        custom_error_type="matcher_type",
        custom_error_message=(
            'an exception matcher is an import path ("pkg.mod.Name") '
            'or a table such as { type = "pkg.mod.Name", status = ["5xx"] }'
        ),
    ),
]


def resolve_matchers(specs: list[str | ExceptionMatcher]) -> list[Matcher]:
    """Compiled matchers for a validated list (strings were checked importable at load)."""
    return [
        s.matcher if isinstance(s, ExceptionMatcher) else Matcher(resolve_exception_type(s))
        for s in specs
    ]
