"""Parameter normalization and explicit pair lists.

- :class:`ParameterNormalizer` picks parameter columns, applies ``log10`` to
  some, and z-scores (or min-max scales) them with statistics fitted on the
  training split; ``to_dict``/``from_dict`` save them with the model so that
  inference normalizes the same way.
- :func:`read_pairs`: an explicit pair list (CSV ``path_a, path_b, label``).

The similarity kernels (:func:`parameter_similarity`, :func:`class_similarity`)
live in :mod:`twinsight.data.targets` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from twinsight.data.targets import KERNELS, Kernel, class_similarity, parameter_similarity
from twinsight.errors import TwinsightError

__all__ = [
    "KERNELS",
    "METHODS",
    "Kernel",
    "ParameterNormalizer",
    "class_similarity",
    "parameter_similarity",
    "read_pairs",
]

Method = Literal["zscore", "minmax"]
METHODS = ("zscore", "minmax")


def _as_frame(items: Any) -> pd.DataFrame:
    """Accept an items DataFrame or anything with an ``items`` DataFrame (a Collection)."""
    if isinstance(items, pd.DataFrame):
        return items
    frame = getattr(items, "items", None)  # a Collection (DataFrame.items is a method)
    if not isinstance(frame, pd.DataFrame):
        raise TwinsightError(
            "expected an items table (pandas DataFrame) or a Collection, "
            f"got {type(items).__name__}"
        )
    return frame


def _row_label(frame: pd.DataFrame, position: int) -> str:
    label = f"row {position + 1}"
    if "key" in frame.columns:
        label += f" (key '{frame['key'].iloc[position]}')"
    return label


def _column_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A parameter column as float64, raising on missing, non-numeric, NaN or inf values."""
    if column not in frame.columns:
        raise TwinsightError(
            f"parameter column '{column}' does not exist; available columns: "
            f"{[str(c) for c in frame.columns]}"
        )
    raw = frame[column]
    numeric = pd.to_numeric(raw, errors="coerce") if not pd.api.types.is_bool_dtype(raw) else None
    if numeric is None:
        raise TwinsightError(f"parameter column '{column}' holds booleans; expected numbers")
    values = numeric.to_numpy(dtype=np.float64)
    not_number = np.isnan(values) & raw.notna().to_numpy()
    if not_number.any():
        i = int(np.flatnonzero(not_number)[0])
        raise TwinsightError(
            f"parameter column '{column}', {_row_label(frame, i)}: value {raw.iloc[i]!r} is not "
            "a number"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TwinsightError(
            f"parameter column '{column}', {_row_label(frame, i)}: value {values[i]} is not "
            "finite; fix or drop that row"
        )
    return values


def _log10(values: np.ndarray, column: str, frame: pd.DataFrame) -> np.ndarray:
    bad = values <= 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TwinsightError(
            f"parameter column '{column}', {_row_label(frame, i)}: log10 needs positive values, "
            f"got {values[i]}; drop '{column}' from the log10 list or fix the value"
        )
    return np.log10(values)


@dataclass
class ParameterNormalizer:
    """Per-column transform (none or log10), then z-score or min-max, fitted once.

    ``offset`` and ``scale`` hold, per column, the mean and standard deviation
    (z-score) or the minimum and range (min-max) of the transformed values, so
    ``z = (transform(x) - offset) / scale``.
    """

    columns: list[str]
    log10: list[str] = field(default_factory=list)
    method: Method = "zscore"
    offset: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)

    @classmethod
    def fit(
        cls,
        items: Any,
        columns: Sequence[str],
        log10: Sequence[str] = (),
        method: Method = "zscore",
    ) -> ParameterNormalizer:
        """Fit statistics on ``items`` (use the training split only)."""
        frame = _as_frame(items)
        columns = [str(c) for c in columns]
        log10 = [str(c) for c in log10]
        _check_spec(columns, log10, method)
        if len(frame) == 0:
            raise TwinsightError("cannot fit parameter normalization on an empty items table")
        values = _transformed(frame, columns, log10)
        if method == "zscore":
            offset = values.mean(axis=0)
            scale = values.std(axis=0)
        else:
            offset = values.min(axis=0)
            scale = values.max(axis=0) - offset
        for column, s in zip(columns, scale, strict=True):
            if not s > 0:
                raise TwinsightError(
                    f"parameter column '{column}' is constant in the fitting data, so it cannot be "
                    f"{'z-scored' if method == 'zscore' else 'min-max scaled'}; drop it from the "
                    "parameter columns"
                    + (" or use min-max normalization" if method == "zscore" else "")
                )
        return cls(columns, log10, method, offset.tolist(), scale.tolist())

    def transform(self, items: Any) -> np.ndarray:
        """Normalized parameters float32 [N, P] in ``columns`` order."""
        frame = _as_frame(items)
        values = _transformed(frame, self.columns, self.log10)
        offset = np.asarray(self.offset, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        return ((values - offset) / scale).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Physical parameter values float64 [N, P] from normalized ones."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        if z.shape[1] != len(self.columns):
            raise TwinsightError(
                f"expected {len(self.columns)} normalized parameters ({self.columns}), "
                f"got shape {z.shape}"
            )
        values = z * np.asarray(self.scale) + np.asarray(self.offset)
        for j, column in enumerate(self.columns):
            if column in self.log10:
                values[:, j] = 10.0 ** values[:, j]
        return values

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics, saved beside the model."""
        return {
            "columns": list(self.columns),
            "log10": list(self.log10),
            "method": self.method,
            "offset": [float(v) for v in self.offset],
            "scale": [float(v) for v in self.scale],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParameterNormalizer:
        """Rebuild from :meth:`to_dict` output, checking it is complete and consistent."""
        if not isinstance(data, dict):
            raise TwinsightError(
                f"parameter normalization must be a mapping, got {type(data).__name__}"
            )
        missing = [k for k in ("columns", "method", "offset", "scale") if k not in data]
        if missing:
            raise TwinsightError(
                f"parameter normalization is missing {missing}; re-create it with "
                "ParameterNormalizer.fit"
            )
        columns = [str(c) for c in data["columns"]]
        log10 = [str(c) for c in data.get("log10", [])]
        _check_spec(columns, log10, data["method"])
        offset = [float(v) for v in data["offset"]]
        scale = [float(v) for v in data["scale"]]
        if len(offset) != len(columns) or len(scale) != len(columns):
            raise TwinsightError(
                f"parameter normalization has {len(columns)} columns but {len(offset)} offsets "
                f"and {len(scale)} scales"
            )
        if not all(np.isfinite(offset)) or not all(np.isfinite(s) and s > 0 for s in scale):
            raise TwinsightError(
                "parameter normalization statistics must be finite with positive scales"
            )
        return cls(columns, log10, data["method"], offset, scale)


def _check_spec(columns: list[str], log10: list[str], method: str) -> None:
    if not columns:
        raise TwinsightError("no parameter columns given; name at least one")
    if len(set(columns)) != len(columns):
        raise TwinsightError(f"parameter columns repeat a name: {columns}")
    if method not in METHODS:
        raise TwinsightError(f"unknown normalization '{method}'; expected one of {METHODS}")
    stray = [c for c in log10 if c not in columns]
    if stray:
        raise TwinsightError(
            f"log10 column(s) {stray} are not among the parameter columns {columns}"
        )


def _transformed(frame: pd.DataFrame, columns: list[str], log10: list[str]) -> np.ndarray:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TwinsightError(
            f"parameter column(s) {missing} do not exist; available columns: "
            f"{[str(c) for c in frame.columns]}"
        )
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        values = _column_values(frame, column)
        out[:, j] = _log10(values, column, frame) if column in log10 else values
    return out


# ---------------------------------------------------------------------------------------------
# explicit pairs
# ---------------------------------------------------------------------------------------------
PAIR_COLUMNS = ("path_a", "path_b", "label")


def _pair_label(value: Any, path: Path, line: int) -> int:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if number not in (0.0, 1.0):
        raise TwinsightError(
            f"pair list '{path}', line {line}: label {value!r} must be 0 (different) or 1 (same)"
        )
    return int(number)


def read_pairs(csv_path: str | Path) -> pd.DataFrame:
    """An explicit pair list: CSV ``path_a, path_b, label`` (1 = same, 0 = different).

    Paths are relative to the CSV's folder (or absolute) and must exist; the
    returned table holds them resolved, with ``label`` as int.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise TwinsightError(f"pair list '{path}' does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TwinsightError(f"cannot read pair list '{path}' ({exc})") from None
    frame = frame.rename(columns=lambda c: str(c).strip())
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise TwinsightError(
            f"pair list '{path}' lacks column(s) {missing} (found {list(frame.columns)}); "
            "expected a header 'path_a,path_b,label'"
        )
    if frame.empty:
        raise TwinsightError(f"pair list '{path}' has no rows")
    rows = {"path_a": [], "path_b": [], "label": []}
    for i, record in enumerate(frame[list(PAIR_COLUMNS)].itertuples(index=False)):
        line = i + 2
        for column, value in zip(("path_a", "path_b"), record[:2], strict=True):
            rows[column].append(_pair_path(value, path, line, column))
        rows["label"].append(_pair_label(record[2], path, line))
    out = pd.DataFrame(rows)
    out["label"] = out["label"].astype(np.int64)
    return out


def _pair_path(value: str, path: Path, line: int, column: str) -> str:
    value = str(value).strip()
    if not value:
        raise TwinsightError(f"pair list '{path}', line {line}: column '{column}' is empty")
    image = Path(value).expanduser()
    image = image if image.is_absolute() else path.parent / image
    if not image.exists():
        raise TwinsightError(
            f"pair list '{path}', line {line}, column '{column}': '{value}' does not exist "
            f"(looked for '{image}'); paths are relative to the CSV's folder"
        )
    return str(image)
