"""What every reader shares: file-name extensions, option checks, the resize/channel adapter.

Kept apart from the format files so that each of them imports only this and
the registry, never another format (except the image-file decoding, which the
folder and table readers both use).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from twinsight.data.collection import Collection
from twinsight.data.transforms import convert_channels, resize_images
from twinsight.errors import TwinsightError

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")
TABLE_EXTENSIONS = (".csv", ".parquet", ".pq")

#: ``N`` (square) or ``(H, W)``; None keeps the native size.
ImageSize = int | tuple[int, int] | Sequence[int] | None


def check_image_size(image_size: ImageSize) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)`` (None stays None); a bad value raises naming it."""
    if image_size is None:
        return None
    if isinstance(image_size, int | np.integer):
        size = (int(image_size), int(image_size))
    else:
        values = list(image_size)
        if len(values) != 2:
            raise TwinsightError(f"image_size must be N or (height, width), got {image_size!r}")
        size = (int(values[0]), int(values[1]))
    if min(size) < 1:
        raise TwinsightError(f"image_size must be positive, got {image_size!r}")
    return size


def check_channels(channels: int | None) -> int | None:
    """``channels`` when it is None, 1 or 3; anything else raises."""
    if channels is not None and channels not in (1, 3):
        raise TwinsightError(f"channels must be 1 or 3, got {channels!r}")
    return channels


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_fits_name(name: str) -> bool:
    """True when a file name ends in a FITS extension (any case)."""
    return name.lower().endswith(FITS_EXTENSIONS)


def is_image_name(name: str) -> bool:
    """True when a file name ends in an image extension PIL or astropy reads (any case)."""
    return name.lower().endswith(PIL_EXTENSIONS + FITS_EXTENSIONS)


def is_hdf5_file(path: Path) -> bool:
    """HDF5 by extension, or by content unless the extension says FITS.

    The packed and seed readers both take such files: a ``.png`` that is really
    HDF5 goes to them, as it always has.
    """
    if path.name.lower().endswith(HDF5_EXTENSIONS):
        return True
    return not is_fits_name(path.name) and h5py.is_hdf5(path)


class AdaptedLoader:
    """Wraps a collection's loader with a channel conversion and/or a resize."""

    def __init__(self, base: Collection, size: tuple[int, int] | None, channels: int | None):
        self.base = base
        self.size = size
        self.channels = channels

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        images = self.base.images(rows)
        if self.channels is not None:
            images = convert_channels(images, self.channels)
        if self.size is not None:
            images = resize_images(images, self.size)
        return images


def adapt_collection(
    collection: Collection, size: tuple[int, int] | None, channels: int | None
) -> Collection:
    """The same collection with images resized to ``size`` and/or ``channels`` converted.

    Returns ``collection`` itself when it already has that shape, so applying
    it to a reader's result that honoured the options costs nothing.
    """
    c, h, w = collection.image_shape
    new_c = channels if channels is not None else c
    new_hw = tuple(size) if size is not None else (h, w)
    if (new_c, *new_hw) == (c, h, w):
        return collection
    # The new collection's rows are positions in ``collection`` (a subset works too).
    return Collection(
        collection.items,
        AdaptedLoader(collection, size if new_hw != (h, w) else None, channels),
        (new_c, *new_hw),
        name=collection.name,
        param_columns=collection.param_columns,
        meta={**collection.meta, "image_size": list(new_hw), "native_shape": [c, h, w]},
    )


class FixedLoader:
    """Loads rows of images already in memory (a one-file collection)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(rows, dtype=np.int64)]
