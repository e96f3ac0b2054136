"""Packed HDF5: one file, one chunked compressed image dataset, the items table beside it.

Layout (``format = "twinsight-packed"``, ``version = 1`` as root attributes)::

    /images            float32 [N, H, W] or [N, C, H, W], chunked along N, gzip + shuffle
    /items/<column>    one 1-D dataset per items-table column (strings as UTF-8)
    attrs: columns (JSON list, table order), param_columns (JSON list), meta (JSON dict)

This is the fast path for large sets: reading slices of a chunked dataset is
two orders of magnitude faster than opening one file per image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from twinsight.data.collection import Collection
from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_file, check_output_path
from twinsight.progress import track
from twinsight.validation import check_positive_int

FORMAT = "twinsight-packed"
VERSION = 1
CHUNK_IMAGES = 64


def _column_to_h5(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.bool_)
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(values):
        return values.to_numpy(dtype=np.float64)
    return values.astype(str).to_numpy(dtype=object)


def write_packed(
    path: str | Path,
    items: pd.DataFrame,
    image_batches: Iterable[np.ndarray],
    image_shape: Sequence[int],
    *,
    param_columns: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a packed file atomically from batches of images, in items-table order."""
    n = len(items)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    with atomic_file(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["columns"] = json.dumps(list(items.columns))
            f.attrs["param_columns"] = json.dumps(list(param_columns))
            f.attrs["meta"] = json.dumps(meta or {})
            ds = f.create_dataset(
                "images",
                shape=(n, *shape),
                dtype=np.float32,
                chunks=(max(1, min(CHUNK_IMAGES, n)), *shape),
                compression="gzip",
                compression_opts=1,
                shuffle=True,
            )
            pos = 0
            for batch in image_batches:
                batch = np.asarray(batch, dtype=np.float32).reshape(-1, *shape)
                if pos + len(batch) > n:
                    raise TwinsightError(
                        f"packing '{path}': more images than the {n} rows of the items table"
                    )
                ds[pos : pos + len(batch)] = batch
                pos += len(batch)
            if pos != n:
                raise TwinsightError(
                    f"packing '{path}': got {pos} images for {n} rows of the items table"
                )
            group = f.create_group("items")
            string_dtype = h5py.string_dtype("utf-8")
            for column in items.columns:
                values = _column_to_h5(items[column])
                dtype = string_dtype if values.dtype == object else values.dtype
                group.create_dataset(str(column), data=values, dtype=dtype)
    return Path(path)


def is_packed(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file written by :func:`write_packed`."""
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return f.attrs.get("format") == FORMAT


class _PackedLoader:
    """Reads rows from the packed file; opens the file lazily per process (fork safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: h5py.File | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        ds = self._file["images"]
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, *ds.shape[1:]), dtype=np.float32)
        unique, inverse = np.unique(rows, return_inverse=True)
        if unique[-1] - unique[0] + 1 == len(unique):  # one contiguous slice: fastest
            block = ds[int(unique[0]) : int(unique[-1]) + 1]
        else:
            block = ds[unique]
        out = np.asarray(block, dtype=np.float32)[inverse]
        return out[:, None] if out.ndim == 3 else out


def read_packed(path: str | Path) -> Collection:
    """Open a packed file as a streaming :class:`Collection`."""
    path = Path(path)
    if not path.exists():
        raise TwinsightError(f"packed file '{path}' does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise TwinsightError(
            f"'{path}' is not a readable HDF5 file ({exc}); it may be truncated"
        ) from None
    with f:
        if f.attrs.get("format") != FORMAT or "images" not in f or "items" not in f:
            raise TwinsightError(
                f"'{path}' is an HDF5 file but not a twinsight packed file "
                "(no 'images' dataset and 'items' group); create one with `twinsight pack`"
            )
        columns = json.loads(f.attrs["columns"])
        param_columns = json.loads(f.attrs.get("param_columns", "[]"))
        meta = json.loads(f.attrs.get("meta", "{}"))
        data = {}
        for column in columns:
            values = f["items"][column][()]
            if values.dtype == object:
                values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
            data[column] = values
        items = pd.DataFrame(data, columns=columns)
        shape = f["images"].shape
    image_shape = (1, *shape[1:]) if len(shape) == 3 else tuple(shape[1:])
    meta.setdefault("path", str(path))
    return Collection(
        items,
        _PackedLoader(path),
        image_shape,
        name=str(path),
        param_columns=param_columns,
        meta=meta,
    )


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
    batch_size = check_positive_int(batch_size, "batch_size")
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
