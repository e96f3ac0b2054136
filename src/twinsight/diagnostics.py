"""Simulation-based-calibration diagnostics of best-match posteriors: TARP, SBC ranks, coverage.

For every held-out query whose truth is known, its best matches (their parameter
values in scale space, with their weights) are the samples of its posterior. Three
checks ask whether those posteriors are honest over many queries:

- **TARP** (Lemos et al. 2023, "Sampling-based accuracy testing of posterior
  estimators", arXiv:2302.03026): a test of the *joint* coverage. For a random
  reference point per query, the credibility ``f`` is the (weighted) share of samples
  closer to the reference than the truth is. A calibrated posterior gives uniform
  ``f``; the expected-coverage curve ``ecp(alpha) = P(f < alpha)`` then follows the
  diagonal. :func:`check_tarp` reports the area between the curve and the diagonal
  above alpha = 0.5 (``atc``: < 0 too narrow, > 0 too wide, as sbi defines it) and a
  KS test of ``f`` against the uniform distribution.
- **SBC ranks** (Talts et al. 2018): per parameter, the (weighted) rank of the truth
  among the samples, normalized to [0, 1]; uniform when calibrated (:func:`run_sbc`,
  :func:`check_sbc`).
- **Marginal expected coverage**: the share of truths inside the central intervals at
  levels 0.05 … 0.95 (:func:`expected_coverage`).

The ``run_*`` / ``check_*`` pairs follow :mod:`sbi.diagnostics` (sbi is an optional
extra, ``pip install twinsight[compare]``). ``twinsight evaluate`` uses this module,
not sbi: one code path whether or not sbi is installed, weighted samples (sbi's take
equal weights), system weights for the queries, and no torch on this floor. A test
checks that our TARP equals sbi's on the same samples and reference points.

Three choices keep the figures honest:

- **Systems, not images, are the draws.** The views of one system are correlated;
  with ``groups`` each query weighs 1 / (its system's views) (as in
  :func:`twinsight.inference.system_weights`), curves and histograms are weighted,
  and every KS test counts the systems as its draws, as the conformal calibration
  does (:mod:`twinsight.inference.conformal`).
- **The distribution the intervals are read from.** A rank (or TARP credibility) is
  the level of the truth under the CDF that the reported quantiles invert
  (:func:`twinsight.inference.weighted_quantile`'s midpoint rule: linear between the
  sorted samples, the ends held), ties split at random. So the truth is inside the
  level-L interval exactly when its rank is within L / 2 of 0.5, and the rank
  histogram, the coverage curve and the intervals tell one story. sbi's plain share
  of samples (``interpolate=False``) reads N samples as N + 1 levels: with the 10
  matches a calibration may choose, every KS test would fail on that alone, and
  TARP's ATC shifts by about -0.375 / (N + 1).
- **Sampling the calibrated intervals.** Conformal calibration widens each interval
  about the median by a factor per level; the samples are widened by the 68 % factor
  (:func:`inflate_samples`), so their 68 % interval is the reported one. The other
  levels' factors differ (often larger at 95 %): the marginal coverage curve uses
  each level's own factor, the ranks only the 68 % one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import kstwo

from twinsight.errors import TwinsightError
from twinsight.inference import coverage, neighbour_intervals, system_weights

#: Central-interval levels of the marginal expected-coverage curve.
COVERAGE_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: The largest number of bins of an SBC rank histogram.
SBC_BINS = 20


# -- inputs ---------------------------------------------------------------------------------------
def _check(
    samples: np.ndarray, weights: np.ndarray | None, truths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples [Q, N, P], weights [Q, N] (ones when None) and truths [Q, P] as float64."""
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truths, dtype=np.float64)
    if s.ndim != 3 or t.shape != (s.shape[0], s.shape[2]):
        raise TwinsightError(
            f"diagnostics need samples [queries, samples, parameters] and truths "
            f"[queries, parameters], got {s.shape} and {t.shape}"
        )
    w = np.ones(s.shape[:2]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != s.shape[:2] or (w < 0).any() or not (w.sum(axis=1) > 0).all():
        raise TwinsightError(
            f"diagnostics need non-negative weights [queries, samples] = {s.shape[:2]} with a "
            f"positive sum per query, got shape {w.shape}"
        )
    return s, w, t


def query_weights(groups: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Per-query weights, 1 / (views of its system), and the number of independent draws.

    Without ``groups`` every query is its own draw (weights 1, ``n`` draws); with them
    each system's views share one unit of weight and the draws are the systems.
    """
    if groups is None:
        return np.ones(n), n
    g = np.asarray(groups).astype(str)
    if len(g) != n:
        raise TwinsightError(f"diagnostics: {len(g)} groups for {n} queries")
    return system_weights(g, n), int(len(np.unique(g)))


def inflate_samples(values: np.ndarray, median: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Samples widened about each query's median: ``m + s (v - m)`` per parameter.

    ``values`` [Q, N, P], ``median`` [Q, P], ``factors`` [P] (the conformal 68 % inflation).
    Weighted quantiles commute with this increasing affine map, so the widened samples'
    68 % interval is exactly the calibrated 68 % interval the estimate reports; this is
    how the inflated intervals are sampled.
    """
    m = np.asarray(median, dtype=np.float64)[:, None, :]
    s = np.asarray(factors, dtype=np.float64)[None, None, :]
    return m + s * (np.asarray(values, dtype=np.float64) - m)


# -- shared statistics ----------------------------------------------------------------------------
def _pit(
    x: np.ndarray, truth: np.ndarray, weights: np.ndarray, interpolate: bool, rng: Any
) -> np.ndarray:
    """Per query, the level of ``truth`` [Q] under its weighted samples ``x`` [Q, N], in [0, 1].

    ``interpolate``: the CDF that :func:`twinsight.inference.weighted_quantile` inverts
    (each sorted sample at ``(W_i - w_i / 2) / W``, linear in between, the ends held), so
    the truth is inside the central interval at level L exactly when its level is within
    L / 2 of 0.5. Otherwise the weighted share of samples below (sbi's TARP). A tie with
    samples is resolved uniformly at random over the tied levels.
    """
    q_n, n_n = x.shape
    valid = weights > 0
    order = np.argsort(np.where(valid, x, np.inf), axis=1, kind="stable")
    xs = np.take_along_axis(np.where(valid, x, np.inf), order, axis=1)
    ws = np.take_along_axis(np.where(valid, weights, 0.0), order, axis=1)
    total = ws.sum(axis=1)
    cum = np.cumsum(ws, axis=1) / total[:, None]
    t = truth[:, None]
    k = (xs < t).sum(axis=1)  # samples below the truth
    m = (xs == t).sum(axis=1)  # samples tied with it
    v = rng.random(q_n)
    rows = np.arange(q_n)
    if not interpolate:
        below = cum[rows, np.maximum(k - 1, 0)] * (k > 0)
        tied = cum[rows, np.minimum(k + m - 1, n_n - 1)] * (k + m > 0) - below
        return below + v * tied
    mid = cum - ws / (2 * total[:, None])
    n = valid.sum(axis=1)
    lo, hi = np.clip(k - 1, 0, n_n - 1), np.clip(k, 0, n_n - 1)
    x0, x1, c0, c1 = xs[rows, lo], xs[rows, hi], mid[rows, lo], mid[rows, hi]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((truth - x0) / (x1 - x0), 0.0, 1.0)
    u = np.where(k == 0, 0.0, np.where(k >= n, 1.0, c0 + np.nan_to_num(frac) * (c1 - c0)))
    tie_lo = np.where(k == 0, 0.0, mid[rows, np.minimum(k, n_n - 1)])
    tie_hi = np.where(k + m >= n, 1.0, mid[rows, np.clip(k + m - 1, 0, n_n - 1)])
    return np.where(m > 0, tie_lo + v * (tie_hi - tie_lo), u)


def ks_uniform(
    x: np.ndarray, weights: np.ndarray | None = None, n: int | None = None
) -> tuple[float, float]:
    """KS statistic and p-value of (weighted) values in [0, 1] against the uniform.

    The statistic is the largest gap between the weighted empirical CDF and the
    diagonal; the p-value is the exact two-sided one (scipy's ``kstwo``) for ``n``
    independent draws (default: the number of values), so for equal weights it equals
    ``scipy.stats.kstest(x, "uniform")``.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order] / w.sum()
    upper = np.cumsum(ws)
    d = max(float(np.max(upper - xs)), float(np.max(xs - (upper - ws))), 0.0)
    return d, float(kstwo.sf(d, max(int(len(x) if n is None else n), 1)))


def _default_bins(draws: int, per_bin: int, most: int) -> int:
    """About ``per_bin`` draws per bin, between 5 and ``most`` bins."""
    return int(min(most, max(5, draws // per_bin)))


# -- TARP -----------------------------------------------------------------------------------------
def prior_normalization(prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Location and scale per parameter: the prior's (library's) mean and standard deviation."""
    p = np.asarray(prior, dtype=np.float64)
    loc, scale = p.mean(axis=0), p.std(axis=0)
    return loc, np.where(scale > 0, scale, 1.0)


def tarp_references(low: np.ndarray, high: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` reference points drawn uniformly in the box [low, high] (seeded), [n, P]."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return low + (high - low) * rng.random((n, len(low)))


def run_tarp(
    samples: np.ndarray,
    weights: np.ndarray | None,
    truths: np.ndarray,
    *,
    prior: np.ndarray | None = None,
    references: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    num_bins: int | None = None,
    interpolate: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """TARP credibilities and expected-coverage curve of weighted posterior samples.

    ``samples`` [Q, N, P] with ``weights`` [Q, N] (None: equal) and ``truths`` [Q, P].
    With ``prior`` [M, P] (the library, in the same scale space) every point is
    z-scored by the prior's mean and sd, and the reference points (one per query) are
    drawn uniformly over the normalized prior's range; without it the values are used
    as given and the references span the truths' range (sbi's default). ``references``
    [Q, P], in the normalized space, replace the random ones. ``groups`` [Q] (the system
    of each query) count each system once (:func:`query_weights`). ``num_bins``
    defaults to about 10 draws per bin (5 to 100). ``interpolate=False``: the credibility
    is the plain share of samples closer than the truth, as in sbi (module docstring).

    Returns ``alpha`` (the bin edges on [0, 1]), ``ecp`` (the weighted share of
    credibilities below each edge), ``credibility`` [Q], ``query_weights`` [Q] and
    ``draws`` (the number of independent draws: systems, or queries).
    """
    s, w, t = _check(samples, weights, truths)
    qw, draws = query_weights(groups, len(t))
    if prior is not None:
        loc, scale = prior_normalization(prior)
        s, t = (s - loc) / scale, (t - loc) / scale
        box = (np.asarray(prior, np.float64) - loc) / scale
    else:
        box = t
    if references is None:
        references = tarp_references(box.min(axis=0), box.max(axis=0), len(t), seed)
    ref = np.asarray(references, dtype=np.float64)
    if ref.shape != t.shape:
        raise TwinsightError(f"TARP references must be {t.shape} like the truths, got {ref.shape}")
    d_samples = np.linalg.norm(s - ref[:, None, :], axis=-1)
    d_truth = np.linalg.norm(t - ref, axis=-1)[:, None]
    rng = np.random.default_rng([seed, 1])
    f = _pit(d_samples, d_truth[:, 0], w, interpolate, rng)
    bins = num_bins or _default_bins(draws, 10, 100)
    hist, alpha = np.histogram(f, bins=bins, range=(0.0, 1.0), weights=qw)
    ecp = np.concatenate([[0.0], np.cumsum(hist) / hist.sum()])
    return {
        "alpha": alpha,
        "ecp": ecp,
        "credibility": f,
        "query_weights": qw,
        "draws": draws,
    }


def check_tarp(result: dict[str, Any]) -> tuple[float, float]:
    """Area to curve and KS p-value of a :func:`run_tarp` result.

    ``atc`` is sbi's: the sum of ``(ecp - alpha) * dalpha`` over the upper half of the
    grid (alpha >= 0.5); ~0 when calibrated, < 0 when the posteriors are too narrow
    (or biased), > 0 when too wide. The p-value is a KS test of the credibilities
    against the uniform (:func:`ks_uniform`, with the result's ``draws``); sbi's
    ``check_tarp`` instead compares the ``ecp`` and ``alpha`` grids as two samples.
    """
    alpha, ecp = np.asarray(result["alpha"]), np.asarray(result["ecp"])
    mid = len(alpha) // 2
    atc = float(np.sum((ecp[mid:] - alpha[mid:]) * (alpha[1] - alpha[0])))
    _, p = ks_uniform(result["credibility"], result["query_weights"], result["draws"])
    return atc, p


# -- SBC ranks ------------------------------------------------------------------------------------
def run_sbc(
    samples: np.ndarray,
    weights: np.ndarray | None,
    truths: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    interpolate: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Per parameter, the truth's normalized (weighted) rank among each query's samples.

    Returns ``ranks`` [Q, P] in [0, 1] (uniform when calibrated), ``query_weights`` [Q]
    and ``draws``, as :func:`run_tarp`; ties are split at random (module docstring).
    """
    s, w, t = _check(samples, weights, truths)
    qw, draws = query_weights(groups, len(t))
    rng = np.random.default_rng([seed, 2])
    ranks = np.stack(
        [_pit(s[:, :, p], t[:, p], w, interpolate, rng) for p in range(t.shape[1])],
        axis=-1,
    )
    return {"ranks": ranks, "query_weights": qw, "draws": draws}


def check_sbc(result: dict[str, Any]) -> np.ndarray:
    """KS p-values [P] of the :func:`run_sbc` ranks against the uniform, per parameter."""
    ranks, qw, n = result["ranks"], result["query_weights"], result["draws"]
    return np.array([ks_uniform(ranks[:, p], qw, n)[1] for p in range(ranks.shape[1])])


def rank_histogram(
    result: dict[str, Any], bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges [B + 1] and the (query-weighted) share of ranks per bin [P, B].

    ``bins`` defaults to about 10 draws per bin, between 5 and :data:`SBC_BINS`.
    """
    ranks, qw = result["ranks"], result["query_weights"]
    bins = bins or _default_bins(result["draws"], 10, SBC_BINS)
    edges = np.linspace(0.0, 1.0, bins + 1)
    hist = np.stack(
        [np.histogram(ranks[:, p], bins=edges, weights=qw)[0] for p in range(ranks.shape[1])]
    )
    return edges, hist / qw.sum()


# -- marginal coverage ----------------------------------------------------------------------------
def expected_coverage(
    values: np.ndarray,
    weights: np.ndarray,
    truths: np.ndarray,
    *,
    levels: Sequence[float] = COVERAGE_LEVELS,
    inflation: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Observed coverage [L, P] of the central intervals at ``levels``, per parameter.

    The intervals are the weighted quantiles of the *raw* matches ``values`` [Q, N, P],
    widened by ``inflation`` [L, P] (the calibrated factors at these levels) exactly as
    reported estimates are; ``groups`` counts each system once.
    """
    s, w, t = _check(values, weights, truths)
    _, lo, hi = neighbour_intervals(s, w, levels, inflation)
    return np.stack([coverage(t, lo[i], hi[i], groups) for i in range(len(levels))])


# -- everything, for evaluate --------------------------------------------------------------------
def posterior_diagnostics(
    values: np.ndarray,
    weights: np.ndarray,
    truths: np.ndarray,
    median: np.ndarray,
    *,
    names: Sequence[str],
    prior: np.ndarray,
    inflation_68: np.ndarray | None = None,
    coverage_inflation: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """TARP, SBC and marginal expected coverage of many queries, as a JSON-able dict.

    ``values`` [Q, N, P] are the raw matches' values (scale space), ``weights`` [Q, N],
    ``median`` [Q, P] their weighted medians, ``prior`` [M, P] the library. The posterior
    samples are the matches widened about the median by ``inflation_68`` [P] (see
    :func:`inflate_samples`; None: raw); the marginal coverage uses the intervals
    widened by ``coverage_inflation`` [L, P] at :data:`COVERAGE_LEVELS` (None: the raw
    weighted quantiles). ``groups`` (the system of each query) weighs queries by system.
    """
    s, w, t = _check(values, weights, truths)
    factors = np.ones(t.shape[1]) if inflation_68 is None else np.asarray(inflation_68)
    samples = inflate_samples(s, median, factors)
    tarp = run_tarp(samples, w, t, prior=prior, groups=groups, seed=seed)
    atc, tarp_p = check_tarp(tarp)
    sbc = run_sbc(samples, w, t, groups=groups, seed=seed)
    sbc_p = check_sbc(sbc)
    edges, hist = rank_histogram(sbc)
    cov = expected_coverage(s, w, t, inflation=coverage_inflation, groups=groups)
    return {
        "samples": {
            "queries": int(len(t)),
            "draws": int(tarp["draws"]),
            "inflation_68": dict(zip(names, map(float, factors), strict=True)),
        },
        "tarp": {
            "atc": atc,
            "ks_pvalue": tarp_p,
            "alpha": tarp["alpha"].tolist(),
            "ecp": tarp["ecp"].tolist(),
            "seed": int(seed),
        },
        "sbc": {
            name: {"ks_pvalue": float(sbc_p[j]), "edges": edges.tolist(), "hist": hist[j].tolist()}
            for j, name in enumerate(names)
        },
        "coverage": {
            "levels": list(COVERAGE_LEVELS),
            "observed": {name: cov[:, j].tolist() for j, name in enumerate(names)},
            "intervals": "calibrated" if coverage_inflation is not None else "raw",
        },
    }
