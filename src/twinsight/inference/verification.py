"""Verification: are two images the same thing? Calibrated scores on same/different pairs.

``compare`` reports the cosine of two embeddings and, with a calibration, the
probability that they show the same class or system,
``sigmoid(scale * cos + bias)``. The arithmetic (:func:`probability`,
:func:`decision_threshold`, :func:`fit_platt`) lives in
:mod:`twinsight.models.calibration`, next to the bundle that stores it;
this module builds the pairs and fits the calibration on validation items.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from twinsight.errors import TwinsightError
from twinsight.models.calibration import decision_threshold, fit_platt, probability

__all__ = [
    "balanced_pairs",
    "calibrate_scores",
    "decision_threshold",
    "fit_platt",
    "pair_groups",
    "probability",
]


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
