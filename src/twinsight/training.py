"""Siamese training on every pair of a batch, with Lightning.

Each image of a batch goes through the encoder once; the B x B matrix of
cosine similarities ``S = E E^T`` (embeddings are unit-norm) is compared with
the B x B target matrix ``T`` (class equality, or the similarity of normalized
physical parameters) over all B(B-1)/2 off-diagonal pairs. That is the
seeds' Siamese network and loss, B times more pairs per forward pass.

:func:`fit` does the whole job: targets and train/validation split, parameter
normalization fitted on the training split, in-memory fast path, samplers,
AdamW with a cosine or plateau schedule, early stopping, best and last
checkpoints (resumable, refused under another configuration), and returns a
:class:`~twinsight.models.bundle.ModelBundle` plus the per-epoch metrics.
Everything that can be checked before training is checked before any file is
written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from twinsight import __version__
from twinsight.config import TrainConfig, config_differences, config_hash, hashed_part
from twinsight.data.collection import Collection
from twinsight.data.params import ParameterNormalizer
from twinsight.data.sampling import MPerClassSampler, MPerSystemSampler, RandomBatchSampler
from twinsight.data.transforms import Preprocessing, preprocess
from twinsight.errors import TwinsightError
from twinsight.losses import create_loss
from twinsight.models.bundle import ModelBundle
from twinsight.models.encoders import create_encoder

log = logging.getLogger(__name__)

VAL_SPLITS = ("val", "validation")
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"


# -- targets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    """What a pair's target similarity is: ``labels`` or ``params`` (columns, kernel)."""

    kind: str
    columns: tuple[str, ...] = ()
    log10: tuple[str, ...] = ()
    kernel: str = "cosine"
    width: float = 1.0


def resolve_targets(config: TrainConfig, collection: Collection) -> TargetSpec:
    """Pick labels or parameters as targets, checking the collection has them."""
    data = config.data
    kind = data.targets
    if kind == "auto":
        if data.params or (collection.has_params and not collection.has_labels):
            kind = "params"
        elif collection.has_labels:
            kind = "labels"
        else:
            raise TwinsightError(
                f"collection '{collection.name}' has neither a 'label' column nor parameter "
                "columns, so there is nothing to learn similarity from; add labels (a folder "
                "per class or a 'label' column) or parameter columns"
            )
    if kind == "labels":
        if not collection.has_labels:
            raise TwinsightError(
                f"--targets labels: collection '{collection.name}' has no 'label' column"
                + (
                    f" (it has parameters {collection.param_columns}: use --targets params)"
                    if collection.has_params
                    else ""
                )
            )
        return TargetSpec("labels")
    columns = tuple(data.params or collection.param_columns)
    if not columns:
        raise TwinsightError(
            f"--targets params: collection '{collection.name}' has no parameter columns; "
            "name them with --params a,b,c"
        )
    log10 = [] if data.log10 == "auto" else list(data.log10)
    missing = [c for c in (*columns, *log10) if c not in collection.items.columns]
    if missing:
        raise TwinsightError(
            f"parameter column(s) {missing} are not in collection '{collection.name}'; "
            f"available parameters: {collection.param_columns}"
        )
    if data.log10 == "auto":
        log10 = _auto_log10(collection, columns)
    stray = [c for c in log10 if c not in columns]
    if stray:
        raise TwinsightError(f"--log10 names {stray}, which are not among --params {list(columns)}")
    return TargetSpec("params", columns, tuple(log10), data.kernel, float(data.width))


def _auto_log10(collection: Collection, columns: Sequence[str]) -> list[str]:
    """Parameters to normalize in log10: all values positive and max/min >= 20.

    Physical parameters such as accretion rate or luminosity are spread over orders of
    magnitude; z-scored raw values would let a few extreme systems dominate the targets.
    """
    chosen = []
    for column in columns:
        values = pd.to_numeric(collection.items[column], errors="coerce").to_numpy(float)
        values = values[np.isfinite(values)]
        if len(values) and values.min() > 0 and values.max() / values.min() >= 20:
            chosen.append(column)
    return chosen


def target_matrix(y: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
    """The B x B target similarities in [0, 1] of a batch (labels [B] or normalized params [B, P]).

    Same formula as :func:`twinsight.data.params.parameter_similarity`, in torch:
    ``cosine`` -> (cos(z_i, z_j) + 1) / 2 (seed 000);
    ``rbf`` -> exp(-|z_i - z_j|^2 / (2 w^2 P)), P the number of parameters.
    """
    if spec.kind == "labels":
        return (y[:, None] == y[None, :]).to(torch.float32)
    z = y.to(torch.float32)
    if spec.kernel == "cosine":
        zn = F.normalize(z, dim=1, eps=1e-12)
        return ((zn @ zn.T).clamp(-1, 1) + 1) / 2
    d2 = torch.cdist(z, z).pow(2)
    return torch.exp(-d2 / (2 * spec.width**2 * z.shape[1]))


# -- splitting ------------------------------------------------------------------------------------
def split_train_val(collection: Collection, config: TrainConfig) -> tuple[Collection, Collection]:
    """Training and validation collections.

    A ``split`` column is respected: ``train`` rows train, ``val``/``validation`` rows
    validate (other splits, e.g. ``test``, are left out). Without a validation split it is
    carved from the training rows: by system when there is a ``system`` column (never one
    system on both sides), stratified by class for labels, at random otherwise.
    """
    pool = collection
    if "split" in collection.items.columns:
        split = collection.items["split"].astype(str).str.lower().to_numpy()
        val_mask = np.isin(split, VAL_SPLITS)
        train_mask = split == "train"
        if not train_mask.any():
            raise TwinsightError(
                f"collection '{collection.name}' has a 'split' column without 'train' rows "
                f"(splits: {collection.splits}); mark the training rows split=train"
            )
        if val_mask.any():
            return collection.subset(train_mask), collection.subset(val_mask)
        pool = collection.subset(train_mask)
    train_idx, val_idx = _carve_validation(pool, config)
    return pool.subset(train_idx), pool.subset(val_idx)


def _carve_validation(pool: Collection, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(config.trainer.seed)
    frac = config.data.val_fraction
    n = len(pool)
    if n < 4:
        raise TwinsightError(
            f"collection '{pool.name}' has only {n} training images; at least 4 are needed"
        )
    if pool.has_systems:
        groups = pool.items["system"].astype(str).to_numpy()
        names = np.unique(groups)
        if len(names) < 2:
            raise TwinsightError(
                f"collection '{pool.name}' has a single system; the validation set is made of "
                "held-out systems, so at least 2 are needed"
            )
        # at least 2 held-out systems when possible: pairs within one system all have target 1
        n_val = min(len(names) - 1, max(2 if len(names) >= 4 else 1, round(frac * len(names))))
        val_names = rng.choice(names, size=n_val, replace=False)
        val_mask = np.isin(groups, val_names)
    elif pool.has_labels and config.data.targets != "params":
        labels = pool.items["label"].astype(str).to_numpy()
        val_mask = np.zeros(n, dtype=bool)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            # 2 per class when the class can spare them, so every query has a true neighbour
            k = max(2 if len(members) >= 6 else 1, int(round(frac * len(members))))
            if len(members) >= 2:
                val_mask[rng.choice(members, size=k, replace=False)] = True
    else:
        val_mask = np.zeros(n, dtype=bool)
        val_mask[rng.choice(n, size=max(1, round(frac * n)), replace=False)] = True
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


# -- data -----------------------------------------------------------------------------------------
def _identity(batch: Any) -> Any:
    return batch


class BatchDataset(torch.utils.data.Dataset):
    """Images (preprocessed) and per-image targets, fetched a whole batch at a time.

    In memory when ``images`` is given (the fast path for small sets); otherwise each
    batch is read from the collection and preprocessed on the fly (use workers).
    """

    def __init__(
        self,
        collection: Collection,
        y: np.ndarray,
        preprocessing: Preprocessing,
        images: torch.Tensor | None = None,
    ) -> None:
        self.collection = collection
        self.y = torch.from_numpy(np.ascontiguousarray(y))
        self.preprocessing = preprocessing
        self.images = images

    def __len__(self) -> int:
        return len(self.collection)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            x = self.images[torch.from_numpy(idx)]
        else:
            x = torch.from_numpy(preprocess(self.collection.images(idx), self.preprocessing))
        return x, self.y[torch.from_numpy(idx)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])


def _sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]


def random_affine(x: torch.Tensor, rotate: float, shift: float, scale: float) -> torch.Tensor:
    """Random rotation (degrees), shift (image fraction) and zoom of each image of a batch."""
    b = x.shape[0]
    dev = x.device
    angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(rotate)
    zoom = 1 + (torch.rand(b, device=dev) * 2 - 1) * scale
    offset = (torch.rand(b, 2, device=dev) * 2 - 1) * (2 * shift)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_telescope(x: torch.Tensor, max_beam: float, min_snr: float) -> torch.Tensor:
    """Half of the images seen as a telescope would: a Gaussian beam and noise.

    Each chosen image is blurred with a beam of FWHM uniform in [0, ``max_beam``] pixels and
    gets Gaussian noise of sigma = peak / SNR, SNR log-uniform in [``min_snr``, 10 min_snr];
    then it is min-max scaled again, as the model's preprocessing does for a query.
    """
    b, c, h, w = x.shape
    dev = x.device
    chosen = torch.rand(b, device=dev) < 0.5
    if not bool(chosen.any()):
        return x
    sigma = torch.rand(b, device=dev) * max_beam / 2.3548  # FWHM -> sigma
    radius = max(1, math.ceil(3 * max_beam / 2.3548))
    offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, K], separable
    flat = x.reshape(1, b * c, h, w)
    k = kernel.repeat_interleave(c, 0)
    pad = (radius, radius, radius, radius)
    blurred = F.conv2d(F.pad(flat, pad, mode="reflect" if radius < min(h, w) else "replicate"),
                       k[:, None, None, :], groups=b * c)  # fmt: skip
    blurred = F.conv2d(blurred, k[:, None, :, None], groups=b * c).reshape(b, c, h, w)
    snr = min_snr * 10 ** torch.rand(b, device=dev)
    peak = blurred.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    noisy = blurred + torch.randn_like(blurred) * peak / snr.view(b, 1, 1, 1)
    lo = noisy.amin(dim=(1, 2, 3), keepdim=True)
    span = (noisy.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp(min=1e-6)
    seen = (noisy - lo) / span
    return torch.where(chosen.view(b, 1, 1, 1), seen, x)


# -- metrics --------------------------------------------------------------------------------------
def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, k_max: int = 1000) -> dict:
    """Precision@1 and MAP@R of leave-one-out retrieval (pytorch-metric-learning).

    ``k`` is bounded by ``k_max``: with classes larger than that MAP@R is computed on the
    first ``k_max`` neighbours only.
    """
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    codes = pd.factorize(pd.Series(labels).astype(str))[0]
    k = int(min(k_max, np.bincount(codes).max()))
    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"),
        k=max(1, k),
        device=torch.device("cpu"),
    )
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    out = calc.get_accuracy(emb, torch.as_tensor(codes))
    return {
        "p_at_1": float(out["precision_at_1"]),
        "map_at_r": float(out["mean_average_precision_at_r"]),
    }


def pair_spearman(
    embeddings: torch.Tensor, y: torch.Tensor, spec: TargetSpec, max_pairs: int, seed: int = 0
) -> float:
    """Spearman correlation of predicted (cosine) and target similarity over sampled pairs."""
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


def pair_targets(ya: torch.Tensor, yb: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
    """Target similarity of the pairs (ya[k], yb[k]), elementwise (see :func:`target_matrix`)."""
    if spec.kind == "labels":
        return (ya == yb).to(torch.float32)
    za, zb = ya.to(torch.float32), yb.to(torch.float32)
    if spec.kernel == "cosine":
        cos = F.cosine_similarity(za, zb, dim=1, eps=1e-12)
        return (cos.clamp(-1, 1) + 1) / 2
    return torch.exp(-(za - zb).pow(2).sum(1) / (2 * spec.width**2 * za.shape[1]))


# -- the Lightning module -------------------------------------------------------------------------
NAN_MESSAGE = (
    "the training loss became {value} at epoch {epoch}, step {step}; likely causes: a learning "
    "rate too high (try --lr {lr_hint:g}), NaN or infinite values in the images or parameters "
    "(check the data with `twinsight info`), or a loss margin/temperature out of range"
)


class SiameseModule(pl.LightningModule):
    """One encoder, every pair of a batch: loss(S = E E^T, T = targets, off-diagonal mask).

    Hyperparameters are plain values only (the configuration as a dict, its hash, the
    encoder config, the target spec), so checkpoints load with ``weights_only=True``.
    """

    def __init__(
        self,
        config: dict,
        config_hash: str,
        encoder_config: dict,
        targets: dict,
        data_fingerprint: str,
        loss_name: str,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        cfg = TrainConfig.model_validate(config | {"runtime": {}})
        self.cfg = cfg
        self.spec = TargetSpec(
            targets["kind"],
            tuple(targets.get("columns", ())),
            tuple(targets.get("log10", ())),
            targets.get("kernel", "cosine"),
            float(targets.get("width", 1.0)),
        )
        enc = dict(encoder_config)
        name = enc.pop("name", cfg.encoder.name)
        self.encoder = create_encoder(name, weights=cfg.encoder.weights, **enc)
        self.loss_fn = create_loss(loss_name, **cfg.loss.options)
        self.augment = _augment_choice(cfg, self.spec.kind)
        self.history: list[dict[str, float]] = []
        self._loss_sum = 0.0
        self._loss_n = 0
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def pair_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Embed each image once; the loss over all B(B-1)/2 pairs of the batch."""
        emb = self.encoder(x)
        sim = emb @ emb.T
        target = target_matrix(y, self.spec).to(sim.dtype)
        mask = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        return self.loss_fn(sim.float(), target.float(), mask)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        d = self.cfg.data
        if self.augment == "affine":
            x = random_affine(x, d.rotate, d.shift, d.scale)
        elif self.augment == "telescope":
            x = random_telescope(x, d.beam, d.snr)
        loss = self.pair_loss(x, y)
        if not torch.isfinite(loss):
            raise TwinsightError(
                NAN_MESSAGE.format(
                    value=float(loss),
                    epoch=self.current_epoch,
                    step=self.global_step,
                    lr_hint=self.cfg.optim.lr / 10,
                )
            )
        self._loss_sum += float(loss.detach())
        self._loss_n += 1
        self.log("train_loss", loss, prog_bar=True, batch_size=len(x))
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0
        batches = getattr(self, "train_batches", None)
        if batches is not None:  # the epoch's batches depend only on (seed, epoch): resumable
            batches.set_epoch(self.current_epoch)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        emb = self.encoder(x)
        self._val.append((emb.detach().float().cpu(), y.detach().cpu()))

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if not self._val or self.trainer.sanity_checking:
            self._val = []
            return
        emb = torch.cat([e for e, _ in self._val])
        y = torch.cat([t for _, t in self._val])
        self._val = []
        metrics = self.validation_metrics(emb, y)
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key == "val_score", sync_dist=False)
        row = {
            "epoch": int(self.current_epoch),
            "train_loss": self._loss_sum / max(1, self._loss_n),
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            **{k: float(v) for k, v in metrics.items()},
        }
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def validation_metrics(self, emb: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """P@1 and MAP@R (labels) or Spearman of pair similarities (params), plus val_score."""
        if self.spec.kind == "labels":
            m = retrieval_metrics(emb.numpy(), y.numpy())
            return {
                "val_p_at_1": m["p_at_1"],
                "val_map_at_r": m["map_at_r"],
                "val_score": m["map_at_r"],
            }
        rho = pair_spearman(
            emb, y, self.spec, self.cfg.trainer.max_val_pairs, self.cfg.trainer.seed
        )
        score = rho if np.isfinite(rho) else -1.0
        return {"val_spearman": rho, "val_score": score}

    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        if o.schedule == "none":
            return opt
        if o.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=0.3, patience=o.plateau_patience
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": "val_score", "interval": "epoch"},
            }
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.cfg.trainer.epochs))
        warm = min(total - 1, o.warmup_epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _WarmupCosine(warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["twinsight_history"] = [dict(r) for r in self.history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(r) for r in checkpoint.get("twinsight_history", [])]


class _WarmupCosine:
    """Learning-rate factor: linear warm-up, then cosine decay to 1 % (picklable)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def _augment_choice(cfg: TrainConfig, kind: str) -> str:
    if cfg.data.augment == "auto":
        return "affine" if kind == "labels" else "none"
    return cfg.data.augment


def _default_loss(config: TrainConfig, kind: str) -> str:
    if config.loss.name != "auto":
        return config.loss.name
    return "multi-similarity" if kind == "labels" else "mse"


# -- preparation: every check before any file is written -----------------------------------------
@dataclass
class Prepared:
    """Everything :func:`fit` needs, validated: data, targets, encoder spec, sampler."""

    config: TrainConfig
    spec: TargetSpec
    loss_name: str
    train: Collection
    val: Collection
    y_train: np.ndarray
    y_val: np.ndarray
    normalizer: Any
    preprocessing: Preprocessing
    encoder_name: str
    encoder_config: dict
    sampler: Any
    fingerprint: str

    @property
    def targets_dict(self) -> dict[str, Any]:
        if self.spec.kind == "labels":
            return {"kind": "labels"}
        return {
            "kind": "params",
            "columns": list(self.spec.columns),
            "log10": list(self.spec.log10),
            "normalizer": self.normalizer.to_dict(),
            "kernel": self.spec.kernel,
            "width": self.spec.width,
        }


def data_fingerprint(collection: Collection) -> str:
    """A short hash of a collection's identity: size, image shape and item keys."""
    h = hashlib.sha256()
    h.update(f"{len(collection)}|{collection.image_shape}|".encode())
    h.update("\n".join(collection.items["key"].astype(str)).encode())
    return h.hexdigest()[:16]


def prepare(config: TrainConfig, collection: Collection, val: Collection | None = None) -> Prepared:
    """Validate a run against its data and build its parts (no files are touched)."""
    spec = resolve_targets(config, collection)
    if val is None:
        train, val = split_train_val(collection, config)
    else:
        train = collection
    if len(val) < 2 or len(train) < 2:
        raise TwinsightError(
            f"collection '{collection.name}': {len(train)} training and {len(val)} validation "
            "images; both need at least 2 (use more data or another --val-fraction)"
        )
    y_train, y_val, normalizer = _target_arrays(spec, train, val, config)
    encoder, preprocessing = _build_encoder(config, train)
    loss_name = _default_loss(config, spec.kind)
    create_loss(loss_name, **config.loss.options)  # unknown name or bad options: fail now
    sampler = _build_sampler(config, spec, train)
    enc_config = dict(getattr(encoder, "config", {}))
    return Prepared(
        config=config,
        spec=spec,
        loss_name=loss_name,
        train=train,
        val=val,
        y_train=y_train,
        y_val=y_val,
        normalizer=normalizer,
        preprocessing=preprocessing,
        encoder_name=str(getattr(encoder, "name", config.encoder.name)),
        encoder_config=enc_config,
        sampler=sampler,
        fingerprint=data_fingerprint(train) + data_fingerprint(val)[:8],
    )


def _target_arrays(
    spec: TargetSpec, train: Collection, val: Collection, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, Any]:
    if spec.kind == "labels":
        labels = pd.concat([train.items["label"], val.items["label"]]).astype(str)
        codes = pd.factorize(labels)[0].astype(np.int64)
        return codes[: len(train)], codes[len(train) :], None
    normalizer = ParameterNormalizer.fit(
        train.items, list(spec.columns), log10=spec.log10, method=config.data.param_norm
    )
    y_train = np.asarray(normalizer.transform(train.items), dtype=np.float32)
    y_val = np.asarray(normalizer.transform(val.items), dtype=np.float32)
    for name, y in (("training", y_train), ("validation", y_val)):
        bad = ~np.isfinite(y).all(axis=0)
        if bad.any():
            cols = [c for c, b in zip(spec.columns, bad, strict=True) if b]
            raise TwinsightError(
                f"parameter column(s) {cols} have NaN/infinite (or non-positive under --log10) "
                f"values in the {name} rows of '{train.name}'; fix or drop those rows"
            )
    return y_train, y_val, normalizer


def _build_encoder(config: TrainConfig, train: Collection) -> tuple[nn.Module, Preprocessing]:
    c, h, w = train.image_shape
    channels = config.data.channels or c
    size = (config.data.image_size,) * 2 if config.data.image_size else (h, w)
    enc = config.encoder
    encoder = create_encoder(
        enc.name,
        embedding_dim=enc.embedding_dim,
        in_channels=channels,
        input_size=tuple(size),
        weights=enc.weights,
        **enc.options,
    )
    _check_input_size(encoder, enc.name, channels, size)
    prep = encoder.default_preprocessing()
    prep = dataclasses.replace(prep, size=tuple(size), channels=channels)
    if config.data.normalize:
        prep = dataclasses.replace(prep, normalize=config.data.normalize)
    if prep.normalize == "standardize" and not prep.mean:
        prep = _fit_standardize(prep, train)
    return encoder, prep


def _check_input_size(encoder: nn.Module, name: str, channels: int, size: Sequence[int]) -> None:
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(2, channels, *size))
    except RuntimeError as exc:
        raise TwinsightError(
            f"images of {size[0]}x{size[1]} pixels are too small for encoder '{name}' "
            f"({str(exc).splitlines()[0]}); resize them with --image-size (e.g. 64) or choose "
            "an encoder with less pooling (small-cnn)"
        ) from None
    finally:
        encoder.train(was_training)
    if out.ndim != 2 or out.shape[0] != 2:
        raise TwinsightError(f"encoder '{name}' returned shape {tuple(out.shape)}, expected [B, d]")


def _fit_standardize(prep: Preprocessing, train: Collection, n: int = 4096) -> Preprocessing:
    base = dataclasses.replace(prep, normalize="none")
    idx = np.linspace(0, len(train) - 1, min(n, len(train))).astype(np.int64)
    x = preprocess(train.images(idx), base)
    mean = tuple(float(v) for v in x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-8) for v in x.std(axis=(0, 2, 3)))
    return dataclasses.replace(prep, mean=mean, std=std)


def _build_sampler(
    config: TrainConfig,
    spec: TargetSpec,
    train: Collection,
    rank: int = 0,
    world: int = 1,
) -> Any:
    """The training batch sampler (m-per-class, m-per-system or random) for one rank."""
    kind = config.sampler.kind
    batch, seed = config.trainer.batch_size, config.trainer.seed
    if kind == "auto":
        if spec.kind == "labels":
            kind = "m-per-class"
        elif train.has_systems:
            kind = "m-per-system"
        else:
            kind = "random"
    replicas = {"rank": rank, "num_replicas": world}
    if kind == "random":
        return RandomBatchSampler(len(train), min(batch, len(train)), seed, True, **replicas)
    if kind == "m-per-class" and spec.kind != "labels":
        raise TwinsightError("--sampler m-per-class needs class labels (--targets labels)")
    if kind == "m-per-class":
        groups = train.items["label"].astype(str).to_numpy()
        cls = MPerClassSampler
    else:
        if not train.has_systems:
            raise TwinsightError(
                f"--sampler m-per-system: collection '{train.name}' has no 'system' column"
            )
        groups = train.items["system"].astype(str).to_numpy()
        cls = MPerSystemSampler
    m = config.sampler.m or _auto_m(groups, batch, 2 if kind == "m-per-class" else 4)
    return cls(groups, m, batch, seed, **replicas)


def _auto_m(groups: np.ndarray, batch: int, smallest: int) -> int:
    """The smallest m >= ``smallest`` dividing the batch with enough groups of >= m items."""
    counts = pd.Series(groups).value_counts().to_numpy()
    for m in range(smallest, batch + 1):
        if batch % m == 0 and batch // m <= len(counts) and m <= counts.min():
            return m
    for m in range(2, batch + 1):  # fall back to smaller m when groups are small
        if batch % m == 0 and batch // m <= len(counts) and m <= counts.min():
            return m
    return smallest  # the sampler explains what does not fit


# -- fitting --------------------------------------------------------------------------------------
def fit(
    config: TrainConfig,
    collection: Collection,
    *,
    val: Collection | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    prepared: Prepared | None = None,
) -> tuple[ModelBundle, dict[str, Any]]:
    """Train a Siamese encoder on ``collection``; returns the best model and the metrics.

    ``val`` is the validation collection (split off ``collection`` when None). Checkpoints
    (``best.ckpt``, ``last.ckpt``) and logs go to ``work_dir`` (a temporary folder when None);
    ``resume`` continues from ``work_dir/checkpoints/last.ckpt`` after checking that it was
    made under the same configuration and data.
    """
    prep = prepared or prepare(config, collection, val)
    with tempfile.TemporaryDirectory(prefix="twinsight-train-") as scratch:
        work = Path(work_dir) if work_dir is not None else Path(scratch)
        return _fit_prepared(prep, work, resume, callbacks)


def _fit_prepared(
    prep: Prepared, work: Path, resume: bool, callbacks: Sequence[pl.Callback]
) -> tuple[ModelBundle, dict[str, Any]]:
    cfg = prep.config
    ckpt_dir = work / "checkpoints"
    hparams = {
        "config": hashed_part(cfg),
        "config_hash": config_hash(cfg),
        "encoder_config": {"name": prep.encoder_name, **prep.encoder_config},
        "targets": {k: v for k, v in prep.targets_dict.items() if k != "normalizer"},
        "data_fingerprint": prep.fingerprint,
        "loss_name": prep.loss_name,
    }
    ckpt_path = check_resume(ckpt_dir / LAST_CHECKPOINT, hparams) if resume else None
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    module = SiameseModule(**hparams)
    trainer, checkpoint = _build_trainer(cfg, work, callbacks, len(prep.sampler))
    train_loader, val_loader = _loaders(prep, trainer)
    module.train_batches = train_loader.batch_sampler
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best_path and best_path.is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    return _finish(prep, module, trainer, seconds, best_path)


def check_resume(path: Path, hparams: dict[str, Any]) -> Path:
    """The checkpoint to resume from, refused when made under another configuration or data."""
    if not path.is_file():
        raise TwinsightError(
            f"--resume: there is no checkpoint '{path}' to continue from; start without --resume"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise TwinsightError(
            f"--resume: checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); it may "
            "be truncated or not a twinsight checkpoint; start over with --overwrite"
        ) from None
    old = ckpt.get("hyper_parameters", {})
    if old.get("config_hash") != hparams["config_hash"]:
        diffs = config_differences(old.get("config", {}), hparams["config"])
        raise TwinsightError(
            f"--resume: checkpoint '{path}' was made with another configuration ("
            + "; ".join(diffs[:12] or ["unknown differences"])
            + "); resume with the same options, or start over with --overwrite"
        )
    if old.get("data_fingerprint") != hparams["data_fingerprint"]:
        raise TwinsightError(
            f"--resume: checkpoint '{path}' was trained on other data (or another train/"
            "validation split); resume with the same data, or start over with --overwrite"
        )
    return path


def _devices(value: str) -> Any:
    value = str(value).strip()
    if value.isdigit() or (value.startswith("-") and value[1:].isdigit()):
        return int(value)
    return value


def _build_trainer(
    cfg: TrainConfig, work: Path, callbacks: Sequence[pl.Callback], n_batches: int
) -> tuple[pl.Trainer, pl.callbacks.ModelCheckpoint]:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    rt = cfg.runtime
    gpu = rt.accelerator in ("gpu", "cuda") or (
        rt.accelerator == "auto" and torch.cuda.is_available()
    )
    precision = rt.precision if rt.precision != "auto" else ("16-mixed" if gpu else "32-true")
    checkpoint = ModelCheckpoint(
        dirpath=work / "checkpoints",
        filename="best",
        monitor="val_score",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # Lightning 2.6 writes save_last only when the best improves; resuming needs the latest
    # epoch, so a second callback without a monitor rewrites last.ckpt after every epoch.
    last = ModelCheckpoint(
        dirpath=work / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    cbs: list[pl.Callback] = [checkpoint, last, *callbacks]
    if cfg.trainer.early_stopping > 0:
        cbs.append(
            EarlyStopping(
                "val_score", mode="max", patience=cfg.trainer.early_stopping, check_finite=False
            )
        )
    if rt.progress:
        cbs.append(RichProgressBar(leave=False, console_kwargs={"stderr": True}))
    loggers = [
        CSVLogger(work, name="", version="logs"),
        TensorBoardLogger(work, name="", version="tensorboard", default_hp_metric=False),
    ]
    trainer = pl.Trainer(
        max_epochs=cfg.trainer.epochs,
        accelerator=rt.accelerator,
        devices=_devices(rt.devices),
        strategy=rt.strategy,
        num_nodes=rt.num_nodes,
        precision=precision,
        deterministic=bool(rt.deterministic and not gpu),
        callbacks=cbs,
        logger=loggers,
        enable_progress_bar=rt.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=max(1, min(50, n_batches)),
        default_root_dir=work,
    )
    return trainer, checkpoint


def _loaders(prep: Prepared, trainer: pl.Trainer) -> tuple[Any, Any]:
    cfg = prep.config
    limit = cfg.runtime.in_memory_gb * 1e9
    c = prep.preprocessing.channels
    h, w = prep.preprocessing.size
    in_memory = (len(prep.train) + len(prep.val)) * c * h * w * 4 <= limit
    datasets = []
    for coll, y in ((prep.train, prep.y_train), (prep.val, prep.y_val)):
        images = None
        if in_memory:
            chunks = [preprocess(x, prep.preprocessing) for _, x in coll.iter_batches(1024)]
            images = torch.from_numpy(np.concatenate(chunks))
        datasets.append(BatchDataset(coll, y, prep.preprocessing, images))
    workers = 0 if in_memory else cfg.runtime.num_workers
    extra = {"persistent_workers": True} if workers else {}
    batches = _build_sampler(cfg, prep.spec, prep.train, trainer.global_rank, trainer.world_size)
    train_loader = torch.utils.data.DataLoader(
        datasets[0], batch_sampler=batches, collate_fn=_identity, num_workers=workers, **extra
    )
    val_loader = torch.utils.data.DataLoader(
        datasets[1],
        batch_sampler=_sequential_batches(len(prep.val), cfg.trainer.batch_size * 2),
        collate_fn=_identity,
        num_workers=workers,
        **extra,
    )
    log.info(
        "training on %d images, validating on %d (%s)",
        len(prep.train),
        len(prep.val),
        "in memory" if in_memory else f"streamed, {workers} workers",
    )
    return train_loader, val_loader


def _finish(
    prep: Prepared,
    module: SiameseModule,
    trainer: pl.Trainer,
    seconds: float,
    best_path: Path | None,
) -> tuple[ModelBundle, dict[str, Any]]:
    encoder = module.encoder.cpu().eval()
    emb, y = _embed_validation(encoder, prep)
    final = module.validation_metrics(emb, y)
    history = sorted(module.history, key=lambda r: r["epoch"])
    best = max(history, key=lambda r: r.get("val_score", -1.0)) if history else {}
    metrics = {
        "history": history,
        "best_epoch": best.get("epoch"),
        "epochs_run": int(trainer.current_epoch),
        "stopped_early": bool(trainer.current_epoch < prep.config.trainer.epochs),
        "train_seconds": round(seconds, 2),
        "train_images": len(prep.train),
        "val_images": len(prep.val),
        "final": {k: float(v) for k, v in final.items()},
        "best_checkpoint": str(best_path) if best_path else None,
    }
    bundle = ModelBundle(
        encoder=encoder,
        encoder_name=prep.encoder_name,
        encoder_config=prep.encoder_config,
        preprocessing=prep.preprocessing,
        targets=prep.targets_dict,
        calibration=_calibration(module, emb, y, prep.spec),
        matching=None,
        training={
            "config": prep.config.model_dump(mode="json"),
            "config_hash": config_hash(prep.config),
            "data_fingerprint": prep.fingerprint,
            "loss": prep.loss_name,
            "metrics": metrics["final"],
            "best_epoch": metrics["best_epoch"],
            "twinsight_version": __version__,
        },
    )
    return bundle, metrics


@torch.inference_mode()
def _embed_validation(encoder: nn.Module, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for _, x in prep.val.iter_batches(512):
        out.append(encoder(torch.from_numpy(preprocess(x, prep.preprocessing))).float())
    return torch.cat(out), torch.from_numpy(prep.y_val)


def _calibration(
    module: SiameseModule, emb: torch.Tensor, y: torch.Tensor, spec: TargetSpec
) -> dict[str, float] | None:
    """Score -> probability of "same": the bce loss's learned a, b, else a logistic fit."""
    if spec.kind != "labels":
        return None
    loss = module.loss_fn
    if hasattr(loss, "scale") and hasattr(loss, "bias"):
        a, b = (
            float(torch.as_tensor(loss.scale).reshape(-1)[0]),
            float(torch.as_tensor(loss.bias).reshape(-1)[0]),
        )
    else:
        a, b = _logistic_fit(emb, y)
    threshold = -b / a if a != 0 else 0.5
    return {"scale": a, "bias": b, "threshold": float(threshold)}


def _logistic_fit(
    emb: torch.Tensor, y: torch.Tensor, max_pairs: int = 50_000
) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    n = len(emb)
    gen = torch.Generator().manual_seed(0)
    i = torch.randint(0, n, (max_pairs,), generator=gen)
    j = torch.randint(0, n, (max_pairs,), generator=gen)
    keep = i != j
    i, j = i[keep], j[keep]
    s = (emb[i] * emb[j]).sum(1).numpy().reshape(-1, 1)
    same = (y[i] == y[j]).numpy()
    if same.all() or not same.any():
        return 10.0, -5.0
    model = LogisticRegression(class_weight="balanced").fit(s, same)
    return float(model.coef_[0, 0]), float(model.intercept_[0])
