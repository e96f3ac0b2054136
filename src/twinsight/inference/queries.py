"""Query images: read from files, brought to the model's input, embedded, with known truths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from twinsight.errors import TwinsightError


@dataclass
class Queries:
    """Query images from files, brought to the model's input, with their items rows."""

    images: np.ndarray  # preprocessed [Q, C, H, W]
    raw: list[np.ndarray]  # as read, for figures
    items: pd.DataFrame
    param_columns: list[str]

    @property
    def names(self) -> list[str]:
        return self.items["key"].astype(str).tolist()


def load_queries(sources: Sequence[str], preprocessing: Any) -> Queries:
    """Open each source (image file, FITS, folder, table) and preprocess it for the model.

    Images whose size or channel count differ from the model's are resized /
    channel-matched by the model's preprocessing; an impossible conversion is a
    clear error naming the file.
    """
    from twinsight.data.readers import open_collection

    if not sources:
        raise TwinsightError("give at least one query image")
    images, raw, tables, params = [], [], [], []
    for src in sources:
        col = open_collection(str(src))
        if len(col) == 0:
            raise TwinsightError(f"query '{src}' holds no image")
        batch = col.images()
        try:
            images.append(preprocessing(batch))
        except TwinsightError as exc:
            raise TwinsightError(f"query '{src}': {exc}") from None
        raw.extend(list(batch))
        items = col.items.copy()
        if len(sources) > 1 or len(col) == 1:
            items["key"] = [str(src) if len(col) == 1 else f"{src}:{k}" for k in items["key"]]
        tables.append(items)
        params.extend(c for c in col.param_columns if c not in params)
    return Queries(np.concatenate(images), raw, pd.concat(tables, ignore_index=True), params)


def queries_from_arrays(images: np.ndarray, preprocessing: Any) -> Queries:
    """Query images given as an array: one [H, W] or [C, H, W] image, or a batch [N, C, H, W].

    Values are taken in their natural scale, as a reader would return them; the model's
    preprocessing brings them to its input. Their keys are ``array[i]``.
    """
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TwinsightError(f"query images must be a real numeric array, got dtype {array.dtype}")
    if array.ndim in (2, 3):
        array = array[None] if array.ndim == 3 else array[None, None]
    if array.ndim != 4 or 0 in array.shape:
        raise TwinsightError(
            f"query images must be [H, W], [C, H, W] or [N, C, H, W], got shape {np.shape(images)}"
        )
    batch = array.astype(np.float32, copy=False)
    try:
        prepared = preprocessing(batch)
    except TwinsightError as exc:
        raise TwinsightError(f"query array of shape {batch.shape}: {exc}") from None
    items = pd.DataFrame({"key": [f"array[{i}]" for i in range(len(batch))]})
    return Queries(prepared, list(batch), items, [])


def embed_queries(bundle: Any, queries: Queries, *, batch_size: int = 256) -> np.ndarray:
    """Embed already-preprocessed query images as one batch with the bundle's encoder."""
    from dataclasses import replace

    from twinsight.embedding import embed_images

    identity = replace(bundle.preprocessing, normalize="none")
    return embed_images(bundle.encoder, queries.images, identity, batch_size=batch_size)


def query_truths(queries: Queries, columns: Sequence[str]) -> np.ndarray:
    """True parameter values [Q, P] known for the queries (FITS header, table), NaN otherwise."""
    out = np.full((len(queries.items), len(columns)), np.nan)
    for j, c in enumerate(columns):
        if c in queries.items.columns:
            out[:, j] = pd.to_numeric(queries.items[c], errors="coerce").to_numpy(dtype=np.float64)
    return out


def to_library_noise(
    queries: Queries, snrs: Sequence[float | None | bool], library_snr: float | None, seed: int = 0
) -> Queries:
    """Queries cleaner than the library's own images given noise up to the library's level.

    Why: every simulation carries noise of peak / ``library_snr``; an observation with less
    (a high SNR, or none at all) embeds where no simulation lies and reads as atypical. Its
    missing noise is added (seeded) after min-max scaling, where sigma is a fraction of the
    peak. ``snrs[q]`` is the query's SNR (None: noise-free), or False to leave it as it is.
    For models that min-max scale their inputs.
    """
    from dataclasses import replace

    from twinsight.data.transforms import minmax_per_image
    from twinsight.instrument import missing_noise

    if library_snr is None:
        return queries
    images = queries.images.copy()
    rng = np.random.default_rng([int(seed), 7])
    for q, snr in enumerate(snrs):
        sigma = 0.0 if snr is False else missing_noise(library_snr, snr)
        if sigma > 0:
            images[q] = minmax_per_image((images[q] + rng.normal(0, sigma, images[q].shape))[None])[
                0
            ]
    return replace(queries, images=images)
