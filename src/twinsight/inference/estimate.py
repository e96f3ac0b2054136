"""Best-match estimates: for each query, its matches' parameter distributions against the prior.

For a query image the index returns its best matches; each match carries the
physical parameters of its simulated system. Per parameter we report the
(weighted) distribution of the matches' values: median, 16-84 % and
2.5-97.5 % intervals, a histogram, the same statistics over the whole indexed
collection (the prior), and the narrowing ratio (68 % width of matches / of
prior). With calibrated defaults (``bundle.matching``, see
:mod:`twinsight.inference.conformal`) the number of matches and the interval
inflation are the calibrated ones.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinsight.errors import TwinsightError
from twinsight.index import SimilarityIndex
from twinsight.inference.intervals import (
    LEVELS,
    REPORTED_LEVELS,
    choose_scale,
    from_scale,
    inflation_factors,
    match_weights,
    neighbour_intervals,
    to_scale,
    weighted_quantile,
)
from twinsight.validation import check_positive_int

DEFAULT_TOP = 50
HIST_BINS = 30


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
    #: The instrument the intervals were calibrated for (None: clean simulations).
    instrument: dict[str, Any] | None = None
    #: What the intake derived from the observation's file (pixel scale, beam, noise, ...).
    observation: dict[str, Any] | None = None
    #: The best-match similarity against simulations seen alike, with its p-value.
    typicality: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_matches(self) -> int:
        return len(self.positions)

    def to_dict(self, with_values: bool = True) -> dict[str, Any]:
        return {
            "query": self.query,
            "n_matches": self.n_matches,
            "weighting": self.weighting,
            "calibrated": self.calibrated,
            "calibrated_for": self.instrument or "clean simulations",
            "observation": self.observation,
            "typicality": self.typicality,
            "warnings": list(self.warnings),
            "matches": [
                {"rank": r + 1, "key": k, "system": s, "similarity": float(sim), "weight": float(w)}
                for r, (k, s, sim, w) in enumerate(
                    zip(self.keys, self.systems, self.similarities, self.weights, strict=True)
                )
            ],
            "parameters": {n: p.to_dict(with_values) for n, p in self.parameters.items()},
        }

    def plot(self, path: str | Path | None = None, *, overwrite: bool = True) -> Any:
        """Seed 000's figure: per parameter the matches' histogram against the prior."""
        from twinsight.plots import plot_parameter_matches

        return plot_parameter_matches(self, path, overwrite=overwrite)


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
    if top is not None:
        top = check_positive_int(top, "--top")
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
        searched = sims
        sims = np.where(sims >= threshold, sims, -np.inf)
        n_ok = np.isfinite(sims).sum(axis=1)
        if (n_ok == 0).any():  # the best among the searched matches, before thresholding
            finite = np.where(np.isfinite(searched), searched, -np.inf)
            best = float(np.max(finite, initial=-np.inf))
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
    exclude = _per_query(exclude_systems, n_q)
    top, threshold, weighting, temperature, calibrated = _settings(
        matching, top, threshold, weighting, temperature
    )
    sims, pos = _select(index, queries, top, threshold, exclude)
    weights = match_weights(sims, weighting, temperature)
    prior = index.params(columns)
    scales = _scales(prior, columns, matching)
    inflation = inflation_factors(matching, columns, REPORTED_LEVELS) if calibrated else None
    safe = np.clip(pos, 0, None)
    values = np.stack([to_scale(prior[safe, j], scales[j]) for j in range(len(columns))], axis=-1)
    med, lo, hi = neighbour_intervals(values, weights, REPORTED_LEVELS, inflation)
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


def _per_query(exclude_systems: Sequence[Any] | Any | None, n_queries: int) -> list[Any]:
    """One system id (or None) per query: a single id (str or integer, numpy too) repeats."""
    single = exclude_systems is None or isinstance(exclude_systems, str | bytes | numbers.Integral)
    if single:
        return [exclude_systems] * n_queries
    exclude = list(exclude_systems)
    if len(exclude) != n_queries:
        raise TwinsightError(
            f"exclude_systems: give one system id for all queries or one per query "
            f"({n_queries}), got {len(exclude)}"
        )
    return exclude


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _scales(prior: np.ndarray, columns: Sequence[str], matching: dict | None) -> list[str]:
    stored = (matching or {}).get("scales") or {}
    return [stored.get(c) or choose_scale(prior[:, j]) for j, c in enumerate(columns)]


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


# -- many queries whose truth is known -----------------------------------------------------------
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
    """Medians [Q, P] and intervals [L, Q, P] (scale space) and prior widths for many queries.

    Also the matches behind them, ``values`` [Q, N, P] (scale space, raw: not inflated)
    and ``weights`` [Q, N] (0 for a missing match), for posterior diagnostics.
    """
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
        "values": values,
        "weights": weights,
    }
