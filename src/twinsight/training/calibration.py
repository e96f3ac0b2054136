"""Score calibration at the end of training (class targets): cosine -> probability of "same".

The ``bce`` loss learns ``p = sigmoid(a * cos + b)`` itself; for any other loss,
``a`` and ``b`` are fitted on random validation pairs with the one Platt fit,
:func:`twinsight.models.calibration.fit_platt`. Parameter targets have no
"same" here (inference calibrates same-system pairs later).
"""

from __future__ import annotations

from typing import Any

import torch

from twinsight.data.targets import TargetSpec
from twinsight.models.calibration import calibration_dict, fit_platt

#: Random validation pairs for the Platt fit.
MAX_PAIRS = 50_000
#: What a validation set without both same and different pairs gets: a steep sigmoid at 0.5.
FALLBACK = (10.0, -5.0)


def score_calibration(
    loss_fn: Any, emb: torch.Tensor, y: torch.Tensor, spec: TargetSpec
) -> dict[str, float] | None:
    """Scale, bias and threshold: the loss's learned ones, else a Platt fit; None for params."""
    if spec.kind != "labels":
        return None
    if hasattr(loss_fn, "scale") and hasattr(loss_fn, "bias"):
        a = float(torch.as_tensor(loss_fn.scale).reshape(-1)[0])
        b = float(torch.as_tensor(loss_fn.bias).reshape(-1)[0])
        return calibration_dict(a, b)
    scores, same = random_pairs(emb, y)
    if same.all() or not same.any():
        return calibration_dict(*FALLBACK)
    return fit_platt(scores, same)


def random_pairs(
    emb: torch.Tensor, y: torch.Tensor, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[Any, Any]:
    """Cosine scores and same-label flags (numpy) of up to ``max_pairs`` random distinct pairs."""
    n = len(emb)
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (max_pairs,), generator=gen)
    j = torch.randint(0, n, (max_pairs,), generator=gen)
    keep = i != j
    i, j = i[keep], j[keep]
    scores = (emb[i] * emb[j]).sum(1).numpy()
    same = (y[i] == y[j]).numpy()
    return scores, same
