"""Image files (PIL formats and FITS) as a lazily loaded collection.

Not a reader of its own: the folder readers and the table reader list image
files and hand them here. Opening probes headers only (size, channels);
pixels are decoded on demand, one batch at a time.

Policies: 8-bit images are divided by 255, 16-bit ones by 65535, float images
(TIFF mode ``F``, FITS) are kept as they are; grayscale stays 1 channel,
RGB/RGBA/palette become 3, and a collection mixing both is 3-channel; all
images must share one size unless ``image_size`` resizes them.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from twinsight.data.collection import Collection
from twinsight.data.readers.common import first_line, is_fits_name
from twinsight.data.readers.fits import fits_image_shape, read_fits_array
from twinsight.data.transforms import convert_channels, resize_images
from twinsight.errors import TwinsightError

_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}


def set_max_pixels(n: int) -> None:
    """Raise (or lower) the largest image read before it is refused as a decompression bomb.

    Process-wide (Pillow's ``Image.MAX_IMAGE_PIXELS``), so only the command line's
    ``--max-pixels`` sets it.
    """
    if int(n) < 1:
        raise TwinsightError(f"--max-pixels must be at least 1, got {n}")
    Image.MAX_IMAGE_PIXELS = int(n)


def _bomb_error(path: Path, exc: Exception) -> TwinsightError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
    return TwinsightError(
        f"image '{path}' has {pixels}, more than the limit of {Image.MAX_IMAGE_PIXELS:,} "
        "(a possible decompression bomb); if the file is trusted, raise the limit with "
        "`twinsight --max-pixels N ...`"
    )


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` that refuses decompression bombs, Pillow's warning range included."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path, exc) from None
    with im:
        yield im


@dataclass(frozen=True)
class ImageHeader:
    """What opening an image file tells without decoding it."""

    height: int
    width: int
    channels: int


def probe_image(path: Path, hdu: int | str | None = None) -> ImageHeader:
    """Size and channel count of an image file, read from its header only."""
    if is_fits_name(path.name):
        shape = fits_image_shape(path, hdu)
        channels = 1 if len(shape) == 2 else shape[0]
        return ImageHeader(shape[-2], shape[-1], channels)
    try:
        with _open_image(path) as im:
            width, height = im.size
            mode = im.mode
    except TwinsightError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile file may make PIL raise anything
        raise TwinsightError(
            f"cannot read image '{path}' ({first_line(exc)}); expected a valid PNG, JPEG, "
            "TIFF, BMP, GIF, WebP or FITS file: replace or remove it"
        ) from None
    return ImageHeader(height, width, 1 if _is_gray(mode) else 3)


def _is_gray(mode: str) -> bool:
    return mode in _GRAY_MODES or mode.startswith("I;16")


def _pil_to_array(im: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded PIL image as float32 [C, H, W] in its natural scale.

    8-bit images are resized to ``size`` by PIL before the float conversion
    (much faster for photographs); other modes are returned at native size.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return (np.asarray(im, dtype=np.float32) / np.float32(65535.0))[None]
    if mode == "F":
        return np.asarray(im, dtype=np.float32)[None]
    im = im.convert("L" if mode in ("1", "L", "LA", "La") else "RGB")
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def read_image_file(
    path: Path, hdu: int | str | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode one image file to float32 [C, H, W]; a broken file raises naming it.

    With ``size`` set, JPEGs decode at a reduced scale (still >= ``size``) and
    8-bit images come back resized; others are resized by the caller.
    """
    if is_fits_name(path.name):
        return read_fits_array(path, hdu)
    try:
        with _open_image(path) as im:
            if size is not None and im.format == "JPEG":
                im.draft(im.mode, (size[1], size[0]))
            im.load()
            return _pil_to_array(im, size)
    except TwinsightError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile file may make PIL raise anything
        raise TwinsightError(
            f"cannot decode image '{path}' ({first_line(exc)}); the file may be truncated "
            "or corrupt: replace or remove it"
        ) from None


class ImageFileLoader:
    """Loads image files on demand, converting channels and resizing (picklable)."""

    def __init__(
        self,
        paths: Sequence[str],
        channels: int,
        native_size: tuple[int, int],
        size: tuple[int, int] | None,
        hdu: int | str | None = None,
    ) -> None:
        self.paths = list(paths)
        self.channels = channels
        self.native_size = native_size
        self.size = size
        self.hdu = hdu

    def load_one(self, row: int) -> np.ndarray:
        path = Path(self.paths[row])
        arr = read_image_file(path, self.hdu, self.size)[None]
        if self.size is None and tuple(arr.shape[2:]) != self.native_size:
            raise TwinsightError(
                f"image '{path}' is {arr.shape[3]}x{arr.shape[2]} but the collection's images "
                f"are {self.native_size[1]}x{self.native_size[0]} (width x height); "
                "pass image_size (--image-size) to resize them all"
            )
        arr = convert_channels(arr, self.channels)
        if self.size is not None:
            arr = resize_images(arr, self.size)  # a no-op when already resized on decode
        return arr[0]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out_hw = self.size or self.native_size
        out = np.empty((len(rows), self.channels, *out_hw), dtype=np.float32)
        for i, row in enumerate(np.asarray(rows, dtype=np.int64)):
            out[i] = self.load_one(int(row))
        return out


def _common_header(
    paths: Sequence[Path], size: tuple[int, int] | None, hdu: int | str | None
) -> tuple[tuple[int, int], int]:
    """(H, W) shared by all files and the collection's channel count; mixed sizes raise."""
    first: tuple[Path, ImageHeader] | None = None
    channels = 1
    for path in paths:
        header = probe_image(path, hdu)
        if header.channels not in (1, 3):
            raise TwinsightError(
                f"image '{path}' has {header.channels} channels; expected 1 (grayscale) or 3"
            )
        channels = max(channels, header.channels)
        if first is None:
            first = (path, header)
        elif size is None and (header.height, header.width) != (first[1].height, first[1].width):
            a, ha = first
            raise TwinsightError(
                f"images have different sizes: '{a}' is {ha.width}x{ha.height} but '{path}' is "
                f"{header.width}x{header.height} (width x height); pass image_size "
                "(--image-size N) to resize every image to NxN when loaded"
            )
    assert first is not None
    return (first[1].height, first[1].width), channels


def read_image_files(
    paths: Sequence[Path],
    keys: Sequence[str],
    labels: Sequence[Any] | None,
    *,
    name: str,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    hdu: int | str | None = None,
    extra: pd.DataFrame | None = None,
    param_columns: Sequence[str] = (),
) -> Collection:
    """A collection over image files (headers probed now, pixels read on demand)."""
    if not paths:
        raise TwinsightError(f"'{name}' holds no images")
    native, found_channels = _common_header(paths, image_size, hdu)
    out_channels = channels or found_channels
    table: dict[str, Any] = {"key": list(keys)}
    if labels is not None:
        table["label"] = list(labels)
    table["source"] = [str(p) for p in paths]
    items = pd.DataFrame(table)
    if extra is not None:
        for column in extra.columns:
            if column not in items.columns:
                items[column] = extra[column].to_numpy()
    loader = ImageFileLoader([str(p) for p in paths], out_channels, native, image_size, hdu)
    return Collection(
        items,
        loader,
        (out_channels, *(image_size or native)),
        name=name,
        param_columns=param_columns,
        meta={"reader": "images", "native_size": list(native)},
    )
