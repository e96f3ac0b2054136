"""Everything a run needs, checked before any file is written: data, targets, encoder, sampler."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from twinsight.config import TrainConfig, apply_overrides
from twinsight.data.collection import Collection
from twinsight.data.targets import TargetSpec
from twinsight.data.transforms import Preprocessing, preprocess
from twinsight.errors import TwinsightError
from twinsight.losses import create_loss
from twinsight.models.encoders import create_encoder
from twinsight.training.data import build_sampler
from twinsight.training.splits import split_with_info, validation_shape
from twinsight.training.targets import resolve_targets, target_arrays

#: What torch says when an input is smaller than a kernel, a pooling window or a padding.
_TOO_SMALL = re.compile(
    r"kernel size can't be greater|output size is too small|smaller than kernel size"
    r"|padding size should be less than",
    re.IGNORECASE,
)


@dataclass
class Prepared:
    """Everything :func:`fit` needs, validated: data, targets, encoder, sampler."""

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
    validation: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def targets_dict(self) -> dict[str, Any]:
        """The targets as stored in the bundle (with the parameter normalization)."""
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


def prepare(
    config: TrainConfig,
    collection: Collection,
    val: Collection | None = None,
    validation: dict[str, Any] | None = None,
) -> Prepared:
    """Validate a run against its data and build its parts (no files are touched).

    ``validation`` describes a given ``val`` (from :func:`split_with_info`); it goes into
    ``metrics.json``.
    """
    spec = resolve_targets(config, collection)
    if val is None:
        train, val, shape = split_with_info(collection, config)
    else:
        train = collection
        shape = validation or validation_shape(val, "given validation collection")
    if len(val) < 2 or len(train) < 2:
        raise TwinsightError(
            f"collection '{collection.name}': {len(train)} training and {len(val)} validation "
            "images; both need at least 2 (use more data or another --val-fraction)"
        )
    y_train, y_val, normalizer = target_arrays(spec, train, val, config)
    encoder, preprocessing = build_encoder(config, train)
    loss_name = default_loss(config, spec.kind)
    create_loss(loss_name, **config.loss.options)  # unknown name or bad options: fail now
    sampler = build_sampler(config, spec, train)
    if config.trainer.epochs is None:
        config = apply_overrides(config, {"trainer.epochs": planned_epochs(len(sampler))})
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
        encoder_config=dict(getattr(encoder, "config", {})),
        sampler=sampler,
        fingerprint=data_fingerprint(train) + data_fingerprint(val)[:8],
        validation=shape,
    )


#: The default training length, in optimizer steps, and its bounds in epochs.
PLANNED_STEPS = 1200
MIN_EPOCHS, MAX_EPOCHS = 5, 30


def planned_epochs(steps_per_epoch: int) -> int:
    """Epochs for about :data:`PLANNED_STEPS` optimizer steps, within 5 to 30.

    Why steps and not a fixed epoch count: what a model learns depends on how many updates
    it gets; 30 epochs of a 1,000-system library are 1,800 steps and more than 20 minutes
    on two cores, with no gain in recovery over 1,200 (BENCHMARKS.md, "Default training").
    The cosine schedule is planned over this length.
    """
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(PLANNED_STEPS / max(1, steps_per_epoch)))))


def default_loss(config: TrainConfig, kind: str) -> str:
    """``--loss``, or for ``auto`` multi-similarity for labels and mse for parameters."""
    if config.loss.name != "auto":
        return config.loss.name
    return "multi-similarity" if kind == "labels" else "mse"


def build_encoder(config: TrainConfig, train: Collection) -> tuple[nn.Module, Preprocessing]:
    """The encoder and its preprocessing for the training images (probed with a test batch)."""
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
    check_input_size(encoder, enc.name, channels, size)
    prep = encoder.default_preprocessing()
    prep = dataclasses.replace(prep, size=tuple(size), channels=channels)
    if config.data.normalize:
        prep = dataclasses.replace(prep, normalize=config.data.normalize)
    if prep.normalize == "standardize" and not prep.mean:
        prep = fit_standardize(prep, train)
    return encoder, prep


def check_input_size(encoder: nn.Module, name: str, channels: int, size: Sequence[int]) -> None:
    """Run the encoder on two blank images; refuse, with the reason, what it cannot take.

    Only torch's size complaints (a kernel, pooling window or padding larger than
    what is left of the image) are reported as images too small; any other
    failure keeps its own message and names the encoder.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(2, channels, *size))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _TOO_SMALL.search(str(exc)):
            raise TwinsightError(
                f"images of {size[0]}x{size[1]} pixels are too small for encoder '{name}' "
                f"({first}); resize them with --image-size (e.g. 64) or choose "
                "an encoder with less pooling (small-cnn)"
            ) from None
        raise TwinsightError(
            f"encoder '{name}' fails on a test batch of {channels}-channel {size[0]}x{size[1]} "
            f"images: {first}"
        ) from None
    finally:
        encoder.train(was_training)
    if out.ndim != 2 or out.shape[0] != 2:
        raise TwinsightError(f"encoder '{name}' returned shape {tuple(out.shape)}, expected [B, d]")


def fit_standardize(prep: Preprocessing, train: Collection, n: int = 4096) -> Preprocessing:
    """Per-channel mean and standard deviation of (up to ``n``) training images."""
    base = dataclasses.replace(prep, normalize="none")
    idx = np.linspace(0, len(train) - 1, min(n, len(train))).astype(np.int64)
    x = preprocess(train.images(idx), base)
    mean = tuple(float(v) for v in x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-8) for v in x.std(axis=(0, 2, 3)))
    return dataclasses.replace(prep, mean=mean, std=std)
