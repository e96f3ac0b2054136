"""Best-match inference: parameter distributions, their calibration, verification scores.

For a query image the index returns its best matches; each match carries the
physical parameters of its simulated system. Per parameter we report the
(weighted) distribution of the matches' values: median, 16-84 % and
2.5-97.5 % intervals, a histogram, the same statistics over the whole indexed
collection (the prior), and the narrowing ratio (68 % width of matches / of
prior). Quantiles are taken in each parameter's *scale* space: ``log`` (base 10)
for a positive parameter spanning two decades or more, ``linear`` otherwise.

Calibration (:func:`calibrate_matching`, run at training time on the
validation systems, never on the evaluation set) picks the number of matches
and, per parameter and interval level, an inflation factor ``s`` that widens
the matches' interval around its median, ``[m - s(m - lo), m + s(hi - m)]``,
so that on the validation systems the true value falls inside the nominal
fraction of the time (a split-conformal correction). The result lives in
``bundle.matching`` and is applied whenever the calibrated defaults are used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from twinsight.errors import TwinsightError
from twinsight.index import SimilarityIndex

log = logging.getLogger(__name__)

#: Interval levels calibrated and reported in the calibration figure.
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7, 0.8, 0.9, 0.95)
#: Candidate numbers of matches tried by :func:`calibrate_matching`.
TOP_CANDIDATES = (10, 20, 30, 50, 75, 100, 150, 200, 300)
DEFAULT_TOP = 50
HIST_BINS = 30


# -- numerics -------------------------------------------------------------------------------------
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


def _skew(v: np.ndarray) -> float:
    sd = v.std()
    return float(np.mean(((v - v.mean()) / sd) ** 3)) if sd > 0 else 0.0


def choose_scale(prior_values: np.ndarray) -> str:
    """``log`` for a positive, log-distributed parameter, else ``linear``.

    Log-distributed: positive, the 5-95 % range spans at least a factor 10, and
    the values are less skewed in log than in linear space.
    """
    v = np.asarray(prior_values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 3 or not (v > 0).all():
        return "linear"
    q5, q95 = np.quantile(v, [0.05, 0.95])
    if q95 < 10 * q5:
        return "linear"
    return "log" if abs(_skew(np.log10(v))) < abs(_skew(v)) else "linear"


def to_scale(values: np.ndarray, scale: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.log10(np.clip(v, 1e-300, None)) if scale == "log" else v


def from_scale(values: np.ndarray, scale: str) -> np.ndarray:
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


def _interval_quantiles(level: float) -> tuple[float, float]:
    return 0.5 - level / 2, 0.5 + level / 2


def neighbour_intervals(
    values: np.ndarray,
    weights: np.ndarray,
    levels: Sequence[float] = (0.68, 0.95),
    inflation: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Medians [Q, P] and intervals lo, hi [L, Q, P] of neighbour values [Q, N, P] (scale space).

    ``inflation`` [L, P] widens each interval around the median (1 = raw quantiles).
    """
    q_n, _, p_n = values.shape
    qs = [0.5] + [q for lev in levels for q in _interval_quantiles(lev)]
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


# -- the estimate ---------------------------------------------------------------------------------
@dataclass
class ParameterStats:
    """One parameter's best-match distribution against its prior (values in natural units)."""

    name: str
    scale: str
    values: np.ndarray
    weights: np.ndarray
    median: float
    interval_68: tuple[float, float]
    interval_95: tuple[float, float]
    prior_median: float
    prior_68: tuple[float, float]
    prior_95: tuple[float, float]
    narrowing: float
    histogram_edges: np.ndarray
    histogram_matches: np.ndarray
    histogram_prior: np.ndarray
    prior_values: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    truth: float | None = None
    unit: str | None = None

    def to_dict(self, with_values: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scale": self.scale,
            "unit": self.unit,
            "median": self.median,
            "interval_68": list(self.interval_68),
            "interval_95": list(self.interval_95),
            "prior": {
                "median": self.prior_median,
                "interval_68": list(self.prior_68),
                "interval_95": list(self.prior_95),
            },
            "narrowing": self.narrowing,
            "truth": self.truth,
        }
        if self.truth is not None:
            out["in_68"] = bool(self.interval_68[0] <= self.truth <= self.interval_68[1])
            out["in_95"] = bool(self.interval_95[0] <= self.truth <= self.interval_95[1])
        if with_values:
            out["values"] = self.values.tolist()
            out["weights"] = self.weights.tolist()
            out["histogram"] = {
                "edges": self.histogram_edges.tolist(),
                "matches": self.histogram_matches.tolist(),
                "prior": self.histogram_prior.tolist(),
            }
        return out


@dataclass
class ParameterEstimate:
    """The best matches of one query and, per parameter, their distribution vs the prior."""

    positions: np.ndarray
    keys: list[str]
    systems: list[str]
    similarities: np.ndarray
    weights: np.ndarray
    parameters: dict[str, ParameterStats]
    weighting: str
    calibrated: bool
    query: str | None = None

    @property
    def n_matches(self) -> int:
        return len(self.positions)

    def to_dict(self, with_values: bool = True) -> dict[str, Any]:
        return {
            "query": self.query,
            "n_matches": self.n_matches,
            "weighting": self.weighting,
            "calibrated": self.calibrated,
            "matches": [
                {"rank": r + 1, "key": k, "system": s, "similarity": float(sim), "weight": float(w)}
                for r, (k, s, sim, w) in enumerate(
                    zip(self.keys, self.systems, self.similarities, self.weights, strict=True)
                )
            ],
            "parameters": {n: p.to_dict(with_values) for n, p in self.parameters.items()},
        }


def _settings(
    matching: dict | None,
    top: int | None,
    threshold: float | None,
    weighting: str | None,
    temperature: float | None,
) -> tuple[int | None, float | None, str, float | None, bool]:
    """Resolve user choices against the calibrated defaults; calibrated only when not overridden."""
    if top is not None and threshold is not None:
        raise TwinsightError("give either --top or --threshold, not both")
    if top is not None and int(top) < 1:
        raise TwinsightError(f"--top must be at least 1, got {top}")
    overridden = (
        top is not None or threshold is not None or weighting is not None or temperature is not None
    )
    m = matching or {}
    if not overridden and m.get("top"):
        return int(m["top"]), None, m.get("weighting", "uniform"), m.get("temperature"), True
    if top is None and threshold is None:
        top = int(m.get("top") or DEFAULT_TOP)
    return top, threshold, weighting or "uniform", temperature, False


def _select(
    index: SimilarityIndex,
    queries: np.ndarray,
    top: int | None,
    threshold: float | None,
    exclude: list[Any],
) -> tuple[np.ndarray, np.ndarray]:
    k = top if top is not None else min(len(index), 10_000)
    sims, pos = index.search_excluding(queries, k, exclude)
    if threshold is not None:
        sims = np.where(sims >= threshold, sims, -np.inf)
        n_ok = np.isfinite(sims).sum(axis=1)
        if (n_ok == 0).any():
            best = float(np.max(np.where(np.isfinite(sims), sims, -np.inf), initial=-np.inf))
            raise TwinsightError(
                f"no match reaches the similarity threshold {threshold} for at least one query "
                f"(best similarity among the searched matches: {best:.3f}); lower --threshold "
                "or use --top N"
            )
    return sims, pos


def estimate_parameters(
    index: SimilarityIndex,
    query_embeddings: np.ndarray,
    *,
    top: int | None = None,
    threshold: float | None = None,
    weighting: str | None = None,
    temperature: float | None = None,
    exclude_systems: Sequence[Any] | Any | None = None,
    columns: Sequence[str] | None = None,
    matching: dict | None = None,
    truths: np.ndarray | None = None,
    query_names: Sequence[str] | None = None,
) -> list[ParameterEstimate]:
    """Parameter estimates for each query embedding (one :class:`ParameterEstimate` per query).

    ``matching`` holds the calibrated defaults (``bundle.matching``): used, with
    their interval inflation, unless ``top``/``threshold``/``weighting``/
    ``temperature`` override them. ``exclude_systems`` is one system id for
    all queries or a list with one id (or None) per query. ``truths`` [Q, P]
    (NaN where unknown) are reported beside the estimates.
    """
    queries = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))
    columns = index.param_columns if columns is None else list(columns)
    if not columns:
        raise TwinsightError(
            "the index holds no parameter columns, so there is nothing to estimate; index a "
            "collection with parameters (e.g. simulated systems)"
        )
    index.check_params(columns)
    n_q = len(queries)
    if exclude_systems is None or isinstance(exclude_systems, (str, int)):
        exclude = [exclude_systems] * n_q
    else:
        exclude = list(exclude_systems)
    top, threshold, weighting, temperature, calibrated = _settings(
        matching, top, threshold, weighting, temperature
    )
    sims, pos = _select(index, queries, top, threshold, exclude)
    weights = match_weights(sims, weighting, temperature)
    prior = index.params(columns)
    scales = _scales(prior, columns, matching)
    inflation = _inflation(matching, columns, (0.68, 0.95)) if calibrated else None
    safe = np.clip(pos, 0, None)
    values = np.stack([to_scale(prior[safe, j], scales[j]) for j in range(len(columns))], axis=-1)
    med, lo, hi = neighbour_intervals(values, weights, (0.68, 0.95), inflation)
    units = index.meta.get("units") or {}
    out = []
    for q in range(n_q):
        ok = weights[q] > 0
        stats = {
            name: _parameter_stats(
                name,
                scales[j],
                values[q, ok, j],
                weights[q, ok],
                (med[q, j], lo[:, q, j], hi[:, q, j]),
                prior[:, j],
                None if truths is None else _finite(np.atleast_2d(truths)[q, j]),
                units.get(name),
            )
            for j, name in enumerate(columns)
        }
        keys = index.items["key"].astype(str).to_numpy()[pos[q, ok]].tolist()
        systems = (
            index.items["system"].astype(str).to_numpy()[pos[q, ok]].tolist()
            if "system" in index.items.columns
            else [""] * int(ok.sum())
        )
        w = weights[q, ok] / weights[q, ok].sum()
        out.append(
            ParameterEstimate(
                pos[q, ok],
                keys,
                systems,
                sims[q, ok],
                w,
                stats,
                weighting,
                calibrated,
                None if query_names is None else str(query_names[q]),
            )
        )
    return out


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _scales(prior: np.ndarray, columns: Sequence[str], matching: dict | None) -> list[str]:
    stored = (matching or {}).get("scales") or {}
    return [stored.get(c) or choose_scale(prior[:, j]) for j, c in enumerate(columns)]


def _inflation(
    matching: dict | None, columns: Sequence[str], levels: Sequence[float]
) -> np.ndarray:
    """Inflation factors [L, P] from ``matching`` (1 where not calibrated)."""
    table = (matching or {}).get("inflation") or {}
    cal_levels = [float(x) for x in (matching or {}).get("levels", LEVELS)]
    out = np.ones((len(levels), len(columns)))
    for j, c in enumerate(columns):
        if c in table:
            out[:, j] = np.interp(levels, cal_levels, np.asarray(table[c], dtype=np.float64))
    return out


def _parameter_stats(
    name: str,
    scale: str,
    values: np.ndarray,
    weights: np.ndarray,
    est: tuple[float, np.ndarray, np.ndarray],
    prior: np.ndarray,
    truth: float | None,
    unit: str | None,
) -> ParameterStats:
    med, lo, hi = est
    prior_s = to_scale(prior, scale)
    pq = weighted_quantile(prior_s, None, [0.5, 0.16, 0.84, 0.025, 0.975])
    width_prior = pq[2] - pq[1]
    narrowing = float((hi[0] - lo[0]) / width_prior) if width_prior > 0 else float("nan")
    span = (float(prior_s.min()), float(prior_s.max()))
    if span[1] <= span[0]:
        span = (span[0] - 0.5, span[1] + 0.5)
    edges = np.linspace(span[0], span[1], HIST_BINS + 1)
    h_m, _ = np.histogram(np.clip(values, *span), bins=edges, weights=weights, density=True)
    h_p, _ = np.histogram(prior_s, bins=edges, density=True)
    back = lambda x: float(from_scale(x, scale))  # noqa: E731
    return ParameterStats(
        name=name,
        scale=scale,
        values=from_scale(values, scale),
        weights=weights / weights.sum(),
        median=back(med),
        interval_68=(back(lo[0]), back(hi[0])),
        interval_95=(back(lo[1]), back(hi[1])),
        prior_median=back(pq[0]),
        prior_68=(back(pq[1]), back(pq[2])),
        prior_95=(back(pq[3]), back(pq[4])),
        narrowing=narrowing,
        histogram_edges=from_scale(edges, scale),
        histogram_matches=h_m,
        histogram_prior=h_p,
        prior_values=prior,
        truth=truth,
        unit=unit,
    )


# -- recovery metrics on items whose truth is known -----------------------------------------------
def recovery_arrays(
    index: SimilarityIndex,
    query_embeddings: np.ndarray,
    exclude_systems: Sequence[Any],
    *,
    top: int,
    columns: Sequence[str],
    weighting: str = "uniform",
    temperature: float | None = None,
    levels: Sequence[float] = LEVELS,
    inflation: np.ndarray | None = None,
    scales: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Medians [Q, P] and intervals [L, Q, P] (scale space) and prior widths for many queries."""
    prior = index.params(columns)
    scales = (
        list(scales)
        if scales is not None
        else [choose_scale(prior[:, j]) for j in range(len(columns))]
    )
    sims, pos = index.search_excluding(query_embeddings, top, list(exclude_systems))
    weights = match_weights(sims, weighting, temperature)
    safe = np.clip(pos, 0, None)
    values = np.stack([to_scale(prior[safe, j], scales[j]) for j in range(len(columns))], axis=-1)
    med, lo, hi = neighbour_intervals(values, weights, levels, inflation)
    prior_s = np.stack([to_scale(prior[:, j], scales[j]) for j in range(len(columns))], axis=-1)
    pq = np.quantile(prior_s, [0.16, 0.84], axis=0)
    return {
        "median": med,
        "lo": lo,
        "hi": hi,
        "prior_width_68": pq[1] - pq[0],
        "scales": np.array(scales),
    }


def coverage(truth: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fraction of rows whose truth lies inside [lo, hi], per column ([Q, P] -> [P])."""
    return ((truth >= lo) & (truth <= hi)).mean(axis=0)


def conformal_inflation(
    truth: np.ndarray, med: np.ndarray, lo: np.ndarray, hi: np.ndarray, level: float
) -> np.ndarray:
    """Per column, the factor s making [m - s(m-lo), m + s(hi-m)] cover ``level`` of the rows."""
    eps = 1e-9
    below = truth < med
    half = np.where(below, med - lo, hi - med)
    r = np.abs(truth - med) / np.maximum(half, eps)
    n = len(r)
    q = min(1.0, level * (n + 1) / n)
    return np.quantile(r, q, axis=0, method="higher")


def calibrate_from_embeddings(
    index: SimilarityIndex,
    val_embeddings: np.ndarray,
    val_items: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    candidates: Sequence[int] = TOP_CANDIDATES,
    levels: Sequence[float] = LEVELS,
    log10: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Choose the number of matches and per-parameter inflation on validation items (truth known).

    Each validation item is matched against the index without its own system.
    For each candidate N the per-parameter inflation factors are fitted; the N
    whose calibrated 68 % intervals are narrowest (mean narrowing) is kept.
    """
    columns = index.param_columns if columns is None else list(columns)
    index.check_params(columns)
    missing = [c for c in columns if c not in val_items.columns]
    if missing:
        raise TwinsightError(f"validation items lack parameter column(s) {missing}")
    if len(val_items) < 10:
        raise TwinsightError(
            f"matching calibration needs at least 10 validation items, got {len(val_items)}"
        )
    prior = index.params(columns)
    if log10 is None:
        scales = [choose_scale(prior[:, j]) for j in range(len(columns))]
    else:
        scales = ["log" if c in log10 else "linear" for c in columns]
    truth = np.stack(
        [
            to_scale(val_items[c].to_numpy(dtype=np.float64), scales[j])
            for j, c in enumerate(columns)
        ],
        axis=-1,
    )
    exclude = (
        val_items["system"].astype(str).tolist()
        if "system" in val_items.columns
        else [None] * len(val_items)
    )
    best: dict[str, Any] | None = None
    i68 = list(levels).index(0.68)
    tried = {}
    for n in sorted({min(int(c), len(index)) for c in candidates}):
        arr = recovery_arrays(
            index, val_embeddings, exclude, top=n, columns=columns, levels=levels, scales=scales
        )
        infl = np.stack(
            [
                conformal_inflation(truth, arr["median"], arr["lo"][i], arr["hi"][i], lev)
                for i, lev in enumerate(levels)
            ]
        )
        med = arr["median"]
        width = (infl[i68] * (arr["hi"][i68] - arr["lo"][i68])).mean(axis=0)
        score = float(np.mean(width / np.maximum(arr["prior_width_68"], 1e-12)))
        raw68 = coverage(truth, arr["lo"][i68], arr["hi"][i68])
        tried[n] = {"narrowing": score, "raw_coverage_68": float(raw68.mean())}
        if best is None or score < best["score"]:
            best = {"score": score, "top": n, "inflation": infl, "raw68": raw68, "med": med}
    assert best is not None
    log.info(
        "matching calibration: %d matches (calibrated narrowing %.3f)", best["top"], best["score"]
    )
    return {
        "top": best["top"],
        "weighting": "uniform",
        "temperature": None,
        "levels": list(levels),
        "scales": dict(zip(columns, scales, strict=True)),
        "inflation": {c: best["inflation"][:, j].tolist() for j, c in enumerate(columns)},
        "validation": {
            "items": int(len(val_items)),
            "pool": int(len(index)),
            "narrowing_68": best["score"],
            "raw_coverage_68": dict(zip(columns, map(float, best["raw68"]), strict=True)),
            "candidates": {str(k): v for k, v in tried.items()},
        },
    }


def calibrate_matching(
    bundle: Any,
    reference: SimilarityIndex | tuple[np.ndarray, pd.DataFrame],
    val_collection: Any,
    *,
    batch_size: int = 256,
    include_validation_in_pool: bool = True,
    store: bool = True,
) -> dict[str, Any]:
    """Calibrate best-match defaults on validation systems; stored in ``bundle.matching``.

    ``reference`` is an index over the training items or their ``(embeddings,
    items)``; by default the validation items join the pool (each is still
    matched without its own system), so the pool resembles a full library.
    """
    from twinsight.embedding import embed_collection

    if not getattr(val_collection, "param_columns", None):
        raise TwinsightError("matching calibration needs a validation collection with parameters")
    val_emb = embed_collection(bundle, val_collection, batch_size=batch_size)
    if isinstance(reference, SimilarityIndex):
        ref_emb, ref_items = reference.vectors(), reference.items
    else:
        ref_emb, ref_items = reference
    columns = list(val_collection.param_columns)
    if include_validation_in_pool:
        ref_emb = np.concatenate([np.asarray(ref_emb, dtype=np.float32), val_emb])
        ref_items = pd.concat([ref_items, val_collection.items], ignore_index=True)
    pool = SimilarityIndex.build(
        ref_emb,
        ref_items,
        model_fingerprint=getattr(bundle, "fingerprint", ""),
        param_columns=columns,
    )
    normalizer = (getattr(bundle, "targets", None) or {}).get("normalizer") or {}
    log10 = normalizer.get("log10") if normalizer else None
    matching = calibrate_from_embeddings(
        pool, val_emb, val_collection.items, columns=columns, log10=log10
    )
    if store:
        bundle.matching = matching
    return matching


# -- verification scores --------------------------------------------------------------------------
def probability(score: np.ndarray | float, calibration: dict | None) -> np.ndarray:
    """Calibrated probability that two images show the same thing: sigmoid(a * cos + b)."""
    cal = calibration or {}
    a, b = float(cal.get("scale", 1.0)), float(cal.get("bias", 0.0))
    z = a * np.asarray(score, dtype=np.float64) + b
    return 1.0 / (1.0 + np.exp(-z))


def decision_threshold(calibration: dict | None) -> float:
    """The cosine at which the calibrated probability is 0.5 (``threshold`` if stored)."""
    cal = calibration or {}
    if cal.get("threshold") is not None:
        return float(cal["threshold"])
    a, b = float(cal.get("scale", 1.0)), float(cal.get("bias", 0.0))
    return -b / a if a else 0.5


def balanced_pairs(
    groups: np.ndarray, n_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n_pairs`` same-group and as many different-group pairs (i, j, same)."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups).astype(str)
    by = pd.Series(np.arange(len(groups))).groupby(groups).apply(np.asarray)
    multi = [g for g in by.index if len(by[g]) > 1]
    if not multi or len(by) < 2:
        raise TwinsightError(
            "verification needs at least two groups and one group with two items "
            f"(got {len(by)} groups, {len(multi)} with two or more items)"
        )
    sizes = np.array([len(by[g]) for g in multi], dtype=np.float64)
    pick = rng.choice(len(multi), size=n_pairs, p=sizes / sizes.sum())
    same_i, same_j = [], []
    for g in pick:
        a, b = rng.choice(by[multi[g]], size=2, replace=False)
        same_i.append(a)
        same_j.append(b)
    di = rng.integers(0, len(groups), size=4 * n_pairs)
    dj = rng.integers(0, len(groups), size=4 * n_pairs)
    keep = groups[di] != groups[dj]
    di, dj = di[keep][:n_pairs], dj[keep][:n_pairs]
    i = np.concatenate([same_i, di]).astype(np.int64)
    j = np.concatenate([same_j, dj]).astype(np.int64)
    same = np.concatenate([np.ones(len(same_i)), np.zeros(len(di))]).astype(bool)
    return i, j, same


def fit_platt(scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """Logistic (Platt) calibration p = sigmoid(a * score + b) fitted by maximum likelihood."""
    from sklearn.linear_model import LogisticRegression

    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise TwinsightError("score calibration needs both same and different pairs")
    model = LogisticRegression(C=1e4, max_iter=1000)
    model.fit(np.asarray(scores, dtype=np.float64).reshape(-1, 1), same.astype(int))
    a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    return {"scale": a, "bias": b, "threshold": -b / a if a else 0.5}


def pair_groups(collection: Any) -> np.ndarray:
    """What "the same" means for verification: the label, else the system."""
    if collection.has_labels:
        return collection.labels()
    if collection.has_systems:
        return collection.items["system"].to_numpy()
    raise TwinsightError(
        f"collection '{collection.name}' has neither labels nor systems, so no same/different pairs"
    )


def calibrate_scores(
    bundle: Any,
    val_collection: Any,
    *,
    n_pairs: int = 2000,
    batch_size: int = 256,
    seed: int = 0,
    store: bool = True,
) -> dict[str, Any]:
    """Score calibration for ``compare``: a learned (bce) scale/bias, else Platt on val pairs.

    Pairs are balanced same/different pairs of the validation set (same label,
    or same system when there are no labels). Stored in ``bundle.calibration``.
    """
    from twinsight.embedding import embed_collection

    existing = getattr(bundle, "calibration", None) or {}
    if existing.get("scale") is not None and existing.get("bias") is not None:
        cal = dict(existing)
        cal.setdefault("threshold", decision_threshold(cal))
        cal.setdefault("method", "learned")
    else:
        emb = embed_collection(bundle, val_collection, batch_size=batch_size)
        i, j, same = balanced_pairs(pair_groups(val_collection), n_pairs, seed)
        scores = np.sum(emb[i] * emb[j], axis=1)
        cal = fit_platt(scores, same) | {"method": "platt", "pairs": int(len(same))}
    if store:
        bundle.calibration = cal
    return cal


# -- query images ---------------------------------------------------------------------------------
@dataclass
class Queries:
    """Query images from files, brought to the model's input, with their items rows."""

    images: np.ndarray  # preprocessed [Q, C, H, W]
    raw: list[np.ndarray]  # as read, for figures
    items: pd.DataFrame
    param_columns: list[str]

    @property
    def names(self) -> list[str]:
        return self.items["key"].astype(str).tolist()


def load_queries(sources: Sequence[str], preprocessing: Any) -> Queries:
    """Open each source (image file, FITS, folder, table) and preprocess it for the model.

    Images whose size or channel count differ from the model's are resized /
    channel-matched by the model's preprocessing; an impossible conversion is a
    clear error naming the file.
    """
    from twinsight.data.readers import open_collection

    if not sources:
        raise TwinsightError("give at least one query image")
    images, raw, tables, params = [], [], [], []
    for src in sources:
        col = open_collection(str(src))
        if len(col) == 0:
            raise TwinsightError(f"query '{src}' holds no image")
        batch = col.images()
        try:
            images.append(preprocessing(batch))
        except TwinsightError as exc:
            raise TwinsightError(f"query '{src}': {exc}") from None
        raw.extend(list(batch))
        items = col.items.copy()
        if len(sources) > 1 or len(col) == 1:
            items["key"] = [str(src) if len(col) == 1 else f"{src}:{k}" for k in items["key"]]
        tables.append(items)
        params.extend(c for c in col.param_columns if c not in params)
    return Queries(np.concatenate(images), raw, pd.concat(tables, ignore_index=True), params)


def embed_queries(bundle: Any, queries: Queries, *, batch_size: int = 256) -> np.ndarray:
    """Embed already-preprocessed query images as one batch with the bundle's encoder."""
    from dataclasses import replace

    from twinsight.embedding import embed_images

    identity = replace(bundle.preprocessing, normalize="none")
    return embed_images(bundle.encoder, queries.images, identity, batch_size=batch_size)


def query_truths(queries: Queries, columns: Sequence[str]) -> np.ndarray:
    """True parameter values [Q, P] known for the queries (FITS header, table), NaN otherwise."""
    out = np.full((len(queries.items), len(columns)), np.nan)
    for j, c in enumerate(columns):
        if c in queries.items.columns:
            out[:, j] = pd.to_numeric(queries.items[c], errors="coerce").to_numpy(dtype=np.float64)
    return out


def calibrate_for_inference(bundle: Any, train_collection: Any, val_collection: Any) -> None:
    """Training-time calibration hook (called by ``api.train``): matching and score calibration.

    Matching defaults are calibrated when the validation items carry parameters
    and systems; the score calibration is fitted (Platt, same label or same
    system) when training did not provide one. A set too small or without
    groups is skipped with a log line, never failing the training run.
    """
    from twinsight.embedding import embed_collection

    if val_collection is None or len(val_collection) == 0:
        log.info("no validation items: matching and score calibration skipped")
        return
    if val_collection.param_columns and val_collection.has_systems:
        try:
            ref = embed_collection(bundle, train_collection)
            calibrate_matching(bundle, (ref, train_collection.items), val_collection)
        except TwinsightError as exc:
            log.warning("matching calibration skipped: %s", exc)
    if not getattr(bundle, "calibration", None):
        try:
            calibrate_scores(bundle, val_collection)
        except TwinsightError as exc:
            log.warning("score calibration skipped: %s", exc)
