"""Packed HDF5: one file, one chunked image dataset, the items table beside it.

Layout (``format = "twinsight-packed"``, ``version = 1`` as root attributes)::

    /images            float32 [N, H, W] or [N, C, H, W], chunked along N, uncompressed
    /items/<column>    one 1-D dataset per items-table column (strings as UTF-8)
    attrs: columns (JSON list, table order), param_columns (JSON list), meta (JSON dict)

This is the fast path for large sets: reading slices of a chunked dataset is
two orders of magnitude faster than opening one file per image.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
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
#: Images per HDF5 chunk: a system's views (8 in the simulator) share one or two chunks, so
#: a training batch reads little beyond what it needs. The chunks are not compressed: on
#: simulated float32 images gzip-1 with shuffle saved 13 % of the file (0.91 against 1.05 GB)
#: and made a scattered training batch 17x slower to read (127 against 7.3 ms; LZF 7.7 ms,
#: 7 % saved): a streaming worker spent a quarter of a 2-core training step decompressing
#: (BENCHMARKS.md "Streaming"). Any HDF5 reader opens an uncompressed file, no filter needed.
CHUNK_IMAGES = 16


class _DiskFullSafeFile(io.RawIOBase):
    """A file for h5py's ``fileobj`` driver that never lets HDF5 see a failed write.

    Why: when a write of HDF5's own (a chunk flush, the metadata at close) fails on a
    full disk, HDF5 keeps the file open half-closed and flushes it again when Python
    exits, which segfaults (exit 139). Here the first refused write is remembered, and
    from then on writes are kept in memory (not on disk) so that HDF5 reads back exactly
    what it wrote and closes cleanly; :func:`h5_create` then raises the remembered error
    and the temporary file is removed. Callers check (``check()``) after each batch, so
    at most about one batch is held in memory.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        self.error: OSError | None = None
        self._pos = 0
        self._overlay: list[tuple[int, bytes]] = []  # (offset, data) written after the error
        self._size = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(0, self._size - self._pos))
        got = os.preadv(self._fd, [view[:n]], self._pos) if n else 0
        view[got:n] = bytes(n - got)  # a region never written reads as zeros, never short
        for offset, data in self._overlay:  # later writes win
            lo, hi = max(offset, self._pos), min(offset + len(data), self._pos + n)
            if lo < hi:
                view[lo - self._pos : hi - self._pos] = data[lo - offset : hi - offset]
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as exc:
                self.error = exc
        if done < len(view):
            self._overlay.append((self._pos + done, bytes(view[done:])))
        self._pos += len(view)
        self._size = max(self._size, self._pos)
        return len(view)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self.tell() if size is None else size
        self._size = size
        self._overlay = [(o, d[: max(0, size - o)]) for o, d in self._overlay if o < size]
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            self.error = self.error or exc
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.error = self.error or exc
            os.close(self._fd)
        super().close()

    def check(self) -> None:
        """Raise the first write the machine refused, if any."""
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def h5_create(path: str | Path) -> Iterator[tuple[h5py.File, _DiskFullSafeFile]]:
    """A new HDF5 file at ``path`` that fails cleanly (an OSError, no segfault) on a full disk.

    Call ``safe.check()`` between large writes to stop early once the disk is full.
    """
    safe = _DiskFullSafeFile(Path(path))
    # HDF5 is not re-entrant, and it calls back into Python for every write of a
    # file-object driver: a garbage collection there may finalize another h5py object
    # (a file a previous caller dropped) inside HDF5, which segfaults. No collection
    # runs while this file is open.
    collecting = gc.isenabled()
    gc.disable()
    try:
        f = h5py.File(safe, "w")
        try:
            yield f, safe
        finally:
            f.close()
    finally:
        safe.close()
        if collecting:
            gc.enable()
    safe.check()


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
        with h5_create(tmp) as (f, safe):
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
                safe.check()
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
    """True when ``path`` is an HDF5 file written by :func:`write_packed`.

    A file with HDF5's signature that cannot be opened (cut short, damaged) counts too,
    so that :func:`read_packed` can say what is wrong with it.
    """
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except Exception:  # noqa: BLE001 - an HDF5 signature on an unreadable file
        return True


def _bad(path: Path, what: str) -> TwinsightError:
    return TwinsightError(
        f"packed file '{path}' is damaged: {what}; write it again with `twinsight pack`"
    )


class _PackedLoader:
    """Reads rows from the packed file; opens the file lazily per process (fork safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: h5py.File | None = None
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None, "_pid": None}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        try:
            return self._read(rows)
        except (OSError, RuntimeError, KeyError) as exc:
            raise _bad(self.path, f"its images cannot be read ({exc})") from None

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self._file is None or self._pid != os.getpid():
            # a forked data-loader worker opens its own handle: HDF5 handles do not survive
            # a fork (the parent may have read the file before, to validate it)
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        ds = self._file["images"]
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, *ds.shape[1:]), dtype=np.float32)
        unique, inverse = np.unique(rows, return_inverse=True)
        if unique[-1] - unique[0] + 1 == len(unique):  # one contiguous slice: fastest
            block = np.asarray(ds[int(unique[0]) : int(unique[-1]) + 1], dtype=np.float32)
        else:
            block = _read_scattered(ds, unique)
        out = block[inverse]
        return out[:, None] if out.ndim == 3 else out


def chunk_runs(rows: np.ndarray, chunk: int, n: int) -> list[tuple[int, int]]:
    """The chunk-aligned ``[start, stop)`` row ranges that cover sorted unique ``rows``,
    adjacent chunks merged: one slice read each."""
    chunks = rows // chunk
    breaks = np.flatnonzero(np.diff(chunks) > 1)
    firsts = chunks[np.r_[0, breaks + 1]]
    lasts = chunks[np.r_[breaks, len(chunks) - 1]]
    return [
        (int(a) * chunk, min(n, (int(b) + 1) * chunk)) for a, b in zip(firsts, lasts, strict=True)
    ]


def _read_scattered(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Sorted unique ``rows`` of ``ds``, read as whole chunks by slices and picked here.

    Why: h5py's list indexing costs about 1 ms per row selected (65 ms for a training
    batch of 128 rows from 32 chunks, 64 images a chunk), slices of the same chunks 1.5 ms
    (16 images a chunk); at most ``chunk`` x ``len(rows)`` images are read.
    """
    out = np.empty((len(rows), *ds.shape[1:]), dtype=np.float32)
    chunk = ds.chunks[0] if ds.chunks else len(ds)
    for start, stop in chunk_runs(rows, chunk, len(ds)):
        lo, hi = np.searchsorted(rows, [start, stop])
        out[lo:hi] = ds[start:stop][rows[lo:hi] - start]
    return out


def read_packed(path: str | Path) -> Collection:
    """Open a packed file as a streaming :class:`Collection`, validated first.

    Checked when opened: the format and its version, the attributes, that ``images`` is
    a 3-D or 4-D float dataset with one row per row of the items table, that each column
    exists with that many rows, and that the first and last image chunks can be read
    (a file cut short fails here, in one line, not midway through a training).
    """
    path = Path(path)
    if not path.exists():
        raise TwinsightError(f"packed file '{path}' does not exist")
    try:
        f = h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, sometimes others
        raise TwinsightError(
            f"'{path}' is not a readable HDF5 file ({exc}); it may be truncated"
        ) from None
    try:
        with f:
            items, shape, param_columns, meta = _read_validated(f, path)
    except TwinsightError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage inside the file
        raise _bad(path, f"{type(exc).__name__}: {exc}") from None
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


def _json_attr(f: h5py.File, path: Path, name: str, default: str, kind: type) -> Any:
    raw = f.attrs.get(name, default)
    try:
        value = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        raise _bad(path, f"attribute '{name}' is not valid JSON") from None
    if not isinstance(value, kind):
        raise _bad(path, f"attribute '{name}' should be a JSON {kind.__name__}")
    return value


def _read_validated(
    f: h5py.File, path: Path
) -> tuple[pd.DataFrame, tuple[int, ...], list[str], dict[str, Any]]:
    if f.attrs.get("format") != FORMAT or "images" not in f or "items" not in f:
        raise TwinsightError(
            f"'{path}' is an HDF5 file but not a twinsight packed file "
            "(no 'images' dataset and 'items' group); create one with `twinsight pack`"
        )
    version = f.attrs.get("version")
    if version is None or int(version) != VERSION:
        raise TwinsightError(
            f"packed file '{path}' has format version {version}; this twinsight reads "
            f"version {VERSION}; pack the source again with this version"
        )
    columns = _json_attr(f, path, "columns", "[]", list)
    param_columns = _json_attr(f, path, "param_columns", "[]", list)
    meta = _json_attr(f, path, "meta", "{}", dict)
    images = f["images"]
    if not isinstance(images, h5py.Dataset) or images.ndim not in (3, 4):
        raise _bad(path, "'images' should be an [N, H, W] or [N, C, H, W] dataset")
    if images.dtype.kind not in "fiu" or min(images.shape[1:], default=0) < 1:
        raise _bad(path, f"'images' has dtype {images.dtype} and shape {images.shape}")
    n = int(images.shape[0])
    data = {column: _read_column(f, path, str(column), n) for column in columns}
    missing = [c for c in param_columns if c not in data]
    if missing:
        raise _bad(path, f"parameter columns {missing} are not in the items table")
    if n:
        for row in {0, n - 1}:  # the first and the last chunk: a cut file fails here
            images[row]
    return pd.DataFrame(data, columns=columns), tuple(images.shape), param_columns, meta


def _read_column(f: h5py.File, path: Path, column: str, n: int) -> Any:
    if column not in f["items"] or not isinstance(f["items"][column], h5py.Dataset):
        raise _bad(path, f"the items table has no column '{column}'")
    values = f["items"][column][()]
    if np.ndim(values) != 1 or len(values) != n:
        raise _bad(
            path,
            f"'images' has {n} rows but the items column '{column}' has "
            f"{len(values) if np.ndim(values) == 1 else np.shape(values)}",
        )
    if values.dtype == object:
        values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    return values


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
