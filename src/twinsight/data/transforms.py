"""Per-image preprocessing shared by training, indexing and querying.

A model stores its :class:`Preprocessing` so that a query image of another
size or channel count is brought to what the encoder was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from twinsight.errors import TwinsightError

Normalize = Literal["minmax", "standardize", "none"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """What every image goes through before the encoder.

    ``normalize``: ``minmax`` scales each image to [0, 1] (seed 000);
    ``standardize`` subtracts ``mean`` and divides by ``std`` per channel
    (statistics of the training set); ``none`` leaves values as read.
    """

    size: tuple[int, int]
    channels: int
    normalize: Normalize = "minmax"
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            size=tuple(data["size"]),
            channels=int(data["channels"]),
            normalize=data.get("normalize", "minmax"),
            mean=tuple(data.get("mean", ())),
            std=tuple(data.get("std", ())),
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return preprocess(images, self)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float32 images [N, C, H, W] to ``size`` (H, W), bilinear, antialiased."""
    n, c, h, w = images.shape
    if (h, w) == tuple(size):
        return images
    out = np.empty((n, c, size[0], size[1]), dtype=np.float32)
    for i in range(n):
        for j in range(c):
            img = Image.fromarray(np.ascontiguousarray(images[i, j], dtype=np.float32), mode="F")
            out[i, j] = np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return out


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Bring images [N, C, H, W] to 1 channel (the mean) or 3 (a gray image repeated)."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 1:
        return images.mean(axis=1, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(images, channels, axis=1)
    raise TwinsightError(
        f"cannot turn {have}-channel images into {channels} channels "
        "(only 1 -> 3 by repetition, or any -> 1 by the channel mean)"
    )


def minmax_per_image(images: np.ndarray) -> np.ndarray:
    """Scale each image (all its channels together) to [0, 1]; constant images become 0."""
    flat = images.reshape(len(images), -1)
    lo = flat.min(axis=1)
    span = flat.max(axis=1) - lo
    span[span == 0] = 1.0
    shape = (-1,) + (1,) * (images.ndim - 1)
    return ((images - lo.reshape(shape)) / span.reshape(shape)).astype(np.float32)


#: An image with more than this fraction of NaN/inf pixels is refused, not masked.
MAX_NON_FINITE = 0.5
_masked_before = False  # the first masking of a process is a warning, later ones debug


def mask_non_finite(images: np.ndarray) -> np.ndarray:
    """Replace a few NaN/inf pixels (FITS blanking) by each image's finite minimum, logged.

    An image that is entirely or mostly non-finite carries no picture to match and is
    refused: matching it would give a confident answer about nothing.
    """
    bad = ~np.isfinite(images)
    per_image = bad.reshape(len(images), -1).mean(axis=1)
    worst = int(np.argmax(per_image))
    if per_image[worst] > MAX_NON_FINITE:
        raise TwinsightError(
            f"image {worst} of {len(images)} is {per_image[worst]:.0%} NaN/inf pixels; "
            "there is nothing to compare: check the file or its blank/mask values"
        )
    out = images.copy()
    for i in np.flatnonzero(per_image > 0):
        finite = out[i][np.isfinite(out[i])]
        out[i][bad[i]] = finite.min() if finite.size else 0.0
    global _masked_before
    level = logging.DEBUG if _masked_before else logging.WARNING  # a training: once, not per batch
    _masked_before = True
    log.log(
        level,
        "masked %d NaN/inf pixels in %d of %d images (set to each image's finite minimum)",
        int(bad.sum()), int((per_image > 0).sum()), len(images),
    )  # fmt: skip
    return out


def preprocess(images: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Bring images [N, C, H, W] (or one [C, H, W] / [H, W]) to the model's input."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None, None]
    elif images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise TwinsightError(f"expected images [N, C, H, W], got shape {images.shape}")
    if not np.isfinite(images).all():
        images = mask_non_finite(images)
    images = convert_channels(images, spec.channels)
    images = resize_images(images, tuple(spec.size))
    if spec.normalize == "minmax":
        images = minmax_per_image(images)
    elif spec.normalize == "standardize":
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
        images = (images - mean) / std
    elif spec.normalize != "none":
        raise TwinsightError(
            f"unknown normalization '{spec.normalize}'; expected minmax, standardize or none"
        )
    return np.ascontiguousarray(images, dtype=np.float32)
