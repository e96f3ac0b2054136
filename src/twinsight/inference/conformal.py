"""Matching calibration: the number of matches and a split-conformal interval inflation.

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
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from twinsight.errors import TwinsightError
from twinsight.index import SimilarityIndex
from twinsight.inference.estimate import recovery_arrays
from twinsight.inference.intervals import (
    LEVELS,
    choose_scale,
    level_index,
    to_scale,
    with_reported_levels,
)

log = logging.getLogger(__name__)

#: Candidate numbers of matches tried by :func:`calibrate_matching`.
TOP_CANDIDATES = (10, 20, 30, 50, 75, 100, 150, 200, 300)


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
    whose calibrated 68 % intervals are narrowest (mean narrowing) is kept. The
    68 % and 95 % levels, which every estimate reports, are calibrated even when
    ``levels`` omits them.
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
    levels = with_reported_levels(levels)
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
    i68 = level_index(levels, 0.68)
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
