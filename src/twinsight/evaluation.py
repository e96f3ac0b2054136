"""Evaluation of a trained model: retrieval, verification, similarity ranking, parameter recovery.

JSON keys (stable; documented in the README, "JSON keys"):

- labels: ``precision_at_1``, ``r_precision``, ``mean_average_precision_at_r``,
  ``recall_at_k`` ({k: value}), ``k``; verification on balanced pairs:
  ``verification.roc_auc``, ``.eer``, ``.accuracy``, ``.threshold``;
- parameters: ``spearman`` (predicted cosine vs target similarity on pairs),
  ``parameters.<name>.r2`` / ``.rmse`` (of the median, in the parameter's scale
  space: log10 or linear), ``.coverage_68``, ``.coverage_95``, ``.narrowing``,
  ``.scale``; ``calibration_curve`` (expected vs observed coverage per level);
  ``matching`` (the number of matches used, whether calibrated); ``diagnostics``
  (simulation-based calibration of the matches as posterior samples,
  :mod:`twinsight.diagnostics`): ``diagnostics.tarp.atc`` / ``.ks_pvalue`` / ``.alpha``
  / ``.ecp`` (joint coverage), ``diagnostics.sbc.<name>.ks_pvalue`` / ``.edges`` /
  ``.hist`` (rank of the truth), ``diagnostics.coverage.levels`` / ``.observed.<name>``
  (marginal expected coverage at 0.05 ... 0.95), ``diagnostics.samples``;
- baselines: ``baselines.pixels.*`` and ``baselines.pca.*`` with the model's keys, by the
  same protocol; ``worse_than_pca`` and ``compared_on`` (MAP@R, or Spearman).

Parameter recovery matches every evaluated item against the whole collection
*without its own system*; the matching defaults come from ``bundle.matching``
(calibrated on validation systems at training time), never from this set.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from twinsight.data.targets import pair_similarity
from twinsight.diagnostics import COVERAGE_LEVELS, posterior_diagnostics
from twinsight.errors import TwinsightError
from twinsight.index import SimilarityIndex
from twinsight.inference import (
    DEFAULT_TOP,
    LEVELS,
    balanced_pairs,
    choose_scale,
    coverage,
    decision_threshold,
    inflation_factors,
    level_index,
    pair_groups,
    recovery_arrays,
    to_scale,
    with_reported_levels,
)
from twinsight.training.metrics import retrieval_metrics as _retrieval_scores

log = logging.getLogger(__name__)


# -- labels ---------------------------------------------------------------------------------------
def retrieval_metrics(
    embeddings: np.ndarray, labels: np.ndarray, *, k: int | None = None
) -> dict[str, Any]:
    """precision@1, R-precision, MAP@R (pytorch-metric-learning) and recall@{1,5,10}.

    The first three are :func:`twinsight.training.metrics.retrieval_metrics`, the
    ones training validates with. ``k`` defaults to min(largest class size,
    :data:`~twinsight.training.metrics.MAX_RETRIEVAL_K`) so large sets do not
    exhaust memory; the query set is its own reference (each item's self-match
    excluded).
    """
    labels = np.asarray(labels)
    _, codes = np.unique(labels.astype(str), return_inverse=True)
    codes = codes.reshape(-1)
    if np.bincount(codes).max() < 2:
        raise TwinsightError("retrieval metrics need at least one label with two or more items")
    scores = _retrieval_scores(embeddings, codes, k=k)
    out = {name: scores[name] for name in scores if name != "k"}
    out["recall_at_k"] = _recall_at_k(embeddings, codes, (1, 5, 10))
    out["k"] = scores["k"]
    return out


def _recall_at_k(embeddings: np.ndarray, codes: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Fraction of queries with at least one same-label item among their k nearest others."""
    idx = SimilarityIndex.build(embeddings, _key_table(len(codes)), model_fingerprint="eval")
    kmax = min(max(ks) + 1, len(codes))
    _, pos = idx.search(embeddings, kmax)
    self_mask = pos == np.arange(len(codes))[:, None]
    out = {}
    for k in ks:
        hits = []
        for q in range(len(codes)):
            others = pos[q][~self_mask[q]][:k]
            hits.append(bool((codes[others] == codes[q]).any()))
        out[str(k)] = float(np.mean(hits))
    return out


def _key_table(n: int):
    import pandas as pd

    return pd.DataFrame({"key": np.arange(n).astype(str)})


def verification_metrics(
    embeddings: np.ndarray,
    groups: np.ndarray,
    calibration: dict | None,
    *,
    n_pairs: int = 2000,
    seed: int = 0,
    eer_threshold: bool = False,
) -> dict[str, Any]:
    """ROC-AUC, EER and accuracy at the calibrated threshold on balanced same/different pairs.

    ``eer_threshold`` (baselines, which have no calibration): the accuracy is taken at the
    equal-error threshold of these pairs, an optimistic figure for the baseline.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    i, j, same = balanced_pairs(groups, n_pairs, seed)
    scores = np.sum(embeddings[i] * embeddings[j], axis=1)
    fpr, tpr, cuts = roc_curve(same, scores)
    fnr = 1 - tpr
    e = int(np.nanargmin(np.abs(fnr - fpr)))
    if eer_threshold:
        threshold, source = float(min(cuts[e], 1.0)), "equal-error point of these pairs"
    elif calibration:
        threshold, source = decision_threshold(calibration), "calibration"
    else:
        threshold, source = 0.5, "default 0.5 (model has no calibration)"
    return {
        "roc_auc": float(roc_auc_score(same, scores)),
        "eer": float((fpr[e] + fnr[e]) / 2),
        "accuracy": float(np.mean((scores >= threshold) == same)),
        "threshold": float(threshold),
        "threshold_source": source,
        "pairs": int(len(same)),
    }


# -- parameters -----------------------------------------------------------------------------------
def target_similarity(
    params_a: np.ndarray, params_b: np.ndarray, reference: np.ndarray
) -> np.ndarray:
    """Seed 000's target for a model without stored targets: the cosine kernel of z-scores.

    Parameters are z-scored over ``reference`` (in log10 for the log-scaled ones)
    and compared with :func:`twinsight.data.targets.pair_similarity`.
    """
    scales = [choose_scale(reference[:, j]) for j in range(reference.shape[1])]
    ref = np.stack([to_scale(reference[:, j], s) for j, s in enumerate(scales)], axis=-1)
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    sd[sd == 0] = 1.0

    def z(p: np.ndarray) -> np.ndarray:
        v = np.stack([to_scale(p[:, j], s) for j, s in enumerate(scales)], axis=-1)
        return (v - mu) / sd

    return pair_similarity(z(params_a), z(params_b), "cosine")


def model_target_similarity(targets: dict | None, items_a: Any, items_b: Any) -> np.ndarray:
    """Pairwise target similarity as the model was trained (its normalizer and kernel)."""
    from twinsight.data.params import ParameterNormalizer

    t = targets or {}
    norm = ParameterNormalizer.from_dict(t["normalizer"])
    # wrapped: ParameterNormalizer.transform accepts "anything with an items table"
    za = norm.transform(SimpleNamespace(items=items_a)).astype(np.float64)
    zb = norm.transform(SimpleNamespace(items=items_b)).astype(np.float64)
    return pair_similarity(za, zb, t.get("kernel", "cosine"), float(t.get("width", 1.0)))


def similarity_ranking(
    embeddings: np.ndarray,
    params: np.ndarray,
    *,
    n_pairs: int = 5000,
    seed: int = 0,
    items: Any = None,
    targets: dict | None = None,
) -> dict[str, Any]:
    """Spearman correlation of predicted similarity (cosine -> [0,1]) vs target, on random pairs."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    n = len(embeddings)
    i = rng.integers(0, n, size=n_pairs)
    j = rng.integers(0, n, size=n_pairs)
    keep = i != j
    i, j = i[keep], j[keep]
    predicted = (np.sum(embeddings[i] * embeddings[j], axis=1) + 1) / 2
    t = targets or {}
    if items is not None and t.get("kind") == "params" and t.get("normalizer"):
        target = model_target_similarity(
            targets,
            items.iloc[i].reset_index(drop=True),
            items.iloc[j].reset_index(drop=True),
        )
    else:
        target = target_similarity(params[i], params[j], params)
    rho = spearmanr(predicted, target).statistic
    return {"spearman": float(rho), "pairs": (i, j, predicted, target)}


def parameter_recovery(
    pool: SimilarityIndex,
    query_embeddings: np.ndarray,
    query_items: Any,
    *,
    matching: dict | None,
    columns: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Match each query against ``pool`` without its own system; R^2, RMSE, coverage, narrowing.

    ``diagnostics`` treats each query's matches as posterior samples (TARP, SBC ranks,
    marginal expected coverage; :func:`twinsight.diagnostics.posterior_diagnostics`),
    widened as the reported intervals are when the matching is calibrated; ``seed``
    draws TARP's reference points.
    """
    columns = pool.param_columns if columns is None else list(columns)
    pool.check_params(columns)
    if "system" not in query_items.columns:
        raise TwinsightError(
            "parameter recovery needs a 'system' column so that an item is never matched "
            "against its own system"
        )
    m = matching or {}
    top = int(m.get("top") or DEFAULT_TOP)
    levels = with_reported_levels(m.get("levels", LEVELS))
    prior = pool.params(columns)
    stored = m.get("scales") or {}
    scales = [stored.get(c) or choose_scale(prior[:, j]) for j, c in enumerate(columns)]
    inflation = inflation_factors(m, columns, levels) if m.get("inflation") else None
    arr = recovery_arrays(
        pool,
        query_embeddings,
        query_items["system"].astype(str).tolist(),
        top=top,
        columns=columns,
        weighting=m.get("weighting", "uniform"),
        temperature=m.get("temperature"),
        levels=levels,
        inflation=inflation,
        scales=scales,
    )
    truth = np.stack(
        [
            to_scale(query_items[c].to_numpy(dtype=np.float64), scales[j])
            for j, c in enumerate(columns)
        ],
        axis=-1,
    )
    med = arr["median"]
    covs = np.stack([coverage(truth, arr["lo"][i], arr["hi"][i]) for i in range(len(levels))])
    i68, i95 = level_index(levels, 0.68), level_index(levels, 0.95)
    out: dict[str, Any] = {}
    for j, c in enumerate(columns):
        resid = truth[:, j] - med[:, j]
        var = np.var(truth[:, j])
        width = arr["hi"][i68][:, j] - arr["lo"][i68][:, j]
        out[c] = {
            "scale": "log10" if scales[j] == "log" else "linear",
            "r2": float(1 - np.mean(resid**2) / var) if var > 0 else float("nan"),
            "rmse": float(np.sqrt(np.mean(resid**2))),
            "coverage_68": float(covs[i68, j]),
            "coverage_95": float(covs[i95, j]),
            "narrowing": float(np.mean(width) / arr["prior_width_68"][j])
            if arr["prior_width_68"][j] > 0
            else float("nan"),
        }
    curve = {"levels": levels, "observed": {c: covs[:, j].tolist() for j, c in enumerate(columns)}}
    extras = {"median": med, "truth": truth}
    return {
        "parameters": out,
        "calibration_curve": curve,
        "matching": {"top": top, "calibrated": bool(m.get("inflation")), "pool": len(pool)},
        "diagnostics": _diagnostics(arr, truth, prior, scales, columns, m, query_items, seed),
        "_arrays": extras,
    }


def _diagnostics(
    arr: dict[str, np.ndarray],
    truth: np.ndarray,
    prior: np.ndarray,
    scales: Sequence[str],
    columns: Sequence[str],
    matching: dict,
    query_items: Any,
    seed: int,
) -> dict[str, Any]:
    """Posterior diagnostics of the recovery's matches, inflated as the reported intervals."""
    calibrated = bool(matching.get("inflation"))
    prior_s = np.stack([to_scale(prior[:, j], s) for j, s in enumerate(scales)], axis=-1)
    return posterior_diagnostics(
        arr["values"], arr["weights"], truth, arr["median"],
        names=columns,
        prior=prior_s,
        inflation_68=inflation_factors(matching, columns, [0.68])[0] if calibrated else None,
        coverage_inflation=inflation_factors(matching, columns, COVERAGE_LEVELS)
        if calibrated else None,
        groups=query_items["system"].astype(str).to_numpy(),
        seed=seed,
    )  # fmt: skip


# -- the whole evaluation -------------------------------------------------------------------------
#: What ``baseline=`` accepts: every baseline, or none.
BASELINES = ("auto", "none")


def evaluate(
    bundle: Any,
    collection: Any,
    *,
    split: str | None = "test",
    batch_size: int = 256,
    n_pairs: int = 2000,
    seed: int = 0,
    progress: bool = False,
    baseline: str = "auto",
    instruments: Sequence[Any] = (),
) -> dict[str, Any]:
    """Evaluate ``bundle`` on the ``split`` items of ``collection`` (all items if it has no splits).

    With ``instruments`` (:class:`~twinsight.instrument.Instrument`), parameter recovery is
    measured again for each, under ``instruments.<key>``: the evaluated images seen through
    the instrument, the intervals calibrated for it on the model's validation systems.

    Returns the metrics dict (keys in the module docstring); entries whose key
    starts with ``_`` hold arrays for figures and are not part of the JSON. With
    ``baseline="auto"`` the same metrics, by the same protocol, are computed for raw
    pixels and for PCA (:func:`baseline_embeddings`) under ``baselines.pixels`` and
    ``baselines.pca``, and ``worse_than_pca`` says whether the model lost to PCA.
    """
    from twinsight.embedding import embed_collection

    if baseline not in BASELINES:
        raise TwinsightError(f"unknown baseline '{baseline}'; valid: {', '.join(BASELINES)}")
    mask = _split_mask(collection, split)
    need_pool = collection.has_params and collection.has_systems
    full = embed_collection(
        bundle,
        collection if need_pool else collection.subset(mask),
        batch_size=batch_size,
        progress=progress,
    )
    context = {"n_pairs": n_pairs, "seed": seed, "need_pool": need_pool}
    result: dict[str, Any] = {"data": collection.name, "split": split, "items": int(mask.sum())}
    context["targets"] = getattr(bundle, "targets", None)  # baselines: the model's targets
    result.update(_metrics_from(full, bundle, collection, mask, **context))
    if baseline == "auto":
        base = baseline_embeddings(bundle, collection, mask, need_pool, batch_size)
        result["baselines"] = {
            name: public(_metrics_from(emb, None, collection, mask, **context))
            for name, emb in base.items()
        }
        result.update(_compare_with_pca(result))
    if instruments:
        result["instruments"] = instrument_recovery(
            bundle, collection, mask, full, instruments, batch_size=batch_size, seed=seed
        )
    return result


def instrument_recovery(
    bundle: Any,
    collection: Any,
    mask: np.ndarray,
    full: np.ndarray,
    instruments: Sequence[Any],
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Recovery, coverage and the typicality warning rate through each instrument.

    The pool is the whole collection embedded clean (each query still matched without its
    own system); the queries are the evaluated rows seen through the instrument (seeded);
    the calibration is the instrument's, fitted on the model's validation systems.
    """
    from twinsight.embedding import embed_images
    from twinsight.inference import calibrate_for_instrument, typicality
    from twinsight.instrument import degrade

    if not (collection.has_params and collection.has_systems):
        raise TwinsightError(
            "--instrument measures parameter recovery, so DATA needs parameters and systems"
        )
    from twinsight.index import library_snr as snr_of

    library_snr = snr_of(collection.meta)
    pool = SimilarityIndex.build(
        full, collection.items, model_fingerprint=bundle.fingerprint,
        param_columns=collection.param_columns, extra={"library_snr": library_snr},
    )  # fmt: skip
    items = collection.items[mask].reset_index(drop=True)
    clean = collection.images(np.flatnonzero(mask))
    out: dict[str, Any] = {}
    for k, inst in enumerate(instruments):
        seen = degrade(clean, inst.rounded, seed=seed + 1000 + k, library_snr=library_snr)
        emb = embed_images(bundle.encoder, seen, bundle.preprocessing, batch_size=batch_size)
        matching = calibrate_for_instrument(bundle, pool, inst, use_cache=False, seed=seed)
        rec = parameter_recovery(pool, emb, items, matching=matching)
        best, _ = pool.search_excluding(emb, 1, items["system"].astype(str).tolist())
        p_values = [typicality(matching, float(b))["p_value"] for b in best[:, 0]]
        atypical = float(np.mean(np.asarray(p_values) < matching_alpha()))
        out[inst.rounded.key] = {
            "instrument": inst.rounded.to_dict(),
            "parameters": rec["parameters"],
            "matching": rec["matching"],
            "typicality_warning_rate": atypical,
        }
    return out


def matching_alpha() -> float:
    """The typicality level below which an observation is warned about."""
    from twinsight.inference.instrumented import TYPICALITY_ALPHA

    return TYPICALITY_ALPHA


def _split_mask(collection: Any, split: str | None) -> np.ndarray:
    """The evaluated rows: the ``split`` rows, or all rows when there is no split column."""
    if split and "split" in collection.items.columns:
        mask = collection.items["split"].astype(str).to_numpy() == split
        if not mask.any():
            raise TwinsightError(
                f"collection '{collection.name}' has no split '{split}'; "
                f"available: {collection.splits}"
            )
        return mask
    if split and split != "test":
        raise TwinsightError(
            f"collection '{collection.name}' has no 'split' column, so no split '{split}'"
        )
    log.info(
        "'%s' has no split column: evaluating on all %d items", collection.name, len(collection)
    )
    return np.ones(len(collection), dtype=bool)


def _metrics_from(
    full: np.ndarray,
    bundle: Any,
    collection: Any,
    mask: np.ndarray,
    *,
    n_pairs: int,
    seed: int,
    need_pool: bool,
    targets: dict | None,
) -> dict[str, Any]:
    """Every metric of embeddings ``full`` (the whole collection when ``need_pool``, else the
    evaluated rows); ``bundle`` None for a baseline (no calibration, no matching defaults),
    scored against the same ``targets`` as the model."""
    emb = full[mask] if need_pool else full
    items = collection.items[mask].reset_index(drop=True)
    result: dict[str, Any] = {}
    if collection.has_labels:
        result.update(retrieval_metrics(emb, items["label"].to_numpy()))
    groups = None
    try:
        groups = pair_groups(collection.subset(mask))
    except TwinsightError:
        pass
    if groups is not None:
        try:
            result["verification"] = verification_metrics(
                emb, groups, getattr(bundle, "calibration", None), n_pairs=n_pairs, seed=seed,
                eer_threshold=bundle is None,
            )  # fmt: skip
        except TwinsightError as exc:
            log.info("verification skipped: %s", exc)
    if collection.has_params:
        params = items[collection.param_columns].to_numpy(dtype=np.float64)
        ranking = similarity_ranking(emb, params, seed=seed, items=items, targets=targets)
        result["spearman"] = ranking["spearman"]
        result["_pairs"] = ranking["pairs"]
        if need_pool:
            pool = SimilarityIndex.build(
                full,
                collection.items,
                model_fingerprint=getattr(bundle, "fingerprint", "") if bundle else "baseline",
                param_columns=collection.param_columns,
            )
            matching = getattr(bundle, "matching", None) if bundle is not None else None
            result.update(parameter_recovery(pool, emb, items, matching=matching, seed=seed))
    return result


def baseline_embeddings(
    bundle: Any, collection: Any, mask: np.ndarray, need_pool: bool, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Embeddings of the two baselines, rows as :func:`evaluate` embeds the model's.

    ``pixels``: the model's preprocessed images, flattened and L2-normalized (what the
    network starts from). ``pca``: those pixels projected on the first d principal
    components (d = the model's embedding dimension) fitted on the collection's
    ``split == "train"`` rows only, then L2-normalized; without training rows there is no
    PCA baseline (logged), because fitting it on the evaluated items would let it see
    the test set.
    """
    from twinsight.data.transforms import preprocess

    rows = np.ones(len(collection), dtype=bool) if need_pool else mask
    pixels = _flat_pixels(collection.subset(rows), bundle.preprocessing, preprocess, batch_size)
    out = {"pixels": _unit(pixels)}
    train_rows = _train_rows(collection)
    if train_rows is None:
        log.info("PCA baseline skipped: '%s' has no split=train rows to fit it on", collection.name)
        return out
    train = _flat_pixels(
        collection.subset(train_rows), bundle.preprocessing, preprocess, batch_size
    )
    dim = int(min(_embedding_dim(bundle), len(train), train.shape[1]))
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dim, random_state=0).fit(train)
    out["pca"] = _unit(pca.transform(pixels).astype(np.float32))
    return out


def _train_rows(collection: Any) -> np.ndarray | None:
    if "split" not in collection.items.columns:
        return None
    rows = collection.items["split"].astype(str).str.lower().to_numpy() == "train"
    return rows if rows.sum() >= 2 else None


def _embedding_dim(bundle: Any) -> int:
    dim = getattr(bundle, "embedding_dim", None)
    return int(dim) if dim else 128


def _flat_pixels(collection: Any, preprocessing: Any, preprocess: Any, batch: int) -> np.ndarray:
    chunks = [
        preprocess(x, preprocessing).reshape(len(x), -1) for _, x in collection.iter_batches(batch)
    ]
    return np.concatenate(chunks).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


#: The headline metric compared with PCA: MAP@R for labels, Spearman for parameters.
_HEADLINE = ("mean_average_precision_at_r", "spearman")


def _compare_with_pca(result: dict[str, Any]) -> dict[str, Any]:
    """``worse_than_pca`` (and the metric it was judged on) when there is a PCA baseline."""
    pca = (result.get("baselines") or {}).get("pca")
    if not pca:
        return {}
    for key in _HEADLINE:
        if key in result and key in pca:
            return {
                "worse_than_pca": bool(result[key] < pca[key]),
                "compared_on": key,
            }
    return {}


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of an evaluation result (drops the ``_`` array entries)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


# -- set to set -----------------------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray, *, eps: float = 1e-6) -> dict[str, Any]:
    """Frechet distance between Gaussians fitted to two embedding sets (FID in embedding space).

    With fewer items than dimensions the covariances are singular: they are
    regularized with ``eps``-scaled identity (shrinkage) and a warning is logged.
    """
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise TwinsightError(
            f"FID needs two embedding sets of the same dimension, got {a.shape} and {b.shape}"
        )
    if len(a) < 2 or len(b) < 2:
        raise TwinsightError(f"FID needs at least 2 images per set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    regularized = min(len(a), len(b)) <= d
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    if regularized:
        log.warning(
            "FID: %d and %d images for %d dimensions; covariances are singular and were "
            "regularized, so the value is rough: use more images than dimensions",
            len(a),
            len(b),
            d,
        )
        s1 = s1 + eps * np.eye(d) * max(np.trace(s1) / d, 1e-12) * 1e3
        s2 = s2 + eps * np.eye(d) * max(np.trace(s2) / d, 1e-12) * 1e3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return {
        "fid": max(value, 0.0),
        "n_a": len(a),
        "n_b": len(b),
        "dim": d,
        "regularized": regularized,
    }
