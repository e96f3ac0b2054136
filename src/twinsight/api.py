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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write one simulated telescope observation (FITS) and return what is true of it."""
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
) -> SearchResult:
    """The ``k`` most similar indexed items for each query image (reverse image search)."""
    from twinsight.inference import embed_queries
    from twinsight.validation import check_positive_int

    k = check_positive_int(k, "k")
    index = _index(index)
    bundle = index_model(index, model)
    queries = _queries(images, bundle)
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
    )


def compare(model: ModelLike, image_a: ImagesLike, image_b: ImagesLike) -> Comparison:
    """Verification: the similarity of two images, its calibrated probability and decision."""
    from twinsight.inference import decision_threshold, embed_queries, probability

    bundle = load_model(model)
    qa, qb = _queries(image_a, bundle), _queries(image_b, bundle)
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
) -> ParameterEstimate | list[ParameterEstimate]:
    """Best-match parameter estimates of observed images against an index of simulations.

    ``images`` is one image (a path or an array [H, W] / [C, H, W]): one
    :class:`ParameterEstimate` is returned; for several (a list, or [N, C, H, W]) a list.
    The number of matches, the weighting and the interval inflation are the ones
    calibrated at training time unless ``top`` / ``threshold`` / ``weighting`` /
    ``temperature`` are given. ``exclude_systems`` leaves systems out of the matches.
    """
    from twinsight.inference import embed_queries, estimate_parameters, query_truths

    index = _index(index)
    bundle = index_model(index, model)
    columns = list(params) if params else index.param_columns
    index.check_params(columns)
    queries = _queries(images, bundle)
    if top is not None and top > len(index):
        log.info(
            "top %d is larger than the index (%d items); using %d", top, len(index), len(index)
        )
        top = len(index)
    excluded = _check_excluded(index, exclude_systems)
    if len(excluded) > 1:
        index = _without_systems(index, excluded)
    estimates = estimate_parameters(
        index,
        embed_queries(bundle, queries),
        top=top,
        threshold=threshold,
        weighting=weighting,
        temperature=temperature,
        exclude_systems=excluded[0] if len(excluded) == 1 else None,
        columns=columns,
        matching=bundle.matching or index.meta.get("matching"),
        truths=query_truths(queries, columns),
        query_names=queries.names,
    )
    single = isinstance(images, (str, os.PathLike)) or (
        isinstance(images, np.ndarray) and images.ndim < 4
    )
    return estimates[0] if single and len(estimates) == 1 else estimates


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
) -> Evaluation:
    """Retrieval, verification, similarity ranking and parameter recovery on one split.

    ``baseline="auto"`` adds raw pixels and PCA (fitted on the ``split == "train"`` rows,
    d = the model's embedding dimension) by the same protocol under ``baselines``, and
    ``worse_than_pca``; ``"none"`` skips them.
    """
    from twinsight.evaluation import evaluate as evaluate_model

    collection = _collection(data)
    raw = evaluate_model(
        load_model(model), collection, split=split, batch_size=batch_size, seed=seed,
        progress=progress, baseline=baseline,
    )  # fmt: skip
    metrics = {k: v for k, v in raw.items() if not k.startswith("_")}
    arrays = {"pairs": raw["_pairs"]} if "_pairs" in raw else {}
    if "_arrays" in raw:
        arrays["recovery"] = raw["_arrays"]
    return Evaluation(metrics, collection, split, arrays)


def fid(model: ModelLike, set_a: Any, set_b: Any, *, batch_size: int = 256) -> FidResult:
    """Fréchet distance between two image sets in the model's embedding space."""
    from twinsight.embedding import embed_collection
    from twinsight.evaluation import frechet_distance

    bundle = load_model(model)
    ea = embed_collection(bundle, _collection(set_a), batch_size=batch_size)
    eb = embed_collection(bundle, _collection(set_b), batch_size=batch_size)
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
    cfg = apply_overrides(cfg, {"trainer.epochs": epochs})
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
    return _tune_result(study, study_dir, url, metric, collection, retrain_best, on)


def _tune_result(study, study_dir, url, metric, collection, retrain_best, on):  # noqa: ANN001, ANN202
    """Write best.yaml, trials.csv and the figures; retrain the best config when asked."""
    from twinsight import tuning

    best_path, csv = tuning.write_outputs(study, study_dir)
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
