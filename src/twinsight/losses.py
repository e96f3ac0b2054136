"""Losses on the whole batch at once: ``loss(S, T, mask) -> scalar``.

One forward pass per image gives the B x B cosine-similarity matrix ``S`` (in
[-1, 1]); the targets give the B x B matrix ``T`` (in [0, 1]: 1 for same class
or system, or the similarity of physical parameters); ``mask`` (bool) marks
the pairs that count (off-diagonal, no padding). Every loss of the seeds is
written on that footing, so every one of the B(B-1)/2 pairs of a batch is
learned from.

Names (see :func:`list_losses`):

- ``contrastive`` (seed 000): ``d = (1 - S) / 2``,
  ``L = 1/2 T d^2 + 1/2 (1 - T) max(m - d, 0)^2``. With the default margin m = 1 the
  loss of a pair is smallest exactly where ``(S + 1) / 2 = T``, so predicted
  similarities are calibrated to the targets.
- ``contrastive-euclid`` (seed 002): Euclidean distance of unit vectors
  ``d = sqrt(2 - 2S)``, binary targets ``y = T >= 0.5``,
  ``L = y d^2 + (1 - y) max(0, m^2 - d^2)``.
- ``bce`` (seed 003): logits ``a S + b`` with learned ``scale`` a and ``bias`` b,
  binary cross-entropy with logits against T; by default positives and negatives
  weigh equally (seed 003 trained on balanced pairs; a batch of 10 classes holds
  about 9 negatives per positive). The learned a, b calibrate scores later.
- ``triplet`` (seed 004): ``max(0, D_ap - D_an + m)`` on squared Euclidean distances
  of unit vectors ``D = 2 - 2S``, over the triplets of the batch with
  ``T_ap > T_an + delta`` (so it works for class and parameter targets);
  ``mining="all"`` (batch-all, averaged over the active triplets) or ``"hard"``
  (the hardest triplet per anchor).
- ``mse``: ``((S + 1) / 2 - T)^2``, natural for parameter targets.
- ``multi-similarity`` (pytorch-metric-learning's, computed on S) and ``ntxent``
  (NT-Xent, written here on S with the same value as pytorch-metric-learning's).
  They need class labels, which are derived from T as the groups connected by
  ``T >= 0.5``; they are for class targets (T of 0s and 1s) only and refuse
  continuous targets.

All losses average over the masked pairs and compute in float32.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twinsight.errors import TwinsightError
from twinsight.registry import Registry

Factory = Callable[..., nn.Module]

#: name -> loss class or factory; filled by :func:`register_loss` (the only mutable state).
_LOSSES: Registry[Factory] = Registry("loss")


def register_loss(name: str, *, replace: bool = False) -> Callable[[Factory], Factory]:
    """Decorator: register a loss class (or factory) under ``name`` for :func:`create_loss`.

    Its keyword arguments are the loss's options (checked by ``create_loss``); its module
    computes ``loss(S, T, mask) -> scalar``. A taken name is refused unless ``replace``.
    """

    def decorate(factory: Factory) -> Factory:
        return _LOSSES.add(name, factory, replace=replace)

    return decorate


def unregister_loss(name: str) -> Factory:
    """Remove loss ``name`` from the registry and return it."""
    return _LOSSES.remove(name)


def _checked(S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None) -> tuple:
    """Validate shapes and return (S, T, mask) as float32, float32, bool."""
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise TwinsightError(f"loss: S must be a square [B, B] matrix, got {tuple(S.shape)}")
    if T.shape != S.shape:
        raise TwinsightError(f"loss: T has shape {tuple(T.shape)}, S has {tuple(S.shape)}")
    if mask is None:
        mask = ~torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
    elif mask.shape != S.shape:
        raise TwinsightError(f"loss: mask has shape {tuple(mask.shape)}, S has {tuple(S.shape)}")
    return S.float(), T.to(device=S.device, dtype=torch.float32), mask.to(S.device).bool()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; 0 (still differentiable) when the mask is empty."""
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp(min=1)


def _check_margin(name: str, margin: float) -> float:
    if not float(margin) > 0:
        raise TwinsightError(f"loss '{name}': margin must be > 0, got {margin}")
    return float(margin)


class PairLoss(nn.Module):
    """Base class: subclasses implement ``pair_losses(S, T) -> [B, B]`` averaged over mask."""

    name = "pair"

    def forward(
        self, S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        S, T, mask = _checked(S, T, mask)
        return _masked_mean(self.pair_losses(S, T), mask)

    def pair_losses(self, S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_loss("contrastive")
class ContrastiveLoss(PairLoss):
    """Seed 000's continuous contrastive loss on d = (1 - S) / 2 (see module docstring)."""

    name = "contrastive"

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_margin(self.name, margin)

    def pair_losses(self, S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        d = (1.0 - S) / 2.0
        return 0.5 * T * d**2 + 0.5 * (1.0 - T) * torch.clamp(self.margin - d, min=0.0) ** 2


@register_loss("contrastive-euclid")
class EuclideanContrastiveLoss(PairLoss):
    """Seed 002's contrastive loss: y d^2 + (1 - y) max(0, m^2 - d^2), d Euclidean."""

    name = "contrastive-euclid"

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_margin(self.name, margin)

    def pair_losses(self, S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        d2 = torch.clamp(2.0 - 2.0 * S, min=0.0)  # squared distance of unit vectors
        y = (T >= 0.5).float()
        return y * d2 + (1.0 - y) * torch.clamp(self.margin**2 - d2, min=0.0)


@register_loss("mse")
class MSELoss(PairLoss):
    """Regress (S + 1) / 2 onto T."""

    name = "mse"

    def pair_losses(self, S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        return ((S + 1.0) / 2.0 - T) ** 2


@register_loss("bce")
class BCELoss(nn.Module):
    """Seed 003's loss: BCE with logits ``scale * S + bias`` against T (learned scale, bias).

    ``balance=True`` gives positives (weights T) and negatives (weights 1 - T) half of
    the loss each; ``balance=False`` is the plain mean over pairs.
    """

    name = "bce"

    def __init__(self, scale: float = 10.0, bias: float = -5.0, balance: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))
        self.balance = bool(balance)

    def forward(
        self, S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        S, T, mask = _checked(S, T, mask)
        logits = self.scale * S + self.bias
        if not self.balance:
            return _masked_mean(
                F.binary_cross_entropy_with_logits(logits, T, reduction="none"), mask
            )
        m = mask.float()
        pos = F.softplus(-logits)  # -log sigmoid(z)
        neg = F.softplus(logits)  # -log (1 - sigmoid(z))
        wp, wn = T * m, (1.0 - T) * m
        loss_pos = (wp * pos).sum() / wp.sum().clamp(min=1e-12)
        loss_neg = (wn * neg).sum() / wn.sum().clamp(min=1e-12)
        has_pos, has_neg = wp.sum() > 0, wn.sum() > 0
        if has_pos and has_neg:
            return 0.5 * (loss_pos + loss_neg)
        return loss_pos if has_pos else loss_neg

    def calibration(self) -> dict[str, float]:
        """The learned score -> probability map: p = sigmoid(scale * S + bias)."""
        return {"scale": float(self.scale.detach()), "bias": float(self.bias.detach())}


@register_loss("triplet")
class TripletLoss(nn.Module):
    """Seed 004's triplet margin loss on squared Euclidean distances of unit vectors.

    A triplet (a, p, n) counts when ``mask[a, p]``, ``mask[a, n]`` and
    ``T[a, p] > T[a, n] + delta``. ``mining="all"`` averages the loss over the
    triplets that still violate the margin (batch-all; averaging over all of them would
    let the many easy ones drown the signal); ``"hard"`` keeps, per anchor, the hardest
    triplet (batch-hard). The B^3 triplet search runs without autograd, in chunks of
    anchors, so memory stays bounded and B = 256 costs milliseconds.
    """

    name = "triplet"

    def __init__(self, margin: float = 0.2, mining: str = "all", delta: float = 0.1) -> None:
        super().__init__()
        if mining not in ("all", "hard"):
            raise TwinsightError(f"loss 'triplet': mining must be 'all' or 'hard', got {mining!r}")
        if float(delta) < 0:
            raise TwinsightError(f"loss 'triplet': delta must be >= 0, got {delta}")
        self.margin = _check_margin(self.name, margin)
        self.mining = mining
        self.delta = float(delta)

    def forward(
        self, S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        S, T, mask = _checked(S, T, mask)
        D = torch.clamp(2.0 - 2.0 * S, min=0.0)
        if self.mining == "hard":
            anchors, pos, neg = _hardest_triplets(D.detach(), T, mask, self.delta)
            gaps = D[anchors, pos] - D[anchors, neg] + self.margin
            return torch.clamp(gaps, min=0.0).mean() if len(anchors) else D.sum() * 0.0
        # The loss is linear in D on the active triplets, so it is the sum of D_ap weighted
        # by how many active triplets use (a, p), minus the same for (a, n): the B^3
        # search runs without autograd, in chunks, and the gradient is exact.
        uses_ap, uses_an = _active_triplet_counts(D.detach(), T, mask, self.delta, self.margin)
        total = uses_ap.sum()
        value = (uses_ap * D).sum() - (uses_an * D).sum() + self.margin * total
        return value / total.clamp(min=1.0)


def _anchor_chunks(n: int, budget: int = 1 << 24) -> list[slice]:
    step = max(1, budget // max(1, n * n))
    return [slice(a, min(a + step, n)) for a in range(0, n, step)]


@torch.no_grad()
def _triplet_gaps(
    D: torch.Tensor, T: torch.Tensor, mask: torch.Tensor, delta: float, margin: float, rows: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """For anchors ``rows``: valid [c, p, n] (T_ap > T_an + delta, both in mask) and gaps."""
    m, t, d = mask[rows], T[rows], D[rows]
    valid = m.unsqueeze(2) & m.unsqueeze(1) & (t.unsqueeze(2) > t.unsqueeze(1) + delta)
    gaps = d.unsqueeze(2) - d.unsqueeze(1) + margin  # D_ap - D_an + m
    return valid, gaps


@torch.no_grad()
def _active_triplet_counts(
    D: torch.Tensor, T: torch.Tensor, mask: torch.Tensor, delta: float, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many margin-violating valid triplets use each (a, p) and each (a, n)."""
    uses_ap, uses_an = torch.zeros_like(D), torch.zeros_like(D)
    for rows in _anchor_chunks(len(D)):
        valid, gaps = _triplet_gaps(D, T, mask, delta, margin, rows)
        active = (valid & (gaps > 0)).float()
        uses_ap[rows] = active.sum(dim=2)
        uses_an[rows] = active.sum(dim=1)
    return uses_ap, uses_an


@torch.no_grad()
def _hardest_triplets(
    D: torch.Tensor, T: torch.Tensor, mask: torch.Tensor, delta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor with any valid triplet, the (p, n) with the largest D_ap - D_an."""
    n = len(D)
    best = torch.full((n,), -1, dtype=torch.long, device=D.device)
    for rows in _anchor_chunks(n):
        valid, gaps = _triplet_gaps(D, T, mask, delta, 0.0, rows)
        gaps = torch.where(valid, gaps, torch.full_like(gaps, -torch.inf)).flatten(1)
        flat = gaps.argmax(dim=1)
        best[rows] = torch.where(valid.flatten(1).any(dim=1), flat, -1)
    anchors = torch.nonzero(best >= 0, as_tuple=True)[0]
    flat = best[anchors]
    return anchors, flat // n, flat % n


def _labels_from_targets(T: torch.Tensor, mask: torch.Tensor, loss_name: str) -> torch.Tensor:
    """Class labels [B] from binary targets: the groups connected by T >= 0.5 within mask."""
    values = T[mask]
    between = values[(values > 1e-6) & (values < 1 - 1e-6)]
    if between.numel():
        raise TwinsightError(
            f"loss '{loss_name}' needs class targets (T of 0s and 1s: same class or not), "
            f"but got continuous targets (e.g. {float(between[0]):.3f}); "
            f"for parameter targets use contrastive, mse, bce or triplet"
        )
    n = T.shape[0]
    adjacency = ((T >= 0.5) & mask) | torch.eye(n, dtype=torch.bool, device=T.device)
    adjacency = adjacency | adjacency.T
    labels = torch.arange(n, device=T.device)
    for _ in range(n):
        spread = torch.where(
            adjacency, labels.unsqueeze(0), torch.full_like(adjacency, n, dtype=labels.dtype)
        )
        new = spread.min(dim=1).values
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _pair_indices(labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """pytorch-metric-learning's (a1, p, a2, n) pair tuple, restricted to ``mask``."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    a1, p = torch.nonzero(same & mask, as_tuple=True)
    a2, n = torch.nonzero(~same & mask, as_tuple=True)
    return a1, p, a2, n


class PMLLoss(nn.Module):
    """A pytorch-metric-learning loss computed on the precomputed similarity matrix S.

    The loss receives S in place of the embeddings, with a distance that returns its
    input unchanged, and the pairs of ``mask`` with labels derived from T.
    """

    def __init__(self, name: str, loss: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.loss = loss

    def forward(
        self, S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        S, T, mask = _checked(S, T, mask)
        keep = mask.any(dim=0) | mask.any(dim=1)  # drop padded items: pml averages per item
        if not bool(keep.all()):
            S, T, mask = S[keep][:, keep], T[keep][:, keep], mask[keep][:, keep]
        labels = _labels_from_targets(T.detach(), mask, self.name)
        pairs = _pair_indices(labels, mask)
        out = self.loss(S, labels, indices_tuple=pairs)
        if not isinstance(out, torch.Tensor):
            return S.sum() * 0.0
        return out


def _precomputed_distance() -> nn.Module:
    from pytorch_metric_learning.distances import CosineSimilarity

    class PrecomputedSimilarity(CosineSimilarity):
        """A 'distance' whose input already is the cosine-similarity matrix."""

        def forward(self, query_emb: torch.Tensor, ref_emb: torch.Tensor | None = None):
            return query_emb

    return PrecomputedSimilarity()


@register_loss("multi-similarity")
def _multi_similarity(alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> PMLLoss:
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    loss = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base, distance=_precomputed_distance())
    return PMLLoss("multi-similarity", loss)


@register_loss("ntxent")
class NTXentLoss(nn.Module):
    """NT-Xent (normalized temperature-scaled cross-entropy) on S, for class targets.

    For each positive pair (a, p): ``-log(e^{S_ap/t} / (e^{S_ap/t} + sum_n e^{S_an/t}))``
    over the negatives n of anchor a, averaged over positive pairs: the same value as
    pytorch-metric-learning's ``NTXentLoss``, computed in O(B^2) (the library's
    pair-based version builds a positives x negatives matrix: seconds at B = 256).
    """

    name = "ntxent"

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if not float(temperature) > 0:
            raise TwinsightError(f"loss 'ntxent': temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(
        self, S: torch.Tensor, T: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        S, T, mask = _checked(S, T, mask)
        labels = _labels_from_targets(T.detach(), mask, self.name)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        pos, neg = same & mask, ~same & mask
        if not bool(pos.any()) or not bool(neg.any()):
            return S.sum() * 0.0
        logits = S / self.temperature
        neg_lse = torch.logsumexp(logits.masked_fill(~neg, -torch.inf), dim=1, keepdim=True)
        per_pair = torch.logaddexp(logits, neg_lse) - logits
        return _masked_mean(per_pair, pos)


def list_losses() -> list[str]:
    """The registered loss names."""
    return _LOSSES.names()


def loss_options(name: str) -> dict[str, Any]:
    """The options of loss ``name`` and their defaults."""
    params = inspect.signature(_LOSSES.get(name)).parameters
    return {k: p.default for k, p in params.items()}


def create_loss(name: str, **cfg: Any) -> nn.Module:
    """Build loss ``name`` (see :func:`list_losses`) with its options.

    The module's forward is ``loss(S, T, mask) -> scalar``; unknown names or options
    raise :class:`TwinsightError` listing the valid ones.
    """
    options = loss_options(name)
    unknown = sorted(set(cfg) - set(options))
    if unknown:
        allowed = ", ".join(options) or "none"
        raise TwinsightError(
            f"loss '{name}' has no option(s) {unknown}; its options are: {allowed}"
        )
    return _LOSSES.get(name)(**cfg)
