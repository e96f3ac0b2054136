"""What the web server holds for its lifetime: the index, its model and the indexed images.

Loaded once when the app is created. Keys from URLs are looked up in the index's items
table (a dict), never used as paths; the images behind them come from the collection
the index was built from (``index.meta["source"]``), opened on first use.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from twinsight import api
from twinsight.errors import TwinsightError
from twinsight.index import SimilarityIndex

THUMBNAIL_PX = 128
THUMBNAIL_CACHE = 4096


class UnknownKey(TwinsightError):
    """A key that is not in the index's items table (HTTP 404)."""


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN and infinities as null.

    The CLI's ``--json`` writes NaN literally; browsers' ``JSON.parse`` refuses it, so over
    HTTP a non-finite number is ``null`` (the only difference from the CLI's output).
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # e.g. a timestamp in an items table: shown, never a 500


class Service:
    """The index, its model (checked against the index's fingerprint) and the indexed images."""

    def __init__(self, index: SimilarityIndex | Any, model: Any = None) -> None:
        self.index = index if isinstance(index, SimilarityIndex) else api.load_index(index)
        self.bundle = api.index_model(self.index, model)
        keys = self.index.items["key"].astype(str)
        self.positions: dict[str, int] = dict(zip(keys, range(len(keys)), strict=True))
        self._source: Any = None
        self._source_rows: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._thumbnails: OrderedDict[str, bytes] = OrderedDict()

    # -- items ------------------------------------------------------------------------------------
    def position(self, key: str) -> int:
        """The row of ``key`` in the items table; UnknownKey when the index has no such item."""
        try:
            return self.positions[key]
        except KeyError:
            raise UnknownKey(f"no item with key '{key[:200]}' in this index") from None

    def item(self, key: str) -> dict[str, Any]:
        """One row of the items table as JSON values."""
        row = self.index.items.iloc[self.position(key)]
        return jsonable({str(c): row[c] for c in self.index.items.columns})

    def describe(self) -> dict[str, Any]:
        """What the page needs to know about the index (``GET /api/health``)."""
        return {
            "status": "ok",
            "items": len(self.index),
            "model_fingerprint": self.index.model_fingerprint,
            "param_columns": list(self.index.param_columns),
            "labels": "label" in self.index.items.columns,
            "calibrated": bool(self.bundle.calibration),
            "source": self.index.meta.get("source"),
        }

    # -- images of indexed items -------------------------------------------------------------------
    def _open_source(self) -> tuple[Any, dict[str, int]]:
        if self._source is None:
            source = self.index.meta.get("source")
            if not source:
                raise TwinsightError("the index records no source, so its images cannot be shown")
            try:
                collection = api.open_collection(source)
            except TwinsightError:
                raise TwinsightError(
                    f"the index's source '{source}' cannot be opened, so its images cannot be shown"
                ) from None
            keys = collection.items["key"].astype(str)
            self._source_rows = dict(zip(keys, range(len(keys)), strict=True))
            self._source = collection
        return self._source, self._source_rows  # type: ignore[return-value]

    def item_image(self, key: str) -> np.ndarray:
        """The indexed image of ``key`` [C, H, W], read from the index's source collection."""
        self.position(key)
        with self._lock:
            collection, rows = self._open_source()
            if key not in rows:
                raise UnknownKey(f"the index's source no longer holds item '{key[:200]}'")
            return collection.images(np.array([rows[key]], dtype=np.int64))[0]

    def thumbnail(self, key: str) -> bytes:
        """A PNG of the indexed image of ``key`` (min-max stretched, at most 128 px), cached."""
        with self._lock:
            if key in self._thumbnails:
                self._thumbnails.move_to_end(key)
                return self._thumbnails[key]
        png = to_png(self.item_image(key))
        with self._lock:
            self._thumbnails[key] = png
            while len(self._thumbnails) > THUMBNAIL_CACHE:
                self._thumbnails.popitem(last=False)
        return png


def to_png(image: np.ndarray, max_px: int = THUMBNAIL_PX) -> bytes:
    """An image [C, H, W] or [H, W] in natural scale as PNG bytes (grey, or RGB for 3 channels)."""
    from PIL import Image

    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3:
        array = np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0]
    finite = np.isfinite(array)
    lo, hi = (array[finite].min(), array[finite].max()) if finite.any() else (0.0, 1.0)
    scaled = np.where(finite, (array - lo) / (hi - lo if hi > lo else 1.0), 0.0)
    picture = Image.fromarray((255 * scaled).round().astype(np.uint8))
    if max(picture.size) > max_px:
        picture.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
