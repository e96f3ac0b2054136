"""Scalar checks (scikit-learn style): one place, one message format.

Every option that must be, say, an integer of at least 1 is checked by
:func:`check_scalar` (or its shorthand :func:`check_positive_int`), so the
user always reads the same kind of one-line message naming the parameter,
what was expected and what was given::

    batch_size must be an integer >= 1, got 0

numpy scalars count as Python numbers (``np.int64(3)`` is an integer); a
``bool`` is never a number here, although Python treats it as an ``int``.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

from twinsight.errors import TwinsightError

Boundaries = Literal["both", "left", "right", "neither"]
_BOUNDARIES = ("both", "left", "right", "neither")

#: Plain Python types accepted as ``target_type`` and the abstract types they stand for.
_ABSTRACT: dict[type, type] = {int: numbers.Integral, float: numbers.Real}
_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    numbers.Integral: "an integer",
    numbers.Real: "a number",
}


def check_scalar(
    value: Any,
    name: str,
    target_type: type | tuple[type, ...],
    *,
    min_val: float | None = None,
    max_val: float | None = None,
    include_boundaries: Boundaries = "both",
) -> Any:
    """Check that ``value`` is a scalar of ``target_type`` within the bounds; return it.

    ``target_type`` ``int`` accepts any integral number (numpy integers too) and
    returns a Python ``int``; ``float`` accepts any real number (integers too)
    and returns a Python ``float``; other types are checked with ``isinstance``
    and returned unchanged. ``include_boundaries`` says which of ``min_val`` /
    ``max_val`` are allowed values (``"both"`` by default). Raises
    :class:`~twinsight.errors.TwinsightError` naming ``name``, the expectation
    and the value given.
    """
    if include_boundaries not in _BOUNDARIES:
        raise TwinsightError(
            f"include_boundaries must be one of {_BOUNDARIES}, got {include_boundaries!r}"
        )
    types = target_type if isinstance(target_type, tuple) else (target_type,)
    expected = _expected(types, min_val, max_val, include_boundaries)
    if not _is_instance(value, types):
        raise TwinsightError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    left = include_boundaries in ("both", "left")
    right = include_boundaries in ("both", "right")
    too_low = min_val is not None and not (value >= min_val if left else value > min_val)
    too_high = max_val is not None and not (value <= max_val if right else value < max_val)
    if too_low or too_high:
        raise TwinsightError(f"{name} must be {expected}, got {value!r}")
    return _converted(value, types)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as a Python ``int`` when it is an integer >= 1 (numpy integers too)."""
    return check_scalar(value, name, int, min_val=1)


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, tuple(_ABSTRACT.get(t, t) for t in types))


def _converted(value: Any, types: tuple[type, ...]) -> Any:
    if int in types and isinstance(value, numbers.Integral):
        return int(value)
    if float in types and isinstance(value, numbers.Real):
        return float(value)
    return value


def _expected(types: tuple[type, ...], min_val: Any, max_val: Any, include_boundaries: str) -> str:
    """The expectation in words: 'an integer >= 1', 'a number in (0, 1]', ..."""
    kind = " or ".join(_NAMES.get(t, f"of type {t.__name__}") for t in types)
    left = include_boundaries in ("both", "left")
    right = include_boundaries in ("both", "right")
    if min_val is not None and max_val is not None:
        return f"{kind} in {'[' if left else '('}{min_val}, {max_val}{']' if right else ')'}"
    if min_val is not None:
        return f"{kind} {'>=' if left else '>'} {min_val}"
    if max_val is not None:
        return f"{kind} {'<=' if right else '<'} {max_val}"
    return kind
