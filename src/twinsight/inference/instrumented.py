"""Calibration for the instrument an observation is seen through, and its typicality.

The calibration stored with a model (:func:`~twinsight.inference.conformal.calibrate_matching`)
holds for images that look like the simulations. An observation is seen through a beam and
noise, so its intervals are calibrated on the model's validation systems seen through that
same instrument: their clean images (kept beside the model, ``validation.h5``) go through
:func:`twinsight.instrument.degrade`, are embedded and matched against the index without
their own system, and the number of matches and the conformal inflation are fitted as at
training time. The result is cached per instrument in the index folder
(``calibrations/<model>/<instrument>.json``), so a second observation through the same
instrument costs a file read.

Design choice: by default the library stays embedded clean and only the calibration
follows the instrument, which fits a new instrument into 20 s on two cores for a
10,000-image library. :func:`library_through` (``match --reembed``) also shows the library
through the instrument: better recovery (measured in the README, "Observations"), for
about 25 s more per new instrument and the library's images at hand.

Typicality: the best-match similarity of each validation image through the instrument is
kept; an observation's p-value is the share of those at or below its own best similarity.
A small p-value says the observation looks like none of the simulations as this instrument
would show them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from twinsight.errors import TwinsightError
from twinsight.fsutil import write_text_atomic
from twinsight.index import SimilarityIndex
from twinsight.inference.conformal import calibrate_from_embeddings
from twinsight.instrument import Instrument, InstrumentRange, at_library_floor, degrade
from twinsight.io import dumps

log = logging.getLogger(__name__)

#: The model's validation systems, clean, as a packed collection beside the weights.
CALIBRATION_SET = "validation.h5"
CACHE_DIR = "calibrations"
#: Below this typicality p-value an observation gets a warning.
TYPICALITY_ALPHA = 0.01
CACHE_VERSION = 1


def write_calibration_set(collection: Any, folder: str | Path) -> Path:
    """Keep the validation systems (clean images and their items) beside a model."""
    from twinsight.data.packed import pack_collection

    path = Path(folder) / CALIBRATION_SET
    pack_collection(collection, path, overwrite=True, progress=False)
    return path


def calibration_set_path(bundle: Any) -> Path | None:
    """The model's ``validation.h5`` (None when the model was not loaded from a folder)."""
    folder = getattr(bundle, "folder", None)
    if folder is None:
        return None
    path = Path(folder) / CALIBRATION_SET
    return path if path.is_file() else None


def load_calibration_set(bundle: Any) -> Any:
    """The validation systems of a model, or a clear error saying how to get them."""
    from twinsight.data.readers import open_collection

    path = calibration_set_path(bundle)
    if path is None:
        where = getattr(bundle, "folder", None) or "this in-memory model"
        raise TwinsightError(
            f"model '{where}' keeps no {CALIBRATION_SET} (its validation systems), so it cannot "
            "be calibrated for an instrument; train it again with this version of twinsight"
        )
    return open_collection(str(path))


def _cache_path(index: SimilarityIndex, bundle: Any, instrument: Instrument) -> Path | None:
    folder = getattr(index, "location", None)
    if folder is None:
        return None
    return Path(folder) / CACHE_DIR / str(bundle.fingerprint) / f"{instrument.key}.json"


def _read_cache(path: Path | None) -> dict[str, Any] | None:
    import json

    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("ignoring an unreadable instrument calibration '%s'; fitting it again", path)
        return None
    return data if data.get("cache_version") == CACHE_VERSION else None


def _write_cache(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, dumps(data))
    except (OSError, TwinsightError) as exc:  # a read-only index still matches, uncached
        log.info("instrument calibration not cached in '%s': %s", path, exc)


def calibrate_for_instrument(
    bundle: Any,
    index: SimilarityIndex,
    instrument: Instrument,
    *,
    seed: int = 0,
    use_cache: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Matching calibration (``bundle.matching`` layout) for images seen through ``instrument``.

    Fitted on the model's validation systems degraded through the instrument (rounded to
    its cache key), matched against ``index`` without their own system; cached per
    instrument in the index folder. Adds ``instrument`` and ``typicality`` (the validation
    images' best-match similarities, sorted).
    """
    from twinsight.embedding import embed_images

    library_snr = index.meta.get("library_snr")
    instrument = at_library_floor(instrument.rounded, library_snr)
    path = _cache_path(index, bundle, instrument) if use_cache else None
    cached = _read_cache(path)
    if cached is not None:
        return cached
    val = load_calibration_set(bundle)
    seen = degrade(val.images(), instrument, seed=seed, library_snr=library_snr)
    emb = embed_images(bundle.encoder, seen, bundle.preprocessing, batch_size=batch_size)
    normalizer = (getattr(bundle, "targets", None) or {}).get("normalizer") or {}
    columns = [c for c in index.param_columns if c in val.items.columns]
    matching = calibrate_from_embeddings(
        index, emb, val.items, columns=columns, log10=normalizer.get("log10"), seed=seed
    )
    systems = val.items["system"].astype(str).tolist()
    best, _ = index.search_excluding(emb, 1, systems)
    matching["instrument"] = instrument.to_dict()
    matching["typicality"] = {"best_similarity": np.sort(best[:, 0]).astype(float).tolist()}
    matching["cache_version"] = CACHE_VERSION
    log.info("calibrated for %s on %d validation images", instrument.describe(), len(val))
    _write_cache(path, matching)
    return matching


def typicality(matching: dict[str, Any] | None, best_similarity: float) -> dict[str, Any] | None:
    """How typical an observation's best-match similarity is among simulations seen alike.

    ``p_value`` = (1 + validation images at or below it) / (1 + their number): under the
    hypothesis that the observation is one more simulation seen through the instrument,
    it is uniform, so ``p_value < alpha`` happens to a share ``alpha`` of them.
    """
    reference = ((matching or {}).get("typicality") or {}).get("best_similarity")
    if not reference:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    below = int(np.searchsorted(ref, best_similarity, side="right"))
    p = (1 + below) / (1 + len(ref))
    return {
        "best_similarity": float(best_similarity),
        "p_value": float(p),
        "alpha": TYPICALITY_ALPHA,
        "reference": int(len(ref)),
        "reference_median": float(np.median(ref)),
        "atypical": bool(p < TYPICALITY_ALPHA),
    }


def range_warnings(bundle: Any, instrument: Instrument) -> list[str]:
    """Sentences for an instrument outside the range the model was trained through."""
    trained = InstrumentRange.from_dict(getattr(bundle, "instrument_range", None))
    if trained is None:
        return [
            f"the model was trained on clean simulations only; {instrument.describe()} may "
            "embed far from them (train with --augment instrument)"
        ]
    outside = trained.covers(instrument)
    if not outside:
        return []
    return [f"instrument outside the trained range: {'; '.join(outside)}"]


#: Libraries re-embedded through an instrument, cached in the index folder.
REEMBED_DIR = "instrumented"


def library_through(
    bundle: Any, index: SimilarityIndex, instrument: Instrument, *, seed: int = 0,
    batch_size: int = 256,
) -> SimilarityIndex:  # fmt: skip
    """The library seen through ``instrument`` (each image once, seeded), embedded again.

    The slower, more accurate way (``match(..., reembed=True)``): queries are then matched
    against simulations that look like them, not against clean ones. It costs one
    embedding of the whole library per new instrument (about 25 s for 8,000 images at
    64 px on two cores), so the result is cached in the index folder
    (``instrumented/<model>/<instrument>/``, itself an index whose own calibration cache
    sits inside it). The library's images are read from the index's ``source``.
    """
    from twinsight.data.readers import open_collection
    from twinsight.embedding import embed_images

    library_snr = index.meta.get("library_snr")
    instrument = at_library_floor(instrument.rounded, library_snr)
    folder = getattr(index, "location", None)
    cached = None if folder is None else Path(folder) / REEMBED_DIR / bundle.fingerprint
    if cached is not None and (cached / instrument.key / "index.json").is_file():
        return SimilarityIndex.load(cached / instrument.key)
    source = index.meta.get("source")
    try:
        library = open_collection(str(source))
    except TwinsightError as exc:
        raise TwinsightError(
            f"re-embedding the library through {instrument.describe()} needs its images; the "
            f"index's source '{source}' cannot be read ({exc}); match without --reembed"
        ) from None
    positions = _positions_of(library, index)
    rng = np.random.default_rng([int(seed), 11])
    parts = []
    for start in range(0, len(positions), batch_size):
        images = library.images(positions[start : start + batch_size])
        seen = degrade(images, instrument, seed=rng, library_snr=library_snr)
        parts.append(embed_images(bundle.encoder, seen, bundle.preprocessing))
    through = SimilarityIndex.build(
        np.concatenate(parts), index.items, model_fingerprint=bundle.fingerprint,
        model_path=index.meta.get("model_path"), param_columns=index.param_columns,
        normalizer=index.meta.get("normalizer"), units=index.meta.get("units"),
        extra={k: index.meta[k] for k in ("source", "pixel_scale_au", "library_snr")
               if k in index.meta} | {"instrument": instrument.to_dict()},
    )  # fmt: skip
    if cached is None:
        return through
    try:
        through.save(cached / instrument.key, overwrite=True)
        return SimilarityIndex.load(cached / instrument.key)
    except (OSError, TwinsightError) as exc:
        log.info("re-embedded library not cached in '%s': %s", cached, exc)
        return through


def _positions_of(library: Any, index: SimilarityIndex) -> np.ndarray:
    """The library rows of the index's items, by key (an index may hold a subset)."""
    import pandas as pd

    rows = pd.Series(np.arange(len(library)), index=library.items["key"].astype(str))
    keys = index.items["key"].astype(str)
    missing = ~keys.isin(rows.index)
    if missing.any():
        raise TwinsightError(
            f"the index's source '{index.meta.get('source')}' lacks {int(missing.sum())} of its "
            f"items (e.g. {keys[missing].iloc[0]!r}); it has changed since the index was built"
        )
    return rows.loc[keys].to_numpy()
