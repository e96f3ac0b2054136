"""The façade: the functions of the whole workflow, re-exported by ``import twinsight``.

``open_collection`` → ``simulate`` / ``observe`` → ``train`` → ``build_index`` /
``load_index`` → ``search`` / ``compare`` / ``match`` → ``evaluate`` / ``fid``. Each
returns a typed result (:mod:`twinsight.results`, :class:`~twinsight.inference.ParameterEstimate`,
:class:`~twinsight.index.SimilarityIndex`) whose ``to_dict()`` is what the CLI prints with
``--json``. The CLI and the demo call only these functions.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twinsight.config import TrainConfig, apply_overrides, load_config
from twinsight.data.collection import Collection
from twinsight.data.readers import open_collection
from twinsight.errors import TwinsightError
from twinsight.fsutil import (
    output_lock,
)
from twinsight.index import SimilarityIndex
from twinsight.inference import ParameterEstimate, Queries
from twinsight.instrument import Instrument, parse_instrument
from twinsight.models.bundle import ModelBundle
from twinsight.results import (
    CollectionInfo,
    Comparison,
    Evaluation,
    FidResult,
    SearchResult,
    TrainResult,
)
from twinsight.runs import partial_dir, resolve_config, train  # noqa: F401 (the façade)

log = logging.getLogger(__name__)

# == the façade: one function per step of the workflow ===========================================
ModelLike = Any  # a ModelBundle, a TrainResult, or the path of a model / run folder
IndexLike = Any  # a SimilarityIndex or the path of an index folder
ImagesLike = Any  # a path (image, FITS, folder, table), a sequence of paths, or an array


def simulate(
    out: str | os.PathLike | None = None,
    *,
    n_systems: int = 200,
    n_projections: int = 8,
    size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> Collection:
    """Simulated protostellar systems as a Collection; written to ``out`` when given.

    ``out`` ending in ``.h5`` is a packed file (with a ``split`` column from
    ``val_fraction`` / ``test_fraction``), any other path a folder of seed-000 HDF5
    files; without ``out`` the set is simulated in memory.
    """
    from twinsight.simulator import simulate_collection, write_simulation

    if out is None:
        return simulate_collection(n_systems, n_projections, size, seed)
    with output_lock(out):  # one writer per output, from the first check to the rename
        path = write_simulation(
            out,
            n_systems,
            n_projections,
            size,
            seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            overwrite=overwrite,
            progress=progress,
        )
    return open_collection(path)


def observe(
    out: str | os.PathLike,
    params: dict[str, float] | None = None,
    *,
    seed: int = 0,
    size: int = 64,
    snr: float = 30.0,
    beam_fwhm: float = 2.0,
    inclination: float | None = None,
    position_angle: float | None = None,
    flux_scale: float | None = None,
    distance: float = 140.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write one simulated telescope observation (FITS) and return what is true of it.

    The file is what an archive would give: a celestial WCS whose pixel scale in degrees
    is the library's AU per pixel at ``distance`` (pc), the beam in BMAJ/BMIN/BPA, and
    ``snr=float("inf")`` for no noise.
    """
    from twinsight.simulator import observe as write_observation

    return write_observation(
        out,
        params,
        seed=seed,
        size=size,
        inclination=inclination,
        position_angle=position_angle,
        snr=snr,
        beam_fwhm=beam_fwhm,
        flux_scale=flux_scale,
        distance=distance,
        overwrite=overwrite,
    )


def load_model(model: ModelLike) -> ModelBundle:
    """A ModelBundle from a bundle, a TrainResult, a run folder or a model folder."""
    if isinstance(model, ModelBundle):
        return model
    if isinstance(model, TrainResult):
        return model.bundle
    path = Path(model)
    if (path / "model").is_dir() and not (path / "twinsight.json").is_file():
        path = path / "model"  # a run folder
    return ModelBundle.load(path)


def _model_path(model: ModelLike) -> Path | None:
    if isinstance(model, ModelBundle):
        return None
    if isinstance(model, TrainResult):
        return model.model.resolve()
    path = Path(model)
    if (path / "model").is_dir() and not (path / "twinsight.json").is_file():
        path = path / "model"
    return path.resolve()


def _collection(data: Any) -> Collection:
    return data if isinstance(data, Collection) else open_collection(data)


def build_index(
    model: ModelLike,
    data: Any,
    *,
    index_type: str = "Flat",
    batch_size: int = 256,
    shard: str | tuple[int, int] | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    devices: int = 1,
    progress: bool = False,
) -> SimilarityIndex | None:
    """Embed a collection (or one shard of it) with a model and index it (FAISS).

    The index records the model's fingerprint, and its path when ``model`` is given by
    path or as a TrainResult, so that later searches find their model by themselves.
    ``device`` runs the encoder ("auto": the GPU when there is one), ``precision``
    autocasts on a GPU ("fp16", "bf16", "auto"). ``devices`` > 1 embeds in that many
    processes (Lightning re-runs this script once per further device: call it from a
    script); then global rank 0 gets the index, equal to one process's, the others None.
    """
    from twinsight.index import build_index as index_collection

    return index_collection(
        load_model(model),
        _collection(data),
        model_path=None if _model_path(model) is None else str(_model_path(model)),
        index_type=index_type,
        batch_size=batch_size,
        shard=shard,
        nprobe=nprobe,
        ef_search=ef_search,
        progress=progress,
        device=device,
        precision=precision,
        devices=devices,
    )


def load_index(path: str | os.PathLike) -> SimilarityIndex:
    """Read an index folder written by :func:`build_index` and ``SimilarityIndex.save``."""
    return SimilarityIndex.load(path)


def merge_indexes(shards: Sequence[IndexLike], *, index_type: str | None = None) -> SimilarityIndex:
    """One index from shards built with the same model (``index --shard i/n``)."""
    from twinsight.index import merge

    return merge([_index(s) for s in shards], index_type=index_type)


def _index(index: IndexLike) -> SimilarityIndex:
    return index if isinstance(index, SimilarityIndex) else SimilarityIndex.load(index)


def index_model(index: SimilarityIndex, model: ModelLike | None = None) -> ModelBundle:
    """The model of an index: ``model`` when given (checked), else the one it records."""
    if model is None:
        recorded = index.meta.get("model_path")
        if not recorded:
            raise TwinsightError("the index does not record its model's path; pass model=RUN")
        if not Path(recorded).exists():
            raise TwinsightError(
                f"the index was built with model '{recorded}', which no longer exists; pass "
                f"model=RUN (--model RUN): a model with fingerprint {index.model_fingerprint}"
            )
        model = recorded
    bundle = load_model(model)
    index.check_model(bundle.fingerprint, None if isinstance(model, ModelBundle) else str(model))
    return bundle


def _queries(images: ImagesLike, bundle: ModelBundle) -> Queries:
    """Query images from paths or arrays, brought to the model's input."""
    from twinsight.inference import load_queries, queries_from_arrays

    if isinstance(images, (str, os.PathLike)):
        return load_queries([str(images)], bundle.preprocessing)
    if isinstance(images, np.ndarray):
        return queries_from_arrays(images, bundle.preprocessing)
    if not isinstance(images, Sequence):
        raise TwinsightError(
            "images must be a path, a list of paths, or an array [H, W], [C, H, W] or "
            f"[N, C, H, W]; got {type(images).__name__}"
        )
    images = list(images)
    if images and all(isinstance(i, (str, os.PathLike)) for i in images):
        return load_queries([str(i) for i in images], bundle.preprocessing)
    if images and all(isinstance(i, np.ndarray) for i in images):
        return queries_from_arrays(np.stack(images), bundle.preprocessing)
    raise TwinsightError(
        "images must be a path, a list of paths, or an array [H, W], [C, H, W] or "
        f"[N, C, H, W]; got {type(images).__name__}"
    )


def search(
    index: IndexLike,
    images: ImagesLike,
    k: int = 10,
    *,
    model: ModelLike | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    distance: float | None = None,
    pixel_scale: float | None = None,
    beam: str | float | None = None,
    noise: float | None = None,
) -> SearchResult:
    """The ``k`` most similar indexed items for each query image (reverse image search).

    Observations (FITS with a celestial WCS, or ``pixel_scale`` given) are brought onto the
    library's grid first, as :func:`match` does.
    """
    from twinsight.inference import embed_queries
    from twinsight.validation import check_positive_int

    k = check_positive_int(k, "k")
    index = _index(index)
    bundle = index_model(index, model)
    queries, observations = _observed_queries(
        images, index, bundle, distance=distance, pixel_scale=pixel_scale, beam=beam, noise=noise
    )
    sims, positions = index.search(
        embed_queries(bundle, queries), min(k, len(index)), nprobe=nprobe, ef_search=ef_search
    )
    return SearchResult(
        query_names=queries.names,
        similarities=sims,
        positions=positions,
        items=index.items,
        param_columns=index.param_columns,
        k_requested=k,
        model_fingerprint=index.model_fingerprint,
        source=index.meta.get("source"),
        query_images=queries.raw,
        observations=[None if o is None else o.to_dict() for o in observations],
    )


def compare(
    model: ModelLike,
    image_a: ImagesLike,
    image_b: ImagesLike,
    *,
    distance: float | None = None,
    pixel_scale: float | None = None,
    beam: str | float | None = None,
    noise: float | None = None,
) -> Comparison:
    """Verification: the similarity of two images, its calibrated probability and decision.

    An observation (FITS with a celestial WCS, or ``pixel_scale`` given) is brought onto the
    grid the model was trained on first, as :func:`match` does.
    """
    from twinsight.inference import decision_threshold, embed_queries, probability

    bundle = load_model(model)
    intake = {"distance": distance, "pixel_scale": pixel_scale, "beam": beam, "noise": noise}
    qa, _ = _observed_queries(image_a, None, bundle, **intake)
    qb, _ = _observed_queries(image_b, None, bundle, **intake)
    if len(qa.items) != 1 or len(qb.items) != 1:
        raise TwinsightError(
            f"compare takes one image on each side; got {len(qa.items)} and {len(qb.items)}"
        )
    ea, eb = embed_queries(bundle, qa)[0], embed_queries(bundle, qb)[0]
    score = float(np.sum(ea * eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))
    cal = bundle.calibration
    if not cal:
        return Comparison(score)
    threshold = decision_threshold(cal)
    return Comparison(score, float(probability(score, cal)), threshold, bool(score >= threshold))


def match(
    index: IndexLike,
    images: ImagesLike,
    *,
    model: ModelLike | None = None,
    top: int | None = None,
    threshold: float | None = None,
    weighting: str | None = None,
    temperature: float | None = None,
    exclude_systems: Sequence[Any] | Any | None = None,
    params: Sequence[str] | None = None,
    instrument: Instrument | str | None = None,
    distance: float | None = None,
    pixel_scale: float | None = None,
    beam: str | float | None = None,
    noise: float | None = None,
    reembed: bool = False,
) -> ParameterEstimate | list[ParameterEstimate]:
    """Best-match parameter estimates of observed images against an index of simulations.

    ``images`` is one image (a path or an array [H, W] / [C, H, W]): one
    :class:`ParameterEstimate` is returned; for several (a list, or [N, C, H, W]) a list.

    A FITS observation with a celestial WCS (or any image with ``pixel_scale``) goes
    through the intake (:func:`twinsight.intake.read_observation`): its pixel scale
    (WCS and ``distance`` in pc, or ``pixel_scale`` in AU/pixel), beam (header or ``beam``)
    and noise (header, ``noise``, or estimated) are derived, and it is centred and resampled
    onto the library's grid. The intervals are then calibrated for that instrument
    (``instrument`` overrides it, e.g. ``"beam=2,snr=30"``), and each estimate reports its
    typicality. ``reembed`` matches against the library seen through that instrument too
    (embedded again, cached per instrument: better recovery, about 25 s per new
    instrument for 8,000 images on two cores). The number of matches, the weighting and
    the interval inflation are the calibrated ones unless ``top`` / ``threshold`` /
    ``weighting`` / ``temperature`` are given. ``exclude_systems`` leaves systems out of
    the matches.
    """
    from twinsight.inference import embed_queries

    index = _index(index)
    bundle = index_model(index, model)
    columns = list(params) if params else index.param_columns
    index.check_params(columns)
    given = parse_instrument(instrument) if isinstance(instrument, str) else instrument
    queries, observations = _observed_queries(
        images, index, bundle, distance=distance, pixel_scale=pixel_scale, beam=beam, noise=noise
    )
    if top is not None and top > len(index):
        log.info(
            "top %d is larger than the index (%d items); using %d", top, len(index), len(index)
        )
        top = len(index)
    excluded = _check_excluded(index, exclude_systems)
    if len(excluded) > 1:
        index = _without_systems(index, excluded)
    instruments = [given or (o.instrument if o is not None else None) for o in observations]
    queries = _at_library_noise(queries, instruments, index, bundle)
    estimates = _estimates_by_instrument(
        index, bundle, embed_queries(bundle, queries), queries, instruments, observations,
        columns=columns, excluded=excluded[0] if len(excluded) == 1 else None,
        settings={"top": top, "threshold": threshold, "weighting": weighting,
                  "temperature": temperature}, reembed=reembed,
    )  # fmt: skip
    single = isinstance(images, (str, os.PathLike)) or (
        isinstance(images, np.ndarray) and images.ndim < 4
    )
    return estimates[0] if single and len(estimates) == 1 else estimates


def _at_library_noise(
    queries: Queries, instruments: list[Instrument | None], index: SimilarityIndex, bundle: Any
) -> Queries:
    """Observations cleaner than the simulations get noise up to the library's own level."""
    from twinsight.inference.queries import to_library_noise

    if bundle.preprocessing.normalize != "minmax":
        return queries
    snrs = [False if inst is None else inst.snr for inst in instruments]
    return to_library_noise(queries, snrs, index.meta.get("library_snr"))


def _observed_queries(
    images: ImagesLike, index: SimilarityIndex | None, bundle: ModelBundle, **intake: Any
) -> tuple[Queries, list[Any]]:
    """The queries, and for each the intake's :class:`~twinsight.intake.Observation` or None.

    FITS files with a celestial WCS, and any path or array when ``pixel_scale`` is given,
    go through the intake; other images are taken as already on the library's grid.
    """
    paths = _paths(images)
    wants = intake.get("distance") is not None or intake.get("pixel_scale") is not None
    if paths is None and intake.get("pixel_scale") is None:
        queries = _queries(images, bundle)
        return queries, [None] * len(queries.items)
    from twinsight.inference import load_queries, queries_from_arrays
    from twinsight.intake import needs_intake, observation_from_array, read_observation

    if paths is not None and not any(wants or needs_intake(p) for p in paths):
        queries = load_queries(paths, bundle.preprocessing)
        return queries, [None] * len(queries.items)
    grid = _library_grid(index, bundle)
    if paths is None:
        array = np.asarray(images, dtype=np.float32)
        batch = array.reshape((-1, *array.shape[-2:])) if array.ndim >= 2 else array
        given = {k: intake.get(k) for k in ("pixel_scale", "beam", "noise")}
        obs = [
            observation_from_array(img, **grid, **given, source=f"array[{i}]")
            for i, img in enumerate(batch)
        ]
        queries = queries_from_arrays(np.stack([o.image for o in obs]), bundle.preprocessing)
        return queries, obs
    obs, items = [], []
    for path in paths:
        if not (wants or needs_intake(path)):
            raise TwinsightError(
                f"'{path}' has no celestial WCS while other queries do; match observations "
                "and library-grid images separately, or give --pixel-scale"
            )
        obs.append(read_observation(path, **grid, **intake))
        items.append(open_collection(path).items)  # truths and columns; the image is obs'
    import pandas as pd

    queries = queries_from_arrays(np.stack([o.image for o in obs]), bundle.preprocessing)
    queries.items = pd.concat(items, ignore_index=True)
    queries.items["key"] = [str(p) for p in paths]
    queries.raw = [o.image[None] for o in obs]
    return queries, obs


def _paths(images: ImagesLike) -> list[str] | None:
    if isinstance(images, (str, os.PathLike)):
        return [str(images)]
    if (
        isinstance(images, Sequence)
        and images
        and all(isinstance(i, (str, os.PathLike)) for i in images)
    ):
        return [str(i) for i in images]
    return None


def _library_grid(index: SimilarityIndex | None, bundle: ModelBundle) -> dict[str, Any]:
    """The library's pixel scale (AU/pixel: index.json, else the model's training data) and
    image size (the model's)."""
    scale = (index.meta.get("pixel_scale_au") if index is not None else None) or (
        bundle.training.get("pixel_scale_au")
    )
    if not scale:
        raise TwinsightError(
            "neither the index nor the model records the library's pixel scale "
            "(pixel_scale_au), so an observation cannot be brought onto its grid; give "
            "images already on the library's grid, or rebuild the index with this version of "
            "twinsight from a simulated set"
        )
    return {"library_pixel_scale": float(scale), "library_size": int(bundle.preprocessing.size[0])}


def _estimates_by_instrument(
    index: SimilarityIndex,
    bundle: ModelBundle,
    embeddings: np.ndarray,
    queries: Queries,
    instruments: list[Instrument | None],
    observations: list[Any],
    *,
    columns: list[str],
    excluded: str | None,
    settings: dict[str, Any],
    reembed: bool = False,
) -> list[ParameterEstimate]:
    """Estimates of each query, calibrated for its instrument (one calibration per instrument);
    with ``reembed``, against the library seen through it."""
    from twinsight.inference import estimate_parameters, query_truths

    truths = query_truths(queries, columns)
    groups: dict[str | None, list[int]] = {}
    for q, inst in enumerate(instruments):
        groups.setdefault(None if inst is None else inst.key, []).append(q)
    out: list[ParameterEstimate | None] = [None] * len(instruments)
    for rows in groups.values():
        inst = instruments[rows[0]]
        library = index
        if reembed and inst is not None:
            from twinsight.inference.instrumented import library_through

            library = library_through(bundle, index, inst)
        matching, calibrated_for, warnings = _calibration_for(library, bundle, inst)
        estimates = estimate_parameters(
            library, embeddings[rows], exclude_systems=excluded, columns=columns,
            matching=matching, truths=truths[rows], query_names=[queries.names[q] for q in rows],
            **settings,
        )  # fmt: skip
        for q, est in zip(rows, estimates, strict=True):
            out[q] = _described(est, inst, calibrated_for, matching, observations[q], warnings)
    return [e for e in out if e is not None]


def _calibration_for(
    index: SimilarityIndex, bundle: ModelBundle, inst: Instrument | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    """The matching calibration for ``inst`` (the stored clean one when None), the instrument
    it was fitted for, and warnings (outside the trained range, no validation systems)."""
    from twinsight.inference import calibrate_for_instrument, range_warnings
    from twinsight.inference.instrumented import calibration_set_path

    clean = bundle.matching or index.meta.get("matching")
    if inst is None:
        return clean, None, []
    if calibration_set_path(bundle) is None:
        return (
            clean,
            None,
            [
                f"not calibrated for {inst.describe()}: the model keeps no validation systems; "
                "its intervals hold for clean simulations only"
            ],
        )
    matching = calibrate_for_instrument(bundle, index, inst)
    return matching, matching.get("instrument"), range_warnings(bundle, inst)


def _described(
    est: ParameterEstimate,
    inst: Instrument | None,
    calibrated_for: dict[str, Any] | None,
    matching: dict[str, Any] | None,
    observation: Any,
    warnings: list[str],
) -> ParameterEstimate:
    """The estimate with its instrument, observation, typicality and warnings attached."""
    from twinsight.inference import typicality

    est.instrument = calibrated_for
    est.observation = None if observation is None else observation.to_dict()
    est.warnings = list(warnings)
    if calibrated_for is not None and len(est.similarities):
        est.typicality = typicality(matching, float(est.similarities[0]))
        if est.typicality and est.typicality["atypical"]:
            est.warnings.append(
                f"this observation looks like none of the simulations seen through "
                f"{inst.describe()}: its best-match similarity "
                f"{est.typicality['best_similarity']:.3f} is below all but "
                f"{est.typicality['p_value']:.1%} of theirs; treat the estimate with care"
            )
    for w in est.warnings:
        log.warning("%s: %s", est.query, w)
    return est


def _check_excluded(index: SimilarityIndex, exclude: Sequence[Any] | Any | None) -> list[str]:
    """The systems to leave out, each checked against the index's ``system`` column."""
    if exclude is None:
        return []
    wanted = [exclude] if isinstance(exclude, (str, int, np.integer)) else list(exclude)
    if not wanted:
        return []
    if "system" not in index.items.columns:
        raise TwinsightError(
            "cannot exclude systems: the index has no 'system' column (its items are "
            f"{list(index.items.columns)})"
        )
    known = set(index.items["system"].astype(str))
    unknown = [str(s) for s in wanted if str(s) not in known]
    if unknown:
        raise TwinsightError(
            f"exclude_systems: {unknown} are not systems of the index; it holds "
            f"{len(known)} systems, e.g. {sorted(known)[:3]}"
        )
    return [str(s) for s in wanted]


def _without_systems(index: SimilarityIndex, systems: Sequence[str]) -> SimilarityIndex:
    keep = ~index.items["system"].astype(str).isin(systems).to_numpy()
    if not keep.any():
        raise TwinsightError("exclude_systems left no items in the index")
    return index.subset(keep)


def evaluate(
    model: ModelLike,
    data: Any,
    *,
    split: str | None = "test",
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    baseline: str = "auto",
    instruments: Sequence[Instrument | str] = (),
) -> Evaluation:
    """Retrieval, verification, similarity ranking and parameter recovery on one split.

    ``baseline="auto"`` adds raw pixels and PCA (fitted on the ``split == "train"`` rows,
    d = the model's embedding dimension) by the same protocol under ``baselines``, and
    ``worse_than_pca``; ``"none"`` skips them. ``instruments`` (e.g. ``["beam=2,snr=30"]``
    or :func:`twinsight.instrument.instrument_grid`) adds recovery and coverage through each,
    under ``instruments``.
    """
    from twinsight.evaluation import evaluate as evaluate_model

    collection = _collection(data)
    parsed = [parse_instrument(i) if isinstance(i, str) else i for i in instruments]
    raw = evaluate_model(
        load_model(model), collection, split=split, batch_size=batch_size, seed=seed,
        progress=progress, baseline=baseline, instruments=parsed,
    )  # fmt: skip
    metrics = {k: v for k, v in raw.items() if not k.startswith("_")}
    arrays = {"pairs": raw["_pairs"]} if "_pairs" in raw else {}
    if "_arrays" in raw:
        arrays["recovery"] = raw["_arrays"]
    return Evaluation(metrics, collection, split, arrays)


def fid(
    model: ModelLike,
    set_a: Any,
    set_b: Any,
    *,
    batch_size: int = 256,
    instrument: Instrument | str | None = None,
    seed: int = 0,
) -> FidResult:
    """Fréchet distance between two image sets in the model's embedding space.

    With ``instrument`` (e.g. ``"beam=2,snr=30"``), ``set_b`` (the library) is seen through
    it first, so that a set of observations is compared with the simulations as that
    instrument would show them rather than with clean renderings.
    """
    from twinsight.embedding import embed_collection, embed_images
    from twinsight.evaluation import frechet_distance
    from twinsight.instrument import degrade

    bundle = load_model(model)
    ea = embed_collection(bundle, _collection(set_a), batch_size=batch_size)
    library = _collection(set_b)
    if instrument is None:
        eb = embed_collection(bundle, library, batch_size=batch_size)
    else:
        inst = parse_instrument(instrument) if isinstance(instrument, str) else instrument
        rng = np.random.default_rng(seed)
        eb = np.concatenate([
            embed_images(bundle.encoder, degrade(images, inst, seed=rng), bundle.preprocessing,
                         batch_size=batch_size)
            for _, images in library.iter_batches(batch_size)
        ])  # fmt: skip
    return FidResult(**frechet_distance(ea, eb))


def info(source: Any, *, image_size: int | None = None, hdu: str | None = None) -> CollectionInfo:
    """Describe a collection: items, image shape, labels, parameters, systems, splits."""
    from twinsight.data.readers import summarize_collection

    collection = open_collection(source, image_size=image_size, hdu=hdu)
    return CollectionInfo(summarize_collection(collection, source=str(source)))


def pack(
    source: Any,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    image_size: int | None = None,
    batch_size: int = 256,
    hdu: str | None = None,
) -> Collection:
    """Pack any collection into one HDF5 file (the fast path for training and indexing).

    Written atomically: an existing ``out`` is refused unless ``overwrite``, and a failure
    midway leaves no partial file. Returns the packed collection.
    """
    from twinsight.data.readers import pack_collection
    from twinsight.fsutil import check_output_path

    with output_lock(out):  # one writer: a second pack to the same OUT is refused now
        check_output_path(out, overwrite)  # refuse early, before scanning a large source
        collection = open_collection(source, image_size=image_size, hdu=hdu)
        path = pack_collection(collection, out, overwrite=overwrite, batch_size=batch_size)
    return open_collection(path)


def tune(
    data: str | os.PathLike | Collection,
    out: str | os.PathLike,
    config: TrainConfig | dict | str | os.PathLike | None = None,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str = "twinsight",
    space: str | os.PathLike | dict | None = None,
    metric: str = "auto",
    pruner: str = "asha",
    epochs: int | None = None,
    resume: bool = False,
    retrain_best: bool = False,
    on: str = "train+val",
    seed: int = 0,
    baseline: bool = True,
    enqueue: Sequence[dict[str, Any]] = (),
    progress: bool = True,
    **overrides: Any,
) -> Any:
    """Search hyperparameters with Optuna; every trial is a :func:`train` run.

    STUDY_DIR (``out``) receives ``study.db`` (unless ``storage`` is given: any Optuna
    URL, or ``journal:///path.log`` for a shared file system), ``trials/NNNN`` (each
    trial's run), ``best.yaml`` (loadable by ``train --config``), ``trials.csv`` and
    figures. ``space`` (a YAML path or dict of dotted fields) overrides entries of the
    default space for the target type. ``baseline`` runs the base configuration first,
    so the search is compared with the defaults in the same study. ``trials`` counts
    this process's trials; several processes on one storage share the study.
    Returns a :class:`twinsight.tuning.TuneResult`.
    """
    from twinsight import tuning
    from twinsight.training.targets import resolve_targets

    study_dir = Path(out)
    if study_dir.exists() and not resume:
        raise TwinsightError(
            f"study folder '{study_dir}' exists; pass --resume to continue (or join) its "
            "study, or choose another --out"
        )
    if on not in ("train", "train+val"):
        raise TwinsightError(f"--on must be 'train' or 'train+val', got '{on}'")
    if trials is not None and trials < 1:
        raise TwinsightError(f"--trials must be >= 1, got {trials}")
    cfg = resolve_config(config, **overrides)
    final_epochs = cfg.trainer.epochs  # the full run's, for best.yaml; trials run shorter
    cfg = apply_overrides(cfg, {"trainer.epochs": epochs or cfg.trainer.epochs or
                                tuning.TRIAL_EPOCHS})  # fmt: skip
    collection = data if isinstance(data, Collection) else open_collection(data)
    kind = resolve_targets(cfg, collection).kind
    entries = tuning.default_space(kind)
    user = tuning.load_space(space) if isinstance(space, str | os.PathLike) else space
    entries.update({tuning.canonical_name(k): v for k, v in (user or {}).items()})
    checked = tuning.check_space(entries, cfg, source=f"search space {space or '(default)'}")
    metric = tuning.resolve_metric(metric)
    url = tuning.storage_url(storage, study_dir)
    pruner_obj = tuning.make_pruner(pruner, cfg.trainer.epochs)
    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    try:
        study = tuning.open_study(
            tuning.open_storage(url),
            study_name,
            signature={"space": checked, "metric": metric},
            seed=seed,
            pruner=pruner_obj,
        )
    except TwinsightError:
        if created:  # a storage we could not open leaves no STUDY_DIR behind
            shutil.rmtree(study_dir, ignore_errors=True)
        raise
    if baseline and not study.get_trials(deepcopy=False):
        study.enqueue_trial(
            tuning.baseline_point(cfg, checked, kind), user_attrs={"baseline": True}
        )
    for point in enqueue:
        study.enqueue_trial({tuning.canonical_name(k): v for k, v in point.items()})
    objective = tuning.Objective(train, collection, cfg, checked, study_dir / "trials", metric)
    n_trials = trials if trials is not None or timeout is not None else 20
    tuning.run_study(study, objective, n_trials=n_trials, timeout=timeout, progress=progress)
    outputs = (study, study_dir, url, metric, collection, final_epochs)
    return _tune_result(*outputs, retrain_best, on)


def _tune_result(study, study_dir, url, metric, collection, final_epochs, retrain_best, on):  # noqa: ANN001, ANN202
    """Write best.yaml, trials.csv and the figures; retrain the best config when asked."""
    from twinsight import tuning

    best_path, csv = tuning.write_outputs(study, study_dir, final_epochs)
    figures = tuning.write_figures(study, study_dir)
    n = tuning.counts(study)
    best = tuning.best_trial(study)
    result = tuning.TuneResult(
        study_dir=study_dir,
        study_name=study.study_name,
        storage=url,
        metric=metric,
        n_trials=n["total"],
        n_complete=n["complete"],
        n_pruned=n["pruned"],
        n_failed=n["failed"],
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_config=best_path,
        trials_csv=csv,
        figures=figures,
        study=study,
    )
    if retrain_best:
        if best_path is None:
            raise TwinsightError(
                f"--retrain-best: study '{study.study_name}' has no completed trial"
            )
        data = tuning.merge_val_into_train(collection) if on == "train+val" else collection
        run = train(data, study_dir / "best_run", load_config(best_path), overwrite=True)
        result.best_run = run.run
        result.best_run_score = run.metrics["final"].get(metric)
    return result
