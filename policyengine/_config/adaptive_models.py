"""The checks of an adaptive bulkhead's options (`[policies.X.bulkhead] kind = "adaptive"`).

Kept beside `_config.models.BulkheadOptions` rather than in it: the model declares the fields, this
module holds what they mean together. The defaults are Netflix concurrency-limits' (initial limit
20, at most 200) with a floor of 1, filled in after validation and only for `kind = "adaptive"`
(so a fixed bulkhead's `explain` output stays free of them, and an error names the key that was
written, not a default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic_core import PydanticCustomError

from .matcher_models import FieldError

if TYPE_CHECKING:
    from .models import BulkheadOptions

__all__ = [
    "ADAPTIVE_DEFAULTS",
    "ADAPTIVE_KEYS",
    "adaptive_defaults",
    "check_bulkhead",
    "require_limit",
]

ADAPTIVE_DEFAULTS = {"initial_limit": 20, "min_limit": 1, "max_limit": 200}
ADAPTIVE_KEYS = ("algorithm", "initial_limit", "min_limit", "max_limit")


def adaptive_defaults(options: BulkheadOptions) -> None:
    """Fill the unset limits of an adaptive bulkhead with the defaults (the model is frozen:
    this runs inside its validator, before anyone holds it)."""
    if options.kind == "adaptive":
        for key, value in ADAPTIVE_DEFAULTS.items():
            if getattr(options, key) is None:
                object.__setattr__(options, key, value)


def require_limit(value: int | None, kind: object) -> int | None:
    """`max_concurrent` is required unless the bulkhead is adaptive: a "missing" error, as for
    any required key (so a template may leave it to the policies that extend it)."""
    if value is None and kind != "adaptive":
        raise PydanticCustomError("missing", "Field required")
    return value


def check_bulkhead(options: BulkheadOptions) -> None:
    """Raise a FieldError naming the key to fix when the fields do not fit the kind."""
    if options.kind != "adaptive":
        for key in ADAPTIVE_KEYS:
            if key in options.model_fields_set:
                raise FieldError(
                    key, f'{key} is for kind = "adaptive" bulkheads: remove it or set the kind'
                )
        return
    if options.max_concurrent is not None:
        raise FieldError(
            "max_concurrent",
            "an adaptive bulkhead finds its own limit: replace max_concurrent with initial_limit, "
            "min_limit and max_limit",
        )
    if options.algorithm is None:
        raise FieldError(
            "algorithm",
            'kind = "adaptive" needs algorithm = "gradient2", "vegas" or "aimd"',
        )
    adaptive_defaults(options)
    low, start, high = options.min_limit, options.initial_limit, options.max_limit
    assert low is not None and start is not None and high is not None
    given = options.model_fields_set
    if low > high:
        key = "min_limit" if "min_limit" in given else "max_limit"
        raise FieldError(key, f"min_limit ({low}) must not exceed max_limit ({high})")
    if not low <= start <= high:
        if "initial_limit" in given:
            key = "initial_limit"
        else:
            key = "min_limit" if start < low else "max_limit"
        raise FieldError(
            key,
            f"initial_limit ({start}) must lie between min_limit ({low}) and max_limit ({high})",
        )
