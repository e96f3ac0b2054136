"""Score calibration: the probability that two images show the same thing, from their cosine.

A model bundle stores ``calibration = {"scale": a, "bias": b, "threshold": t}``
and the probability of "same" is ``sigmoid(a * cos + b)``; ``t = -b / a`` is the
cosine where it reaches 0.5. ``a`` and ``b`` are learned by the ``bce`` loss or
fitted afterwards by :func:`fit_platt` (training on validation pairs of
labels; inference on same/different-system pairs). This module is the one
place for that arithmetic: the bundle, training and inference all call it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twinsight.errors import TwinsightError

#: Inverse regularization of the Platt fit: large, so the fit is (nearly) maximum likelihood.
PLATT_C = 1e4
PLATT_MAX_ITER = 1000


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """The logistic function in float64 (no overflow warning for very negative ``z``)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def probability(score: np.ndarray | float, calibration: dict | None) -> np.ndarray:
    """Calibrated probability of "same": ``sigmoid(scale * score + bias)`` (1 and 0 when unset)."""
    cal = calibration or {}
    a, b = float(cal.get("scale", 1.0)), float(cal.get("bias", 0.0))
    return sigmoid(a * np.asarray(score, dtype=np.float64) + b)


def decision_threshold(calibration: dict | None) -> float:
    """The cosine at which the calibrated probability is 0.5 (``threshold`` if stored)."""
    cal = calibration or {}
    if cal.get("threshold") is not None:
        return float(cal["threshold"])
    a, b = float(cal.get("scale", 1.0)), float(cal.get("bias", 0.0))
    return _threshold(a, b)


def fit_platt(scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """Platt calibration ``p = sigmoid(a * score + b)``, fitted by (nearly) maximum likelihood.

    Same and different pairs weigh equally in total (``class_weight="balanced"``),
    so ``p = 0.5`` at the threshold means even odds whatever the pair mix; on
    balanced pairs that weighting changes nothing. Regularization is weak
    (``C = 1e4``): the fit follows the data, not a prior towards flat
    probabilities.
    """
    from sklearn.linear_model import LogisticRegression

    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise TwinsightError("score calibration needs both same and different pairs")
    model = LogisticRegression(C=PLATT_C, max_iter=PLATT_MAX_ITER, class_weight="balanced")
    model.fit(np.asarray(scores, dtype=np.float64).reshape(-1, 1), same.astype(int))
    a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    return {"scale": a, "bias": b, "threshold": _threshold(a, b)}


def calibration_dict(scale: float, bias: float) -> dict[str, Any]:
    """The stored form of a calibration: scale, bias and the 0.5 threshold."""
    return {"scale": float(scale), "bias": float(bias), "threshold": _threshold(scale, bias)}


def _threshold(a: float, b: float) -> float:
    return float(-b / a) if a else 0.5
