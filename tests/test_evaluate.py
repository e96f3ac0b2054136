"""Evaluation metrics on synthetic embeddings with known answers."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from twinsight.errors import TwinsightError
from twinsight.evaluation import (
    frechet_distance,
    parameter_recovery,
    retrieval_metrics,
    similarity_ranking,
    target_similarity,
    verification_metrics,
)
from twinsight.index import SimilarityIndex


def _clusters(n_classes=5, per=10, d=8, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d))
    labels = np.repeat(np.arange(n_classes), per)
    emb = centers[labels] + rng.normal(scale=noise, size=(len(labels), d))
    return emb.astype(np.float32), labels


def test_retrieval_perfect_and_random():
    emb, labels = _clusters()
    m = retrieval_metrics(emb, labels)
    assert m["precision_at_1"] == pytest.approx(1.0)
    assert m["mean_average_precision_at_r"] == pytest.approx(1.0)
    assert m["r_precision"] == pytest.approx(1.0)
    assert m["recall_at_k"] == {"1": 1.0, "5": 1.0, "10": 1.0}
    assert m["k"] == 10  # the largest class
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(labels)
    r = retrieval_metrics(emb, shuffled)
    assert r["precision_at_1"] < 0.5
    with pytest.raises(TwinsightError, match="two or more items"):
        retrieval_metrics(emb[:5], np.arange(5))


def test_evaluation_and_training_validation_share_the_retrieval_metrics():
    import torch

    from twinsight.data.targets import TargetSpec
    from twinsight.training import validation_metrics

    emb, labels = _clusters(noise=1.0, seed=2)  # overlapping classes: metrics below 1
    m = retrieval_metrics(emb, labels)
    val = validation_metrics(
        torch.from_numpy(emb), torch.from_numpy(labels), TargetSpec("labels"), max_pairs=100
    )
    assert val["val_p_at_1"] == m["precision_at_1"] < 1
    assert val["val_map_at_r"] == val["val_score"] == m["mean_average_precision_at_r"]


def test_verification_on_separable_pairs():
    emb, labels = _clusters(n_classes=6, per=12)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    m = verification_metrics(emb, labels, {"scale": 20.0, "bias": -10.0}, n_pairs=300)
    assert m["roc_auc"] > 0.95 and m["eer"] < 0.1
    assert m["threshold"] == pytest.approx(0.5) and m["pairs"] == 600
    assert m["threshold_source"] == "calibration"
    assert 0 <= m["accuracy"] <= 1


def test_target_similarity_and_spearman():
    rng = np.random.default_rng(0)
    params = rng.uniform(1, 2, size=(200, 3))
    t = target_similarity(params[:3], params[:3], params)
    np.testing.assert_allclose(t, 1.0)
    z = (params - params.mean(0)) / params.std(0)
    emb = z / np.linalg.norm(z, axis=1, keepdims=True)
    res = similarity_ranking(emb, params, n_pairs=2000)
    assert res["spearman"] > 0.99
    noise = rng.normal(size=emb.shape)
    assert similarity_ranking(noise, params, n_pairs=2000)["spearman"] < 0.2


def test_parameter_recovery_metrics():
    rng = np.random.default_rng(0)
    n_sys, proj = 150, 4
    z = rng.random(n_sys)
    systems = np.repeat(np.arange(n_sys), proj).astype(str)
    mass = np.repeat(z, proj)
    emb = np.stack(
        [np.repeat(3 * z, proj), rng.normal(scale=0.05, size=len(mass)), np.ones(len(mass))], 1
    )
    items = pd.DataFrame({"key": np.arange(len(mass)).astype(str), "system": systems, "mass": mass})
    pool = SimilarityIndex.build(emb, items, model_fingerprint="m", param_columns=["mass"])
    q = slice(0, 200)
    res = parameter_recovery(pool, emb[q], items.iloc[q], matching={"top": 10})
    p = res["parameters"]["mass"]
    assert p["r2"] > 0.95 and p["rmse"] < 0.05 and p["scale"] == "linear"
    assert 0 < p["narrowing"] < 0.2
    assert res["matching"] == {"top": 10, "calibrated": False, "pool": 600}
    curve = res["calibration_curve"]
    assert len(curve["levels"]) == len(curve["observed"]["mass"])
    assert np.all(np.diff(curve["observed"]["mass"]) >= 0)  # wider intervals cover more
    with pytest.raises(TwinsightError, match="system"):
        parameter_recovery(pool, emb[q], items.iloc[q].drop(columns="system"), matching=None)
    with pytest.raises(TwinsightError, match="does not hold"):
        parameter_recovery(pool, emb[q], items.iloc[q], matching=None, columns=["age"])


def test_parameter_recovery_with_levels_that_omit_68_and_95():
    rng = np.random.default_rng(3)
    n_sys, proj = 60, 4
    z = rng.random(n_sys)
    mass = np.repeat(z, proj)
    emb = np.stack([3 * mass, rng.normal(scale=0.05, size=len(mass)), np.ones(len(mass))], 1)
    systems = np.repeat(np.arange(n_sys), proj).astype(str)
    items = pd.DataFrame({"key": np.arange(len(mass)).astype(str), "system": systems, "mass": mass})
    pool = SimilarityIndex.build(emb, items, model_fingerprint="m", param_columns=["mass"])
    matching = {"top": 8, "levels": [0.5, 0.9], "inflation": {"mass": [1.5, 1.2]}}
    res = parameter_recovery(pool, emb, items, matching=matching)
    assert res["calibration_curve"]["levels"] == [0.5, 0.68, 0.9, 0.95]
    p = res["parameters"]["mass"]
    assert 0 <= p["coverage_68"] <= p["coverage_95"] <= 1


def test_level_lookup_names_the_levels():
    from twinsight.inference import level_index

    assert level_index([0.5, 0.68], 0.68) == 1
    with pytest.raises(TwinsightError, match=r"0.68 is not among the levels \[0.5, 0.9\]"):
        level_index([0.5, 0.9], 0.68)


def test_own_system_is_never_a_match():
    """Recovery would be perfect if an item could match its own system; it must not."""
    rng = np.random.default_rng(0)
    n_sys, proj = 50, 4
    mass = np.repeat(rng.random(n_sys), proj)
    own = np.eye(n_sys)[np.repeat(np.arange(n_sys), proj)]  # identical within a system only
    items = pd.DataFrame(
        {
            "key": np.arange(len(mass)).astype(str),
            "system": np.repeat(np.arange(n_sys), proj).astype(str),
            "mass": mass,
        }
    )
    pool = SimilarityIndex.build(own, items, model_fingerprint="m", param_columns=["mass"])
    res = parameter_recovery(pool, own, items, matching={"top": 3})
    assert res["parameters"]["mass"]["r2"] < 0.5


def test_frechet_distance(caplog):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 4))
    b = rng.normal(size=(4000, 4)) + np.array([2.0, 0, 0, 0])
    res = frechet_distance(a, b)
    assert res["fid"] == pytest.approx(4.0, rel=0.1) and not res["regularized"]
    assert frechet_distance(a, a)["fid"] == pytest.approx(0.0, abs=1e-6)
    with caplog.at_level(logging.WARNING):
        small = frechet_distance(a[:3], b[:3])
    assert small["regularized"] and "regularized" in caplog.text and np.isfinite(small["fid"])
    with pytest.raises(TwinsightError, match="same dimension"):
        frechet_distance(a, b[:, :2])
    with pytest.raises(TwinsightError, match="at least 2"):
        frechet_distance(a[:1], b)
