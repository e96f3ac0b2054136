"""Targets: the similarity two items should have, and the one rule for log-scaled parameters.

This module owns the target-similarity kernel. Training (a B x B matrix of a
batch, torch), validation (sampled pairs, torch) and evaluation (pairs of
held-out items, numpy) all call it, so a model is always judged against the
targets it was trained on:

- ``labels``: 1 for the same class, 0 otherwise;
- ``params`` with the ``cosine`` kernel (seed 000/001): ``(cos(z_a, z_b) + 1) / 2``
  of normalized parameter vectors (a zero vector has cosine 0, so 0.5);
- ``params`` with the ``rbf`` kernel: ``exp(-|z_a - z_b|^2 / (2 w^2 P))``, P the
  number of parameters, so the width ``w`` is per parameter.

One implementation serves both array libraries: the formulas are written once
(:func:`similarity_matrix`, :func:`pair_similarity`) over a handful of array
operations (normalize rows, squared distances, clip, exp) that a small
backend supplies for numpy arrays or torch tensors, whichever is given. The
torch backend uses exactly the operations training always used (``F.normalize``,
``torch.cdist``), so the training loss is bit-identical to before; this module
imports torch only when it is handed a tensor.

:func:`is_log_scaled` decides whether a parameter is treated in log10: for the
automatic ``--log10`` choice at training time and for the scale in which
inference takes quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from twinsight.errors import TwinsightError

Kernel = Literal["cosine", "rbf"]
KERNELS = ("cosine", "rbf")
KINDS = ("labels", "params")
EPS = 1e-12


# -- what the targets are -------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    """What a pair's target similarity is: ``labels``, or ``params`` (columns, log10, kernel)."""

    kind: str
    columns: tuple[str, ...] = ()
    log10: tuple[str, ...] = ()
    kernel: str = "cosine"
    width: float = 1.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetSpec:
        """From a bundle's ``targets`` (or a checkpoint's hyperparameters); extra keys ignored."""
        kind = data.get("kind")
        if kind not in KINDS:
            raise TwinsightError(f"targets kind must be one of {KINDS}, got {kind!r}")
        return cls(
            kind,
            tuple(data.get("columns", ())),
            tuple(data.get("log10", ())),
            data.get("kernel", "cosine"),
            float(data.get("width", 1.0)),
        )


def target_matrix(y: Any, spec: TargetSpec) -> Any:
    """The B x B targets in [0, 1] of a batch: labels [B] or normalized parameters [B, P]."""
    if spec.kind == "labels":
        return _backend(y).as_float32(y[:, None] == y[None, :])
    z = _backend(y).as_float32(y)
    return similarity_matrix(z, z, spec.kernel, spec.width)


def pair_targets(ya: Any, yb: Any, spec: TargetSpec) -> Any:
    """The targets of the pairs (ya[k], yb[k]), elementwise ([N] labels or [N, P] parameters)."""
    ops = _backend(ya)
    if spec.kind == "labels":
        return ops.as_float32(ya == yb)
    return pair_similarity(ops.as_float32(ya), ops.as_float32(yb), spec.kernel, spec.width)


# -- the kernel -----------------------------------------------------------------------------------
def similarity_matrix(za: Any, zb: Any, kernel: str = "cosine", width: float = 1.0) -> Any:
    """Kernel similarity [A, B] of every pair of parameter rows (numpy or torch, any dtype)."""
    ops = _backend(za)
    if kernel == "cosine":
        cos = ops.normalize(za) @ ops.normalize(zb).T
        return _cosine_to_unit(ops, cos)
    return _rbf(ops, ops.sq_dist_matrix(za, zb), width, za.shape[1])


def pair_similarity(za: Any, zb: Any, kernel: str = "cosine", width: float = 1.0) -> Any:
    """Kernel similarity [N] of the pairs (za[k], zb[k]) (numpy or torch, any dtype)."""
    ops = _backend(za)
    if kernel == "cosine":
        cos = (ops.normalize(za) * ops.normalize(zb)).sum(1)
        return _cosine_to_unit(ops, cos)
    return _rbf(ops, ((za - zb) ** 2).sum(1), width, za.shape[1])


def _cosine_to_unit(ops: Any, cos: Any) -> Any:
    return (ops.clip(cos, -1.0, 1.0) + 1) / 2


def _rbf(ops: Any, sq_dist: Any, width: float, n_params: int) -> Any:
    return ops.exp(-sq_dist / (2 * width**2 * n_params))


# -- checked numpy entry points -------------------------------------------------------------------
def parameter_similarity(
    za: np.ndarray, zb: np.ndarray, kernel: Kernel = "cosine", width: float = 1.0
) -> np.ndarray:
    """Target similarity in [0, 1] of every (a, b) pair of normalized parameter vectors (numpy).

    The checked form of :func:`similarity_matrix`: 1-D inputs are one row,
    computed in float64 and returned in the inputs' float dtype (at least float32).
    """
    za, zb = _as_matrix(za, "za"), _as_matrix(zb, "zb")
    if za.shape[1] != zb.shape[1]:
        raise TwinsightError(
            f"za and zb have different numbers of parameters: {za.shape[1]} vs {zb.shape[1]}"
        )
    check_kernel(kernel, width)
    dtype = np.result_type(za.dtype, zb.dtype, np.float32)
    sim = similarity_matrix(za.astype(np.float64), zb.astype(np.float64), kernel, width)
    return np.clip(sim, 0.0, 1.0).astype(dtype)


def class_similarity(la: Sequence[Any] | np.ndarray, lb: Sequence[Any] | np.ndarray) -> np.ndarray:
    """1.0 where the labels are equal, 0.0 elsewhere, float32 [A, B]."""
    a = np.asarray(la).reshape(-1)
    b = np.asarray(lb).reshape(-1)
    return (a[:, None] == b[None, :]).astype(np.float32)


def check_kernel(kernel: str, width: float) -> None:
    """Refuse an unknown kernel name or a non-positive rbf width."""
    if kernel not in KERNELS:
        raise TwinsightError(f"unknown similarity kernel '{kernel}'; expected one of {KERNELS}")
    if kernel == "rbf" and not (np.isfinite(width) and width > 0):
        raise TwinsightError(f"rbf width must be a positive number, got {width!r}")


def _as_matrix(z: np.ndarray, name: str) -> np.ndarray:
    z = np.asarray(z)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2:
        raise TwinsightError(f"{name} must be [N, P] normalized parameters, got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    return z


# -- log-scaled parameters ------------------------------------------------------------------------
def is_log_scaled(values: np.ndarray) -> bool:
    """Whether a parameter is better handled in log10: positive and log-distributed.

    Log-distributed: at least 3 finite values, all positive, the 5-95 % range
    spans at least a factor 10, and the values are less skewed in log10 than in
    linear space. Quantiles (not the extremes) make the rule robust to a few
    outlying systems; the skewness test keeps a parameter that is uniform over
    a wide linear range linear.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 3 or not (v > 0).all():
        return False
    q5, q95 = np.quantile(v, [0.05, 0.95])
    if q95 < 10 * q5:
        return False
    return abs(_skew(np.log10(v))) < abs(_skew(v))


def _skew(v: np.ndarray) -> float:
    sd = v.std()
    return float(np.mean(((v - v.mean()) / sd) ** 3)) if sd > 0 else 0.0


# -- array backends -------------------------------------------------------------------------------
class _Numpy:
    """The few array operations the kernel needs, for numpy arrays."""

    @staticmethod
    def normalize(z: np.ndarray) -> np.ndarray:
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), EPS)

    @staticmethod
    def sq_dist_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
        return np.maximum(sq, 0.0)

    @staticmethod
    def clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.clip(x, lo, hi)

    @staticmethod
    def exp(x: np.ndarray) -> np.ndarray:
        return np.exp(x)

    @staticmethod
    def as_float32(x: Any) -> np.ndarray:
        return np.asarray(x).astype(np.float32)


class _Torch:
    """The same operations for torch tensors (imported only when a tensor comes in)."""

    @staticmethod
    def normalize(z: Any) -> Any:
        import torch.nn.functional as F

        return F.normalize(z, dim=1, eps=EPS)

    @staticmethod
    def sq_dist_matrix(a: Any, b: Any) -> Any:
        import torch

        return torch.cdist(a, b).pow(2)

    @staticmethod
    def clip(x: Any, lo: float, hi: float) -> Any:
        return x.clamp(lo, hi)

    @staticmethod
    def exp(x: Any) -> Any:
        import torch

        return torch.exp(x)

    @staticmethod
    def as_float32(x: Any) -> Any:
        import torch

        return x.to(torch.float32)


def _backend(x: Any) -> type[_Numpy] | type[_Torch]:
    return _Torch if type(x).__module__.split(".")[0] == "torch" else _Numpy
