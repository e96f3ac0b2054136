"""Collection: the one shape every data source takes.

A collection is an items table (one row per image: ``key``, optional
``label``, ``system``, ``projection``, ``split``, ``source`` and parameter
columns) plus a loader that turns row numbers into a float32 array
``[N, C, H, W]``. Images are loaded on demand, in batches, so a collection
need not fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from twinsight.data.schema import RESERVED_COLUMNS
from twinsight.errors import TwinsightError

__all__ = ["RESERVED_COLUMNS", "Collection", "ImageLoader"]

#: Turns base row numbers (any order, repeats allowed) into float32 images [N, C, H, W].
ImageLoader = Callable[[np.ndarray], np.ndarray]


class Collection:
    """An items table plus a streaming image loader (see module docstring)."""

    def __init__(
        self,
        items: pd.DataFrame,
        loader: ImageLoader,
        image_shape: tuple[int, int, int],
        *,
        name: str,
        param_columns: Sequence[str] = (),
        rows: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if "key" not in items.columns:
            raise TwinsightError(f"collection '{name}': the items table needs a 'key' column")
        missing = [c for c in param_columns if c not in items.columns]
        if missing:
            raise TwinsightError(
                f"collection '{name}': parameter column(s) {missing} are not in the items table "
                f"(columns: {list(items.columns)})"
            )
        self.items = items.reset_index(drop=True)
        self._loader = loader
        self.image_shape = tuple(int(s) for s in image_shape)
        self.name = name
        self.param_columns = list(param_columns)
        self._rows = np.arange(len(items)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.meta = dict(meta or {})

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        items: pd.DataFrame,
        *,
        name: str,
        param_columns: Sequence[str] = (),
        meta: dict[str, Any] | None = None,
    ) -> Collection:
        """An in-memory collection; ``images`` is [N, H, W] or [N, C, H, W]."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or len(images) != len(items):
            raise TwinsightError(
                f"collection '{name}': expected images [N, C, H, W] with N = {len(items)} rows, "
                f"got shape {images.shape}"
            )
        return cls(
            items,
            lambda rows: images[rows],
            images.shape[1:],
            name=name,
            param_columns=param_columns,
            meta=meta,
        )

    # -- table views ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return f"Collection('{self.name}', {len(self)} items, {c}x{h}x{w})"

    @property
    def has_labels(self) -> bool:
        return "label" in self.items.columns

    @property
    def has_params(self) -> bool:
        return bool(self.param_columns)

    @property
    def has_systems(self) -> bool:
        return "system" in self.items.columns

    @property
    def splits(self) -> list[str]:
        if "split" not in self.items.columns:
            return []
        return sorted(self.items["split"].astype(str).unique())

    def labels(self) -> np.ndarray:
        if not self.has_labels:
            raise TwinsightError(f"collection '{self.name}' has no 'label' column")
        return self.items["label"].to_numpy()

    def params(self, columns: Sequence[str] | None = None) -> np.ndarray:
        """Parameter values as float64 [N, P] (all parameter columns by default)."""
        columns = list(columns) if columns is not None else self.param_columns
        missing = [c for c in columns if c not in self.items.columns]
        if missing:
            raise TwinsightError(
                f"collection '{self.name}' has no parameter column(s) {missing}; "
                f"available: {self.param_columns}"
            )
        return self.items[columns].to_numpy(dtype=np.float64)

    def subset(self, index: np.ndarray | Sequence[int] | Sequence[bool]) -> Collection:
        """The collection restricted to some rows (positions or a boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64, copy=False)
        return Collection(
            self.items.iloc[index],
            self._loader,
            self.image_shape,
            name=self.name,
            param_columns=self.param_columns,
            rows=self._rows[index],
            meta=self.meta,
        )

    def split(self, name: str) -> Collection:
        """The rows whose ``split`` column equals ``name``."""
        if "split" not in self.items.columns:
            raise TwinsightError(
                f"collection '{self.name}' has no 'split' column, so split '{name}' does not exist"
            )
        mask = self.items["split"].astype(str).to_numpy() == name
        if not mask.any():
            raise TwinsightError(
                f"collection '{self.name}' has no split '{name}'; available: {self.splits}"
            )
        return self.subset(mask)

    # -- images ---------------------------------------------------------------------------------
    def images(self, index: np.ndarray | Sequence[int] | slice | None = None) -> np.ndarray:
        """Load images as float32 [N, C, H, W] (all of them when ``index`` is None)."""
        rows = self._rows if index is None else self._rows[index]
        rows = np.atleast_1d(rows)
        out = np.asarray(self._loader(rows), dtype=np.float32)
        if out.shape[1:] != self.image_shape or len(out) != len(rows):
            raise TwinsightError(
                f"collection '{self.name}': loader returned shape {out.shape}, expected "
                f"({len(rows)}, {', '.join(map(str, self.image_shape))})"
            )
        return out

    def iter_batches(
        self, batch_size: int = 256, index: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(positions, images)`` in batches, in order."""
        positions = np.arange(len(self)) if index is None else np.asarray(index)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            yield chunk, self.images(chunk)
