"""The seed-000 HDF5 layout: one file per system, each projection one item.

A system file holds ``intensity_projection_1`` ... ``intensity_projection_K``
(2-D images; numeric attributes ``inclination`` and ``position_angle`` become
item columns) and one scalar dataset per parameter (its ``units`` or ``unit``
attribute goes to ``meta["units"]``). The reader takes a folder of such files
(and nothing else but hidden files) or one file. Every file must have the same
parameters; the simulator's come first, in its order, others sorted after.

Scanning uses h5py's low-level API, and folders of
:data:`PARALLEL_SCAN_MIN_FILES` files or more are scanned by forked worker
processes: scanning is the whole cost of opening such a folder.
"""

from __future__ import annotations

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

from twinsight.data.collection import Collection
from twinsight.data.readers.common import (
    HDF5_EXTENSIONS,
    ImageSize,
    check_image_size,
    first_line,
    is_hdf5_file,
    is_image_name,
)
from twinsight.data.readers.registry import Source, register_reader
from twinsight.data.schema import (
    PROJECTION_ATTRIBUTES,
    PROJECTION_PREFIX,
    RESERVED_COLUMNS,
    SIMULATOR_PARAMETERS,
)
from twinsight.data.transforms import convert_channels, resize_images
from twinsight.errors import TwinsightError
from twinsight.progress import track

#: Folders with at least this many system files are scanned by a pool of processes.
PARALLEL_SCAN_MIN_FILES = 2000

_PROJECTION_RE = re.compile("^" + re.escape(PROJECTION_PREFIX) + r"(\d+)$")


# ---------------------------------------------------------------------------- scanning
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
            f"cannot open HDF5 file '{path}' ({first_line(exc)}); it may be truncated"
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
            f"cannot read the metadata of HDF5 file '{path}' ({first_line(exc)}); "
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


# ---------------------------------------------------------------------------- loading
def _image_hw(shape: tuple[int, ...], path: Path, name: str) -> tuple[int, int]:
    squeezed = tuple(s for s in shape if s != 1) if len(shape) > 2 else shape
    if len(squeezed) != 2:
        raise TwinsightError(
            f"HDF5 file '{path}' dataset '{name}' has shape {shape}; expected a 2-D image"
        )
    return int(squeezed[0]), int(squeezed[1])


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
                f"cannot open HDF5 file '{path}' ({first_line(exc)}); "
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
                f"cannot read dataset '{name}' from '{path}' ({first_line(exc)}); "
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


# ---------------------------------------------------------------------------- the reader
def _check_same_params(
    path: Path, names: set[str], first_file: Path, param_names: set[str]
) -> None:
    if names != param_names:
        missing = sorted(param_names - names) or sorted(names - param_names)
        raise TwinsightError(
            f"HDF5 file '{path}' has parameters {sorted(names)} but '{first_file}' has "
            f"{sorted(param_names)} (differ in {missing}); every system file needs the same "
            "scalar parameter datasets"
        )


def _check_finite(path: Path, params: dict[str, float]) -> None:
    for pname, value in params.items():
        if not math.isfinite(value):
            raise TwinsightError(
                f"HDF5 file '{path}', parameter dataset '{pname}': value {value} is not a "
                "finite number"
            )


def read_seed_hdf5(
    files: Sequence[str | Path],
    *,
    name: str,
    image_size: ImageSize = None,
    channels: int | None = None,
) -> Collection:
    """Per-system seed-000 files: each projection one item with its system's parameters."""
    size = check_image_size(image_size)
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
        if param_names is None or first_file is None:
            param_names, first_file = names, path
        else:
            _check_same_params(path, names, first_file, param_names)
        _check_finite(path, scanned.params)
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


def _hdf5_files(source: Source) -> list[Path]:
    return [p for p in source.files if p.name.lower().endswith(HDF5_EXTENSIONS)]


def _sniff(source: Source) -> bool:
    if source.is_dir:
        only_h5 = not source.subdirs and not any(is_image_name(p.name) for p in source.files)
        return only_h5 and bool(_hdf5_files(source))
    return source.is_file and is_hdf5_file(source.path)


@register_reader("seed-hdf5", sniff=_sniff, priority=70)
def open_seed_hdf5(
    source: Source, *, image_size: ImageSize = None, channels: int | None = None
) -> Collection:
    """The seed-000 layout: a folder of per-system .h5 files, or one such file."""
    files = _hdf5_files(source) if source.is_dir else [source.path]
    return read_seed_hdf5(files, name=str(source.path), image_size=image_size, channels=channels)
