"""The checks of an adaptive bulkhead's options (`[policies.X.bulkhead] kind = "adaptive"`).

Kept beside `_models.BulkheadOptions` rather than in it: the model declares the fields, this
module holds what they mean together. The defaults are Netflix concurrency-limits' (initial limit
20, at most 200) with a floor of 1, filled in before validation only for `kind = "adaptive"`, so
a fixed bulkhead's `explain` output stays free of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._matcher_models import FieldError

if TYPE_CHECKING:
    from ._models import BulkheadOptions

__all__ = ["ADAPTIVE_DEFAULTS", "ADAPTIVE_KEYS", "adaptive_defaults", "check_bulkhead"]

ADAPTIVE_DEFAULTS = {"initial_limit": 20, "min_limit": 1, "max_limit": 200}
ADAPTIVE_KEYS = ("algorithm", "initial_limit", "min_limit", "max_limit")


def adaptive_defaults(data: Any) -> Any:
    """The raw table with the adaptive defaults filled in, when `kind = "adaptive"`."""
    if isinstance(data, dict) and data.get("kind") == "adaptive":
        data = {**ADAPTIVE_DEFAULTS, **data}
    return data


def check_bulkhead(options: BulkheadOptions) -> None:
    """Raise a FieldError naming the key to fix when the fields do not fit the kind."""
    if options.kind != "adaptive":
        if options.max_concurrent is None:
            raise FieldError(
                "max_concurrent",
                "a bulkhead needs max_concurrent (calls running at once), or "
                'kind = "adaptive" with an algorithm to find the limit itself',
            )
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
    low, start, high = options.min_limit, options.initial_limit, options.max_limit
    assert low is not None and start is not None and high is not None
    if low > high:
        raise FieldError("min_limit", f"min_limit ({low}) must not exceed max_limit ({high})")
    if not low <= start <= high:
        key = (
            "initial_limit"
            if "initial_limit" in options.model_fields_set
            else ("min_limit" if start < low else "max_limit")
        )
        raise FieldError(
            key,
            f"initial_limit ({start}) must lie between min_limit ({low}) and max_limit ({high})",
        )
