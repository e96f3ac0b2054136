"""Metadata tables (CSV, Parquet): one row per image, a ``path`` column, parameter columns.

``path`` is relative to the table's folder or absolute; ``key`` defaults to
the path; ``label``, ``system``, ``split`` and ``projection`` keep their
reserved meaning; every other numeric column is a parameter (a column of
text such as notes stays an ordinary column). Errors name the table, the
column and the row as the user sees it (CSV line, header = line 1; Parquet
row, first = 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinsight.data.collection import Collection
from twinsight.data.readers.common import (
    TABLE_EXTENSIONS,
    ImageSize,
    check_image_size,
    first_line,
)
from twinsight.data.readers.imagefiles import read_image_files
from twinsight.data.readers.registry import Source, register_reader
from twinsight.data.schema import RESERVED_COLUMNS
from twinsight.errors import TwinsightError


def _read_table_file(path: Path) -> tuple[pd.DataFrame, bool]:
    """The raw table and whether it is a CSV (row numbers then count the header line)."""
    is_csv = path.name.lower().endswith(".csv")
    try:
        if is_csv:
            frame = pd.read_csv(path, skipinitialspace=True)
        else:
            frame = pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise TwinsightError(f"cannot read table '{path}' ({first_line(exc)})") from None
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


def _extra_columns(frame: pd.DataFrame, path: Path, is_csv: bool) -> pd.DataFrame:
    """The columns besides key/label/path/source, with reserved ones given their types."""
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
    return extra


def _sniff(source: Source) -> bool:
    return source.is_file and source.has_suffix(TABLE_EXTENSIONS)


@register_reader("table", sniff=_sniff, priority=90)
def read_table(
    path: str | Path,
    *,
    image_size: ImageSize = None,
    channels: int | None = None,
    hdu: int | str | None = None,
) -> Collection:
    """A CSV/Parquet table (.csv, .parquet, .pq) of image paths and parameters."""
    path = Path(path)
    size = check_image_size(image_size)
    frame, is_csv = _read_table_file(path)
    frame = frame.rename(columns=lambda c: str(c).strip())
    images = _resolve_paths(frame, path, is_csv)
    keys = _table_keys(frame, path, is_csv)
    params = _parameter_columns(frame, path, is_csv)
    extra = _extra_columns(frame, path, is_csv)
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
