"""Validation metrics: retrieval (labels) and pair-similarity ranking (parameters).

:func:`retrieval_metrics` is the one implementation of precision@1, R-precision
and MAP@R (pytorch-metric-learning's, leave-one-out); the per-epoch validation
and :mod:`twinsight.evaluation` both call it. torch is imported inside the
functions so that importing this module (as evaluation does) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from twinsight.data.targets import TargetSpec, pair_targets

if TYPE_CHECKING:
    import torch

#: Largest number of neighbours retrieval metrics ask for (memory bound).
MAX_RETRIEVAL_K = 1000
RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def retrieval_metrics(
    embeddings: np.ndarray, labels: np.ndarray, *, k: int | None = None
) -> dict[str, Any]:
    """precision@1, R-precision and MAP@R of leave-one-out retrieval, and the ``k`` used.

    The query set is its own reference (each item's self-match excluded). ``k``
    defaults to min(largest class size, :data:`MAX_RETRIEVAL_K`) so large sets do
    not exhaust memory: with classes larger than that, MAP@R is computed on the
    first ``k`` neighbours only.
    """
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    codes = pd.factorize(pd.Series(np.asarray(labels)).astype(str))[0].astype(np.int64)
    if k is None:
        k = min(int(np.bincount(codes).max()), MAX_RETRIEVAL_K)
    k = max(1, min(int(k), len(codes) - 1))
    calc = AccuracyCalculator(include=RETRIEVAL_KEYS, k=k, device=torch.device("cpu"))
    emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    lab = torch.from_numpy(codes)
    res = calc.get_accuracy(emb, lab, emb, lab, ref_includes_query=True)
    return {**{name: float(res[name]) for name in RETRIEVAL_KEYS}, "k": k}


def pair_spearman(
    embeddings: torch.Tensor, y: torch.Tensor, spec: TargetSpec, max_pairs: int, seed: int = 0
) -> float:
    """Spearman correlation of predicted (cosine) and target similarity over sampled pairs."""
    import torch
    from scipy.stats import spearmanr

    n = embeddings.shape[0]
    if n < 3:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
    else:
        i = torch.randint(0, n, (max_pairs,), generator=gen)
        j = torch.randint(0, n - 1, (max_pairs,), generator=gen)
        j = j + (j >= i).long()
    emb = embeddings.float()
    pred = (emb[i] * emb[j]).sum(1)
    tgt = pair_targets(y[i], y[j], spec)
    rho = spearmanr(pred.numpy(), tgt.numpy()).statistic
    return float(rho) if np.isfinite(rho) else float("nan")


def validation_metrics(
    embeddings: torch.Tensor, y: torch.Tensor, spec: TargetSpec, max_pairs: int, seed: int = 0
) -> dict[str, float]:
    """The epoch's validation metrics and ``val_score``, the one that picks the best epoch.

    Labels: ``val_p_at_1`` and ``val_map_at_r`` (the score); parameters:
    ``val_spearman`` (the score; -1 when undefined, so such an epoch is never best).
    """
    if spec.kind == "labels":
        m = retrieval_metrics(embeddings.numpy(), y.numpy())
        return {
            "val_p_at_1": m["precision_at_1"],
            "val_map_at_r": m["mean_average_precision_at_r"],
            "val_score": m["mean_average_precision_at_r"],
        }
    rho = pair_spearman(embeddings, y, spec, max_pairs, seed)
    score = rho if np.isfinite(rho) else -1.0
    return {"val_spearman": rho, "val_score": score}
