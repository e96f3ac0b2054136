"""Open any supported source as a :class:`~twinsight.data.collection.Collection`.

:func:`open_collection` looks at what ``source`` is and picks the reader:

- a built-in name (``digits``, ``mnist5k``, ``protostars``, ``mnist``,
  ``fashion-mnist``, ``cifar10``), see :mod:`twinsight.data.builtins`;
- a folder with one sub-folder per class (PNG, JPEG, TIFF, BMP, GIF, WebP,
  FITS), like torchvision's ImageFolder; a folder of images without
  sub-folders gives an unlabelled collection;
- a metadata table (``.csv``, ``.parquet``) with a ``path`` column;
- the seed-000 layout: a folder of per-system ``.h5`` files with datasets
  ``intensity_projection_1`` ... ``intensity_projection_K`` and scalar
  parameter datasets (a single such file works too);
- a packed HDF5 file written by ``twinsight pack`` (the fast path);
- a FITS file (one observation) or a single image file.

Opening reads metadata only (image headers, HDF5 attributes and scalars);
images are read on demand, in batches. Every bad input raises
:class:`~twinsight.errors.TwinsightError` naming the file, row or column.

Policies (documented in the README, "Data: what twinsight reads"):

- values: 8-bit images are divided by 255, 16-bit images by 65535, float
  images (TIFF mode ``F``, FITS, HDF5) are kept as they are;
- channels: grayscale stays 1 channel, RGB/RGBA/palette become 3; a collection
  mixing 1- and 3-channel images is 3-channel (gray repeated); ``channels``
  forces 1 (channel mean) or 3;
- sizes: all images of a collection must share one size, otherwise opening
  fails and names two files of different sizes; with ``image_size`` every
  image is resized (bilinear, antialiased) to that size when loaded.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from twinsight.data.builtins import BUILTIN_NAMES, is_builtin, load_builtin
from twinsight.data.collection import Collection
from twinsight.data.packed import is_packed, read_packed, write_packed
from twinsight.data.schema import RESERVED_COLUMNS, SIMULATOR_PARAMETERS
from twinsight.data.transforms import convert_channels, resize_images
from twinsight.errors import TwinsightError
from twinsight.fsutil import check_output_path
from twinsight.progress import track

logger = logging.getLogger(__name__)

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")
TABLE_EXTENSIONS = (".csv", ".parquet", ".pq")

#: Per-projection attributes of seed-layout intensity datasets kept as item columns.
PROJECTION_ATTRIBUTES = ("inclination", "position_angle")

_PROJECTION_RE = re.compile(r"^intensity_projection_(\d+)$")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}

ImageSize = int | tuple[int, int] | Sequence[int] | None


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------
def open_collection(
    source: str | Path | Collection,
    *,
    image_size: ImageSize = None,
    channels: int | None = None,
    hdu: int | str | None = None,
) -> Collection:
    """Open ``source`` (a path or a built-in name) as a streaming Collection.

    ``image_size`` (``N`` or ``(H, W)``) resizes every image when loaded;
    ``channels`` (1 or 3) converts the channel count; ``hdu`` (name or number)
    picks the FITS extension to read. See the module docstring for sources.
    """
    size = _check_image_size(image_size)
    channels = _check_channels(channels)
    if isinstance(source, Collection):
        return adapt_collection(source, size, channels)
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists() and is_builtin(text):
        return adapt_collection(load_builtin(text), size, channels)
    if not path.exists():
        raise TwinsightError(
            f"source '{text}' does not exist: expected a folder, a .csv/.parquet table, "
            f"an .h5 file, a FITS or image file, or a built-in name ({', '.join(BUILTIN_NAMES)})"
        )
    if path.is_dir():
        return _open_folder(path, size, channels, hdu)
    return _open_file(path, size, channels, hdu)


def _open_file(path: Path, size, channels, hdu) -> Collection:
    name = path.name.lower()
    if name.endswith(TABLE_EXTENSIONS):
        return read_table(path, image_size=size, channels=channels, hdu=hdu)
    is_fits = name.endswith(FITS_EXTENSIONS)
    if name.endswith(HDF5_EXTENSIONS) or (not is_fits and h5py.is_hdf5(path)):
        if is_packed(path):
            return adapt_collection(read_packed(path), size, channels)
        return read_seed_hdf5([path], name=str(path), image_size=size, channels=channels)
    if name.endswith(FITS_EXTENSIONS):
        return read_fits(path, hdu=hdu, image_size=size, channels=channels)
    if name.endswith(PIL_EXTENSIONS):
        return read_image_files(
            [path], [path.name], None, name=str(path), image_size=size, channels=channels
        )
    raise TwinsightError(
        f"cannot tell what '{path}' is from its extension '{path.suffix}': expected a table "
        f"({', '.join(TABLE_EXTENSIONS)}), HDF5 ({', '.join(HDF5_EXTENSIONS)}), FITS "
        f"({', '.join(FITS_EXTENSIONS)}) or an image ({', '.join(PIL_EXTENSIONS)})"
    )


def _open_folder(path: Path, size, channels, hdu) -> Collection:
    entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    if not entries:
        raise TwinsightError(
            f"folder '{path}' is empty: expected one sub-folder of images per class, "
            "per-system .h5 files (seed layout), or image files"
        )
    subdirs = [p for p in entries if p.is_dir()]
    h5_files = [p for p in entries if p.is_file() and p.name.lower().endswith(HDF5_EXTENSIONS)]
    images = [p for p in entries if p.is_file() and _is_image_name(p.name)]
    if h5_files and not subdirs and not images:
        return read_seed_hdf5(h5_files, name=str(path), image_size=size, channels=channels)
    if subdirs:
        return read_class_folder(path, image_size=size, channels=channels, hdu=hdu)
    if images:
        keys = [p.name for p in images]
        return read_image_files(
            images, keys, None, name=str(path), image_size=size, channels=channels, hdu=hdu
        )
    raise TwinsightError(
        f"folder '{path}' holds no images, sub-folders or .h5 files "
        f"(found e.g. '{entries[0].name}'); expected one sub-folder of images per class, "
        "per-system .h5 files, or image files"
    )


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(PIL_EXTENSIONS + FITS_EXTENSIONS)


def _check_image_size(image_size: ImageSize) -> tuple[int, int] | None:
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


def _check_channels(channels: int | None) -> int | None:
    if channels is not None and channels not in (1, 3):
        raise TwinsightError(f"channels must be 1 or 3, got {channels!r}")
    return channels


# ---------------------------------------------------------------------------------------------
# shared image conversions
# ---------------------------------------------------------------------------------------------
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
    """The same collection with images resized to ``size`` and/or ``channels`` converted."""
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


# ---------------------------------------------------------------------------------------------
# image files (PIL and FITS)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageHeader:
    """What opening an image file tells without decoding it."""

    height: int
    width: int
    channels: int


def _is_fits(path: Path) -> bool:
    return path.name.lower().endswith(FITS_EXTENSIONS)


def probe_image(path: Path, hdu: int | str | None = None) -> ImageHeader:
    """Size and channel count of an image file, read from its header only."""
    if _is_fits(path):
        shape = _fits_image_shape(path, hdu)
        channels = 1 if len(shape) == 2 else shape[0]
        return ImageHeader(shape[-2], shape[-1], channels)
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TwinsightError(
            f"cannot read image '{path}' ({_first_line(exc)}); expected a valid PNG, JPEG, "
            "TIFF, BMP, GIF, WebP or FITS file: replace or remove it"
        ) from None
    return ImageHeader(height, width, 1 if _is_gray(mode) else 3)


def _is_gray(mode: str) -> bool:
    return mode in _GRAY_MODES or mode.startswith("I;16")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    if _is_fits(path):
        return _read_fits_array(path, hdu)
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG":
                im.draft(im.mode, (size[1], size[0]))
            im.load()
            return _pil_to_array(im, size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise TwinsightError(
            f"cannot decode image '{path}' ({_first_line(exc)}); the file may be truncated "
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


def read_class_folder(
    root: str | Path,
    *,
    image_size: ImageSize = None,
    channels: int | None = None,
    hdu: int | str | None = None,
) -> Collection:
    """A folder with one sub-folder per class (ImageFolder style); label = sub-folder name."""
    root = Path(root)
    size = _check_image_size(image_size)
    classes = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    paths: list[Path] = []
    labels: list[str] = []
    for folder in classes:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and _is_image_name(path.name) and not _hidden(path, root):
                paths.append(path)
                labels.append(folder.name)
    if not paths:
        raise TwinsightError(
            f"folder '{root}' has sub-folders ({', '.join(p.name for p in classes[:5])}) but no "
            f"images in them; expected files ending in "
            f"{', '.join(PIL_EXTENSIONS + FITS_EXTENSIONS)}"
        )
    keys = [p.relative_to(root).as_posix() for p in paths]
    collection = read_image_files(
        paths, keys, labels, name=str(root), image_size=size, channels=channels, hdu=hdu
    )
    collection.meta["reader"] = "class-folder"
    return collection


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# ---------------------------------------------------------------------------------------------
# metadata tables (CSV / Parquet)
# ---------------------------------------------------------------------------------------------
def _read_table_file(path: Path) -> tuple[pd.DataFrame, bool]:
    """The raw table and whether it is a CSV (row numbers then count the header line)."""
    is_csv = path.name.lower().endswith(".csv")
    try:
        if is_csv:
            frame = pd.read_csv(path, skipinitialspace=True)
        else:
            frame = pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise TwinsightError(f"cannot read table '{path}' ({_first_line(exc)})") from None
    if frame.empty:
        raise TwinsightError(f"table '{path}' has no rows")
    return frame, is_csv


def _show(value: Any) -> str:
    """A cell value as the user would recognize it: strings quoted, numbers plain."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, str) else str(value)


def _row_name(index: int, is_csv: bool) -> str:
    """A row as the user sees it in the file: CSV line (header = line 1) or Parquet row."""
    return f"line {index + 2}" if is_csv else f"row {index + 1}"


def _parameter_columns(frame: pd.DataFrame, path: Path, is_csv: bool) -> list[str]:
    """Numeric non-reserved columns; a mostly-numeric column with bad values raises."""
    params = []
    for column in frame.columns:
        if column in RESERVED_COLUMNS:
            continue
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_numeric_dtype(values):
            numeric = values.astype(np.float64)
        else:
            numeric = pd.to_numeric(values, errors="coerce")
            if numeric.notna().sum() == 0:  # a text column (notes, file ids): not a parameter
                continue
        bad = ~np.isfinite(numeric.to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TwinsightError(
                f"table '{path}', column '{column}', {_row_name(i, is_csv)}: value "
                f"{_show(values.iloc[i])} is not a finite number; parameter columns must hold "
                "numbers (fix or drop the row, or rename the column if it is not a parameter)"
            )
        frame[column] = numeric.astype(np.float64)
        params.append(str(column))
    return params


def _resolve_paths(frame: pd.DataFrame, path: Path, is_csv: bool) -> list[Path]:
    if "path" not in frame.columns:
        raise TwinsightError(
            f"table '{path}' has no 'path' column (columns: {list(frame.columns)}); "
            "add one with each image's path, relative to the table's folder or absolute"
        )
    resolved = []
    for i, value in enumerate(frame["path"].tolist()):
        if not isinstance(value, str) or not value.strip():
            raise TwinsightError(
                f"table '{path}', column 'path', {_row_name(i, is_csv)}: {value!r} is not a path"
            )
        image = Path(value.strip()).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise TwinsightError(
                f"table '{path}', {_row_name(i, is_csv)}: image '{value}' does not exist "
                f"(looked for '{image}'); paths are relative to the table's folder"
            )
        resolved.append(image)
    return resolved


def _table_keys(frame: pd.DataFrame, path: Path, is_csv: bool) -> list[str]:
    keys = frame["key"].astype(str) if "key" in frame.columns else frame["path"].astype(str)
    duplicated = keys.duplicated(keep="first").to_numpy()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        first = int(np.flatnonzero((keys == keys.iloc[i]).to_numpy())[0])
        column = "key" if "key" in frame.columns else "path"
        raise TwinsightError(
            f"table '{path}', column '{column}': {_row_name(i, is_csv)} repeats "
            f"'{keys.iloc[i]}' of {_row_name(first, is_csv)}; every item needs a unique {column}"
        )
    return keys.tolist()


def read_table(
    path: str | Path,
    *,
    image_size: ImageSize = None,
    channels: int | None = None,
    hdu: int | str | None = None,
) -> Collection:
    """A CSV/Parquet table of image paths and parameters (see module docstring)."""
    path = Path(path)
    size = _check_image_size(image_size)
    frame, is_csv = _read_table_file(path)
    frame = frame.rename(columns=lambda c: str(c).strip())
    images = _resolve_paths(frame, path, is_csv)
    keys = _table_keys(frame, path, is_csv)
    params = _parameter_columns(frame, path, is_csv)
    extra = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        if column in ("key", "label", "path", "source"):
            continue
        extra[column] = frame[column]
    if "system" in extra.columns:
        extra["system"] = extra["system"].astype(str)
    if "split" in extra.columns:
        extra["split"] = extra["split"].astype(str)
    if "projection" in extra.columns:
        extra["projection"] = _integer_column(frame, "projection", path, is_csv)
    labels = frame["label"].tolist() if "label" in frame.columns else None
    collection = read_image_files(
        images,
        keys,
        labels,
        name=str(path),
        image_size=size,
        channels=channels,
        hdu=hdu,
        extra=extra,
        param_columns=params,
    )
    collection.items["path"] = frame["path"].astype(str).to_numpy()
    collection.meta["reader"] = "table"
    return collection


def _integer_column(frame: pd.DataFrame, column: str, path: Path, is_csv: bool) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TwinsightError(
            f"table '{path}', column '{column}', {_row_name(i, is_csv)}: "
            f"{_show(frame[column].iloc[i])} is not an integer"
        )
    return values.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# seed-000 HDF5 layout: one file per system
# ---------------------------------------------------------------------------------------------
@dataclass
class _SeedFile:
    projections: list[tuple[int, str, tuple[int, ...], dict[str, float]]]
    params: dict[str, float]
    units: dict[str, str]


def _scan_seed_file(path: Path) -> _SeedFile:
    """Read one per-system file's metadata: projection datasets, scalar parameters.

    Uses h5py's low-level API: opening 10,000 files through ``h5py.File`` and
    its attribute manager is several times slower, and scanning is the cost of
    opening a seed-layout folder.
    """
    try:
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY)
    except (OSError, ValueError) as exc:
        raise TwinsightError(
            f"cannot open HDF5 file '{path}' ({_first_line(exc)}); it may be truncated"
        ) from None
    projections, params = [], {}
    try:
        root = h5py.h5g.open(fid, b"/")
        for raw_name in root:
            obj = h5py.h5o.open(root, raw_name)
            if h5py.h5i.get_type(obj) != h5py.h5i.DATASET:
                continue
            name = raw_name.decode("utf-8", "replace")
            match = _PROJECTION_RE.match(name)
            if match:
                attrs = {a: _read_attr(obj, a) for a in PROJECTION_ATTRIBUTES}
                attrs = {a: v for a, v in attrs.items() if v is not None}
                projections.append((int(match.group(1)), name, obj.shape, attrs))
            elif _is_scalar_number(obj):
                value = _read_number(obj, dataset=True)
                if value is not None:
                    params[name] = value
    except (OSError, KeyError, ValueError) as exc:
        raise TwinsightError(
            f"cannot read the metadata of HDF5 file '{path}' ({_first_line(exc)}); "
            "it may be truncated"
        ) from None
    finally:
        fid.close()
    if not projections:
        raise TwinsightError(
            f"HDF5 file '{path}' has no 'intensity_projection_*' dataset; expected the seed "
            "layout (intensity_projection_1 ... _K and scalar parameter datasets) or a packed "
            "file from `twinsight pack`"
        )
    projections.sort(key=lambda p: p[0])
    return _SeedFile(projections, params, {})


def _is_scalar_number(obj: Any) -> bool:
    return obj.shape in ((), (1,)) and obj.dtype.kind in "iuf"


def _read_number(obj: Any, dataset: bool) -> float | None:
    """Read a one-element numeric dataset or attribute as float64 (None if not one).

    Reading straight into a native double avoids building a memory type per
    call, which costs ~10x the read itself.
    """
    out = np.empty((), dtype=np.float64)
    try:
        if dataset:
            obj.read(h5py.h5s.ALL, h5py.h5s.ALL, out, mtype=h5py.h5t.NATIVE_DOUBLE)
        else:
            obj.read(out, mtype=h5py.h5t.NATIVE_DOUBLE)
    except (TypeError, ValueError, OSError):
        return None
    return float(out)


def _read_attr(obj: Any, name: str) -> float | None:
    """A numeric attribute of a low-level HDF5 object, or None when absent or not a number."""
    try:
        attr = h5py.h5a.open(obj, name.encode())
    except KeyError:
        return None
    return _read_number(attr, dataset=False)


def _seed_units(path: Path, names: Sequence[str]) -> dict[str, str]:
    """The ``units`` (or ``unit``) attribute of each parameter dataset of one file."""
    units = {}
    with h5py.File(path, "r") as f:
        for name in names:
            unit = f[name].attrs.get("units", f[name].attrs.get("unit"))
            if unit is not None:
                units[name] = unit.decode() if isinstance(unit, bytes) else str(unit)
    return units


def _ordered_params(names: set[str]) -> list[str]:
    known = [p for p in SIMULATOR_PARAMETERS if p in names]
    return known + sorted(names - set(known))


class SeedLoader:
    """Reads projections from per-system files, opening each needed file once per batch."""

    def __init__(
        self,
        paths: Sequence[str],
        datasets: Sequence[str],
        native: tuple[int, int],
        size: tuple[int, int] | None,
        channels: int,
    ) -> None:
        self.paths = list(paths)
        self.datasets = list(datasets)
        self.native = native
        self.size = size
        self.channels = channels

    def _read(self, path: str, names: list[str]) -> list[np.ndarray]:
        """Read some projections of one file (low-level h5py: no per-call type setup)."""
        try:
            fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY)
        except (OSError, ValueError) as exc:
            raise TwinsightError(
                f"cannot open HDF5 file '{path}' ({_first_line(exc)}); "
                "it may be truncated or changed since it was opened"
            ) from None
        try:
            return [self._read_dataset(fid, path, name) for name in names]
        finally:
            fid.close()

    def _read_dataset(self, fid: Any, path: str, name: str) -> np.ndarray:
        try:
            dataset = h5py.h5d.open(fid, name.encode())
            shape = dataset.shape
            hw = _image_hw(shape, Path(path), name)
            if self.size is None and hw != self.native:
                raise TwinsightError(
                    f"'{path}' dataset '{name}' has shape {shape}, expected {self.native}; "
                    "pass image_size (--image-size) to resize all images"
                )
            out = np.empty(shape, dtype=np.float32)
            dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out, mtype=h5py.h5t.NATIVE_FLOAT)
        except TwinsightError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise TwinsightError(
                f"cannot read dataset '{name}' from '{path}' ({_first_line(exc)}); "
                "the file may be truncated or changed since it was opened"
            ) from None
        return out.reshape(hw)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out_hw = self.size or self.native
        out = np.empty((len(rows), self.channels, *out_hw), dtype=np.float32)
        by_file: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_file.setdefault(self.paths[row], []).append(i)
        for path, positions in by_file.items():
            arrays = self._read(path, [self.datasets[rows[i]] for i in positions])
            for i, arr in zip(positions, arrays, strict=True):
                img = arr[None, None]
                if self.size is not None:
                    img = resize_images(img, self.size)
                out[i] = convert_channels(img, self.channels)[0]
        return out


def _image_hw(shape: tuple[int, ...], path: Path, name: str) -> tuple[int, int]:
    squeezed = tuple(s for s in shape if s != 1) if len(shape) > 2 else shape
    if len(squeezed) != 2:
        raise TwinsightError(
            f"HDF5 file '{path}' dataset '{name}' has shape {shape}; expected a 2-D image"
        )
    return int(squeezed[0]), int(squeezed[1])


#: Folders with at least this many system files are scanned by a pool of processes.
PARALLEL_SCAN_MIN_FILES = 2000


def _scan_all(files: list[Path]) -> Iterator[tuple[Path, _SeedFile]]:
    """Scan files in order; large folders in forked worker processes (h5py holds the GIL)."""
    workers = min(os.cpu_count() or 1, 8)
    if (
        len(files) < PARALLEL_SCAN_MIN_FILES
        or workers < 2
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        for path in files:
            yield path, _scan_seed_file(path)
        return
    chunk = max(32, len(files) // (workers * 8))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        yield from zip(files, pool.map(_scan_seed_file, files, chunksize=chunk), strict=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_seed_hdf5(
    files: Sequence[str | Path],
    *,
    name: str,
    image_size: ImageSize = None,
    channels: int | None = None,
) -> Collection:
    """Per-system seed-000 files: each projection one item with its system's parameters."""
    size = _check_image_size(image_size)
    rows: list[dict[str, Any]] = []
    paths, datasets = [], []
    native: tuple[tuple[int, int], Path] | None = None
    param_names: set[str] | None = None
    first_file: Path | None = None
    files = [Path(f) for f in files]
    scans = track(
        _scan_all(files), total=len(files), description="scanning", enabled=len(files) > 500
    )
    for path, scanned in scans:
        names = set(scanned.params)
        if param_names is None:
            param_names, first_file = names, path
        elif names != param_names:
            missing = sorted(param_names - names) or sorted(names - param_names)
            raise TwinsightError(
                f"HDF5 file '{path}' has parameters {sorted(names)} but '{first_file}' has "
                f"{sorted(param_names)} (differ in {missing}); every system file needs the same "
                "scalar parameter datasets"
            )
        for pname, value in scanned.params.items():
            if not math.isfinite(value):
                raise TwinsightError(
                    f"HDF5 file '{path}', parameter dataset '{pname}': value {value} is not a "
                    "finite number"
                )
        for k, dname, shape, attrs in scanned.projections:
            hw = _image_hw(shape, path, dname)
            if native is None:
                native = (hw, path)
            elif size is None and hw != native[0]:
                raise TwinsightError(
                    f"images have different sizes: '{native[1]}' has {native[0][1]}x"
                    f"{native[0][0]} images but '{path}' dataset '{dname}' is {hw[1]}x{hw[0]} "
                    "(width x height); pass image_size (--image-size N) to resize them all"
                )
            rows.append(
                {
                    "key": f"{path.stem}/{k}",
                    "system": path.stem,
                    "projection": k,
                    "source": str(path),
                    **scanned.params,
                    **attrs,
                }
            )
            paths.append(str(path))
            datasets.append(dname)
    if native is None:
        raise TwinsightError(f"'{name}' holds no HDF5 files")
    params = _ordered_params(param_names or set())
    units = _seed_units(first_file, params) if first_file is not None else {}
    items = pd.DataFrame(rows)
    extra = [c for c in items.columns if c not in (*RESERVED_COLUMNS, *params)]
    items = items[["key", "system", "projection", "source", *params, *extra]]
    out_channels = channels or 1
    loader = SeedLoader(paths, datasets, native[0], size, out_channels)
    return Collection(
        items,
        loader,
        (out_channels, *(size or native[0])),
        name=name,
        param_columns=params,
        meta={"reader": "seed-hdf5", "units": units, "native_size": list(native[0])},
    )


# ---------------------------------------------------------------------------------------------
# FITS observations
# ---------------------------------------------------------------------------------------------
def _fits_open(path: Path):
    from astropy.io import fits

    try:
        return fits.open(path, memmap=False, lazy_load_hdus=False)
    except (OSError, ValueError, TypeError) as exc:
        raise TwinsightError(
            f"cannot read FITS file '{path}' ({_first_line(exc)}); it may be truncated or not FITS"
        ) from None


def _hdu_summary(hdul) -> str:
    parts = []
    for i, h in enumerate(hdul):
        shape = tuple(h.header.get(f"NAXIS{j}", 0) for j in range(h.header.get("NAXIS", 0), 0, -1))
        parts.append(f"{i}: {h.name or '?'} ({type(h).__name__}, shape {shape})")
    return "; ".join(parts)


def _is_image_hdu(h) -> bool:
    from astropy.io import fits

    image_types = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    return isinstance(h, image_types) and int(h.header.get("NAXIS", 0)) >= 2


def _pick_hdu(hdul, path: Path, hdu: int | str | None):
    if hdu is not None:
        key: int | str = int(hdu) if isinstance(hdu, str) and hdu.strip().isdigit() else hdu
        try:
            chosen = hdul[key]
        except (KeyError, IndexError):
            raise TwinsightError(
                f"FITS file '{path}' has no HDU {hdu!r}; its HDUs: {_hdu_summary(hdul)}"
            ) from None
        if not _is_image_hdu(chosen):
            raise TwinsightError(
                f"FITS file '{path}' HDU {hdu!r} holds no image data; its HDUs: "
                f"{_hdu_summary(hdul)}"
            )
        return chosen
    for h in hdul:
        if _is_image_hdu(h):
            return h
    raise TwinsightError(
        f"FITS file '{path}' has no HDU with image data (its HDUs: {_hdu_summary(hdul)}); "
        "expected a 2-D image"
    )


def _squeeze_shape(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    squeezed = tuple(s for s in shape if s != 1)
    if len(squeezed) == 2 or (len(squeezed) == 3 and squeezed[0] == 3):
        return squeezed
    raise TwinsightError(
        f"FITS file '{path}' image has shape {shape}; expected a 2-D image (3-D cubes must have "
        "a length-1 axis, or 3 colour planes); pick another HDU with --hdu"
    )


def _fits_image_shape(path: Path, hdu: int | str | None) -> tuple[int, ...]:
    with _fits_open(path) as hdul:
        h = _pick_hdu(hdul, path, hdu)
        naxis = int(h.header["NAXIS"])
        shape = tuple(int(h.header[f"NAXIS{j}"]) for j in range(naxis, 0, -1))
    return _squeeze_shape(shape, path)


def _read_fits_array(path: Path, hdu: int | str | None) -> np.ndarray:
    with _fits_open(path) as hdul:
        h = _pick_hdu(hdul, path, hdu)
        try:
            data = np.asarray(h.data, dtype=np.float32)
        except (OSError, ValueError, TypeError) as exc:
            raise TwinsightError(
                f"cannot read the image data of FITS file '{path}' ({_first_line(exc)}); "
                "it may be truncated"
            ) from None
    shape = _squeeze_shape(data.shape, path)
    data = data.reshape(shape)
    return data[None] if data.ndim == 2 else data


def _header_cards(header) -> dict[str, Any]:
    cards: dict[str, Any] = {}
    for key, value in header.items():
        if not key or key in ("COMMENT", "HISTORY", ""):
            continue
        cards[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return cards


def _header_parameters(cards: dict[str, Any]) -> dict[str, float]:
    """The simulator parameters in a header, as ``TRUE_<name>`` or ``<name>`` (any case)."""
    upper = {k.upper().removeprefix("HIERARCH "): v for k, v in cards.items()}
    found = {}
    for name in SIMULATOR_PARAMETERS:
        for key in (f"TRUE_{name.upper()}", name.upper()):
            value = upper.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[name] = float(value)
                break
    return found


class _FixedLoader:
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(rows, dtype=np.int64)]


def read_fits(
    path: str | Path,
    *,
    hdu: int | str | None = None,
    image_size: ImageSize = None,
    channels: int | None = None,
) -> Collection:
    """A one-item collection from a FITS image; true parameters from its header, if any."""
    path = Path(path)
    size = _check_image_size(image_size)
    with _fits_open(path) as hdul:
        chosen = _pick_hdu(hdul, path, hdu)
        cards = _header_cards(hdul[0].header)
        cards.update(_header_cards(chosen.header))
        extname = chosen.name
    image = _read_fits_array(path, hdu)[None]
    if channels is not None:
        image = convert_channels(image, channels)
    if size is not None:
        image = resize_images(image, size)
    params = _header_parameters(cards)
    items = pd.DataFrame(
        {"key": [path.name], "source": [str(path)], **{k: [v] for k, v in params.items()}}
    )
    return Collection(
        items,
        _FixedLoader(np.ascontiguousarray(image, dtype=np.float32)),
        image.shape[1:],
        name=str(path),
        param_columns=list(params),
        meta={"reader": "fits", "header": cards, "hdu": extname},
    )


# ---------------------------------------------------------------------------------------------
# summaries and packing (what `twinsight info` and `twinsight pack` call)
# ---------------------------------------------------------------------------------------------
def _sort_key(value: Any) -> tuple[int, Any]:
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def summarize_collection(collection: Collection, source: str | None = None) -> dict[str, Any]:
    """A JSON-ready summary: items, image shape, labels, parameter ranges, systems, splits."""
    items = collection.items
    labels = None
    if collection.has_labels:
        counts = items["label"].value_counts()
        labels = {str(k): int(counts[k]) for k in sorted(counts.index, key=_sort_key)}
    parameters = {}
    for column in collection.param_columns:
        values = items[column].to_numpy(dtype=np.float64)
        parameters[column] = {
            "min": float(np.min(values)),
            "median": float(np.median(values)),
            "max": float(np.max(values)),
        }
    n_systems = int(items["system"].nunique()) if "system" in items.columns else None
    n_projections = int(items["projection"].nunique()) if "projection" in items.columns else None
    splits = {}
    if "split" in items.columns:
        counts = items["split"].astype(str).value_counts()
        splits = {str(k): int(counts[k]) for k in sorted(counts.index)}
    return {
        "source": source if source is not None else collection.name,
        "n_items": len(collection),
        "image_shape": list(collection.image_shape),
        "dtype": "float32",
        "labels": labels,
        "parameters": parameters,
        "n_systems": n_systems,
        "n_projections": n_projections,
        "splits": splits,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    return str(value)


def pack_collection(
    collection: Collection,
    out: str | Path,
    *,
    overwrite: bool = False,
    batch_size: int = 256,
    progress: bool = True,
) -> Path:
    """Write ``collection`` to one packed HDF5 file, atomically, reading in batches."""
    if batch_size < 1:
        raise TwinsightError(f"batch size must be at least 1, got {batch_size}")
    out = check_output_path(out, overwrite)
    n_batches = math.ceil(len(collection) / batch_size)
    batches = (
        images
        for _, images in track(
            collection.iter_batches(batch_size),
            total=n_batches,
            description="packing",
            enabled=progress,
        )
    )
    meta = _json_safe({**collection.meta, "packed_from": collection.name})
    return write_packed(
        out,
        collection.items,
        batches,
        collection.image_shape,
        param_columns=collection.param_columns,
        meta=meta,
        overwrite=overwrite,
    )
