"""The numerics of best-match estimates: scales, match weights, weighted quantiles, intervals.

Quantiles are taken in each parameter's *scale* space: ``log`` (base 10) for a
log-scaled parameter (:func:`twinsight.data.targets.is_log_scaled`, the rule
training uses for ``--log10 auto``), ``linear`` otherwise. An interval at
level L is the matches' (weighted) ``(1 - L) / 2`` and ``(1 + L) / 2``
quantiles, optionally widened around the median by a calibrated inflation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twinsight.data.targets import is_log_scaled
from twinsight.errors import TwinsightError
from twinsight.validation import check_scalar

#: Interval levels calibrated and reported in the calibration figure.
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7, 0.8, 0.9, 0.95)
#: The levels every estimate reports (its 68 % and 95 % intervals).
REPORTED_LEVELS = (0.68, 0.95)


def weighted_quantile(
    values: np.ndarray, weights: np.ndarray | None, q: Sequence[float]
) -> np.ndarray:
    """Weighted quantiles of a 1-D sample (midpoint rule; equals numpy's 'hazen' for equal weights).

    Each sorted value sits at cumulative weight ``(W_i - w_i / 2) / W``; the
    quantile is interpolated linearly between those points (clamped at the ends).
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.ndim != 1 or v.shape != w.shape or len(v) == 0:
        raise TwinsightError(
            f"weighted_quantile: need equal-length 1-D values and weights, got {v.shape}, {w.shape}"
        )
    if (w < 0).any() or w.sum() <= 0:
        raise TwinsightError("weighted_quantile: weights must be non-negative with a positive sum")
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(np.asarray(q, dtype=np.float64), cdf, v)


def choose_scale(prior_values: np.ndarray) -> str:
    """``log`` for a log-scaled parameter, else ``linear`` (see :func:`.is_log_scaled`)."""
    return "log" if is_log_scaled(prior_values) else "linear"


def to_scale(values: np.ndarray, scale: str) -> np.ndarray:
    """Values in their scale space: log10 (clipped above 0) for ``log``, unchanged otherwise."""
    v = np.asarray(values, dtype=np.float64)
    return np.log10(np.clip(v, 1e-300, None)) if scale == "log" else v


def from_scale(values: np.ndarray, scale: str) -> np.ndarray:
    """Back from scale space to natural units."""
    v = np.asarray(values, dtype=np.float64)
    return np.power(10.0, v) if scale == "log" else v


def match_weights(
    similarities: np.ndarray, weighting: str = "uniform", temperature: float | None = None
) -> np.ndarray:
    """Weights of matches from their similarities (rows of [Q, N]; invalid = -inf get 0)."""
    s = np.asarray(similarities, dtype=np.float64)
    valid = np.isfinite(s)
    if weighting == "uniform":
        return valid.astype(np.float64)
    if weighting != "softmax":
        raise TwinsightError(f"weighting {weighting!r}: expected 'uniform' or 'softmax'")
    t = 0.05 if temperature is None else float(temperature)
    if not t > 0:
        raise TwinsightError(f"--temperature must be positive, got {temperature}")
    top = np.where(valid, s, -np.inf).max(axis=-1, keepdims=True)
    return np.where(valid, np.exp((np.where(valid, s, top) - top) / t), 0.0)


def interval_quantiles(level: float) -> tuple[float, float]:
    """The lower and upper quantiles of a central interval at ``level``."""
    return 0.5 - level / 2, 0.5 + level / 2


def neighbour_intervals(
    values: np.ndarray,
    weights: np.ndarray,
    levels: Sequence[float] = REPORTED_LEVELS,
    inflation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Medians [Q, P] and intervals lo, hi [L, Q, P] of neighbour values [Q, N, P] (scale space).

    ``inflation`` [L, P] widens each interval around the median (1 = raw quantiles).
    """
    q_n, _, p_n = values.shape
    qs = [0.5] + [q for lev in levels for q in interval_quantiles(lev)]
    out = np.empty((len(qs), q_n, p_n))
    for qi in range(q_n):
        w = weights[qi]
        ok = w > 0
        if not ok.any():
            raise TwinsightError("a query has no matches with positive weight")
        for p in range(p_n):
            out[:, qi, p] = weighted_quantile(values[qi, ok, p], w[ok], qs)
    med = out[0]
    lo, hi = out[1::2], out[2::2]
    if inflation is not None:
        s = np.asarray(inflation, dtype=np.float64)[:, None, :]
        lo, hi = med - s * (med - lo), med + s * (hi - med)
    return med, lo, hi


def inflation_factors(
    matching: dict | None, columns: Sequence[str], levels: Sequence[float]
) -> np.ndarray:
    """Inflation factors [L, P] at ``levels`` from a calibration (``bundle.matching``).

    Interpolated between the calibrated levels (held constant beyond them); 1
    for a parameter that was not calibrated.
    """
    table = (matching or {}).get("inflation") or {}
    cal_levels = [float(x) for x in (matching or {}).get("levels", LEVELS)]
    out = np.ones((len(levels), len(columns)))
    for j, c in enumerate(columns):
        if c in table:
            out[:, j] = np.interp(levels, cal_levels, np.asarray(table[c], dtype=np.float64))
    return out


def with_reported_levels(levels: Sequence[float]) -> list[float]:
    """``levels`` (each in (0, 1)) plus the reported 68 % and 95 % levels, sorted, once each."""
    given = {check_scalar(x, "interval level", float, min_val=0, max_val=1,
                          include_boundaries="neither") for x in levels}  # fmt: skip
    out = sorted(given | set(REPORTED_LEVELS))
    return [lev for i, lev in enumerate(out) if i == 0 or lev - out[i - 1] > 1e-9]


def level_index(levels: Sequence[float], level: float) -> int:
    """The position of ``level`` in ``levels`` (to 1e-9); a TwinsightError naming both if absent."""
    for i, lev in enumerate(levels):
        if abs(float(lev) - level) < 1e-9:
            return i
    raise TwinsightError(
        f"interval level {level} is not among the levels {[float(x) for x in levels]}; "
        f"include {level} in the levels"
    )
