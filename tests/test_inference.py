"""Best-match inference: weighted quantiles, estimates, calibration, verification scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twinsight.errors import TwinsightError
from twinsight.index import SimilarityIndex
from twinsight.inference import (
    LEVELS,
    balanced_pairs,
    calibrate_from_embeddings,
    choose_scale,
    conformal_inflation,
    coverage,
    decision_threshold,
    estimate_parameters,
    fit_platt,
    match_weights,
    probability,
    recovery_arrays,
    to_scale,
    weighted_quantile,
)


def test_weighted_quantile_hand_example():
    v = np.array([1.0, 2.0, 3.0, 4.0])
    # equal weights: points at cdf 1/8, 3/8, 5/8, 7/8 -> median 2.5, clamped ends
    np.testing.assert_allclose(weighted_quantile(v, None, [0.5, 0.125, 0.0, 1.0]), [2.5, 1, 1, 4])
    np.testing.assert_allclose(
        weighted_quantile(v, None, [0.3, 0.7]), np.percentile(v, [30, 70], method="hazen")
    )
    # weight 3 on value 4: cdf points (0.5-... ) = [1/12, 3/12, 5/12, 9/12]
    w = np.array([1.0, 1.0, 1.0, 3.0])
    np.testing.assert_allclose(weighted_quantile(v, w, [0.5]), [3 + (0.5 - 5 / 12) / (4 / 12)])
    # order of inputs does not matter
    np.testing.assert_allclose(
        weighted_quantile(v[::-1], w[::-1], [0.5]), weighted_quantile(v, w, [0.5])
    )
    with pytest.raises(TwinsightError):
        weighted_quantile(v, -w, [0.5])
    with pytest.raises(TwinsightError):
        weighted_quantile(np.array([]), None, [0.5])


def test_choose_scale():
    rng = np.random.default_rng(0)
    assert choose_scale(10 ** rng.uniform(-3, 1, 500)) == "log"
    assert choose_scale(rng.uniform(0, 1, 500)) == "linear"
    assert choose_scale(rng.normal(0, 1, 500)) == "linear"


def test_match_weights():
    s = np.array([[0.9, 0.8, -np.inf]])
    np.testing.assert_array_equal(match_weights(s), [[1, 1, 0]])
    w = match_weights(s, "softmax", 0.1)
    np.testing.assert_allclose(w[0, :2], [1.0, np.exp(-1.0)])
    assert w[0, 2] == 0
    with pytest.raises(TwinsightError, match="weighting"):
        match_weights(s, "median")
    with pytest.raises(TwinsightError, match="temperature"):
        match_weights(s, "softmax", 0.0)


def test_coverage_on_calibrated_synthetic_truth():
    rng = np.random.default_rng(0)
    mu = rng.uniform(-5, 5, size=(20000, 2))
    truth = mu + rng.normal(size=mu.shape)
    cov = coverage(truth, mu - 1.0, mu + 1.0)
    np.testing.assert_allclose(cov, 0.6827, atol=0.01)
    cov95 = coverage(truth, mu - 1.96, mu + 1.96)
    np.testing.assert_allclose(cov95, 0.95, atol=0.01)
    # intervals half as wide: inflation 2 restores 68 %
    s = conformal_inflation(truth, mu, mu - 0.5, mu + 0.5, 0.6827)
    np.testing.assert_allclose(s, 2.0, atol=0.06)


def _library(n_sys, start, rng, noise=0.3):
    z = rng.random((n_sys, 3))
    rows, emb = [], []
    for s in range(n_sys):
        for p in range(8):
            rows.append(
                {
                    "key": f"s{start + s}_{p}",
                    "system": str(start + s),
                    "a": z[s, 0],
                    "b": 10 ** (3 * z[s, 1]),
                    "c": z[s, 2],
                }
            )
            emb.append(np.concatenate([3 * z[s], rng.normal(scale=noise, size=3), [1.0]]))
    return np.asarray(emb, np.float32), pd.DataFrame(rows)


def _index(embs, tables):
    return SimilarityIndex.build(
        np.concatenate(embs),
        pd.concat(tables, ignore_index=True),
        model_fingerprint="m",
        param_columns=["a", "b", "c"],
        units={"b": "Lsun"},
    )


def test_calibrated_matching_gives_honest_coverage_on_held_out_systems():
    # 200 validation systems: 100 choose the number of matches, 100 fit the inflation (a
    # conformal quantile over systems, so its spread is that of 100 draws, not 800)
    rng = np.random.default_rng(0)
    e_tr, i_tr = _library(400, 0, rng)
    e_va, i_va = _library(200, 1000, rng)
    e_te, i_te = _library(200, 2000, rng)
    library = _index([e_tr, e_va], [i_tr, i_va])
    matching = calibrate_from_embeddings(library, e_va, i_va)
    assert matching["top"] in (10, 20, 30, 50, 75, 100, 150, 200, 300)
    assert matching["scales"] == {"a": "linear", "b": "log", "c": "linear"}
    assert set(matching["inflation"]) == {"a", "b", "c"}
    pool = library  # new systems are matched against the library, as an observation is
    cols = ["a", "b", "c"]
    infl = np.array([matching["inflation"][c] for c in cols]).T
    arr = recovery_arrays(
        pool,
        e_te,
        i_te["system"].tolist(),
        top=matching["top"],
        columns=cols,
        inflation=infl,
        scales=[matching["scales"][c] for c in cols],
    )
    truth = np.stack([to_scale(i_te[c].to_numpy(), matching["scales"][c]) for c in cols], -1)
    c68 = coverage(truth, arr["lo"][LEVELS.index(0.68)], arr["hi"][LEVELS.index(0.68)])
    c95 = coverage(truth, arr["lo"][LEVELS.index(0.95)], arr["hi"][LEVELS.index(0.95)])
    assert ((c68 > 0.60) & (c68 < 0.76)).all(), c68
    assert ((c95 > 0.90) & (c95 < 0.985)).all(), c95


def test_estimate_parameters_values_and_prior():
    rng = np.random.default_rng(1)
    e, items = _library(60, 0, rng, noise=0.05)
    idx = _index([e], [items])
    est = estimate_parameters(
        idx, e[:2], top=8, exclude_systems=None, truths=items[["a", "b", "c"]].to_numpy()[:2]
    )
    first = est[0]
    assert first.n_matches == 8 and not first.calibrated
    # with little noise the 8 best matches are the 8 projections of the query's own system
    assert set(first.systems) == {"0"}
    a = first.parameters["a"]
    np.testing.assert_allclose(a.median, items["a"][0])
    assert a.truth == pytest.approx(items["a"][0])
    assert a.interval_68[0] <= a.median <= a.interval_68[1]
    assert a.narrowing < 0.05
    np.testing.assert_allclose(a.prior_median, np.percentile(items["a"], 50, method="hazen"))
    assert first.parameters["b"].scale == "log" and first.parameters["b"].unit == "Lsun"
    d = first.to_dict()
    assert d["parameters"]["a"]["in_68"] is True
    assert len(d["matches"]) == 8 and d["matches"][0]["rank"] == 1
    assert sum(m["weight"] for m in d["matches"]) == pytest.approx(1.0)
    # excluding the query's own system moves every match elsewhere
    other = estimate_parameters(idx, e[0], top=8, exclude_systems="0")[0]
    assert "0" not in other.systems


def test_estimate_parameters_threshold_and_errors():
    rng = np.random.default_rng(2)
    e, items = _library(30, 0, rng)
    idx = _index([e], [items])
    est = estimate_parameters(idx, e[0], threshold=0.99)[0]
    assert (est.similarities >= 0.99).all() and est.n_matches >= 1
    with pytest.raises(TwinsightError, match="threshold"):
        estimate_parameters(idx, -e[0], threshold=0.9999)
    with pytest.raises(TwinsightError, match="either --top or --threshold"):
        estimate_parameters(idx, e[0], top=5, threshold=0.5)
    with pytest.raises(TwinsightError, match="does not hold parameter"):
        estimate_parameters(idx, e[0], columns=["age"])
    bare = SimilarityIndex.build(e, items[["key"]], model_fingerprint="m")
    with pytest.raises(TwinsightError, match="no parameter columns"):
        estimate_parameters(bare, e[0])


def test_calibrated_defaults_are_used_unless_overridden():
    rng = np.random.default_rng(3)
    e, items = _library(40, 0, rng)
    idx = _index([e], [items])
    matching = {
        "top": 12,
        "weighting": "uniform",
        "levels": [0.68, 0.95],
        "inflation": {"a": [2.0, 2.0]},
        "scales": {},
    }
    cal = estimate_parameters(idx, e[0], matching=matching)[0]
    raw = estimate_parameters(idx, e[0], top=12)[0]
    assert cal.calibrated and cal.n_matches == 12 and not raw.calibrated
    pa, ra = cal.parameters["a"], raw.parameters["a"]
    assert pa.median == pytest.approx(ra.median)
    assert pa.interval_68[1] - pa.median == pytest.approx(2 * (ra.interval_68[1] - ra.median))
    assert cal.parameters["c"].interval_68 == pytest.approx(raw.parameters["c"].interval_68)


def test_platt_and_probability():
    rng = np.random.default_rng(0)
    same = rng.random(4000) < 0.5
    scores = np.where(same, rng.normal(0.7, 0.1, 4000), rng.normal(0.2, 0.1, 4000))
    cal = fit_platt(scores, same)
    assert 0.4 < cal["threshold"] < 0.5
    assert probability(cal["threshold"], cal) == pytest.approx(0.5)
    assert probability(0.9, cal) > 0.99 and probability(0.0, cal) < 0.01
    assert decision_threshold({"scale": 10.0, "bias": -5.0}) == pytest.approx(0.5)
    with pytest.raises(TwinsightError, match="both same and different"):
        fit_platt(scores, np.ones(4000, bool))


def test_balanced_pairs():
    groups = np.repeat(np.arange(10), 5)
    i, j, same = balanced_pairs(groups, 100, seed=0)
    assert same.sum() == 100 and (~same).sum() == 100
    assert (groups[i][same] == groups[j][same]).all() and (i[same] != j[same]).all()
    assert (groups[i][~same] != groups[j][~same]).all()
    with pytest.raises(TwinsightError, match="two groups"):
        balanced_pairs(np.arange(10), 5)


# -- the conformal calibration counts systems and never fits where it chooses ----------------------
def test_conformal_inflation_is_the_split_conformal_rank():
    # scores 1..10 (median 0, half-widths 1): the ceil(11 * 0.68) = 8th smallest
    truth = np.arange(1.0, 11.0)[:, None]
    zero, one = np.zeros_like(truth), np.ones_like(truth)
    assert conformal_inflation(truth, zero, -one, one, 0.68) == pytest.approx([8.0])
    assert conformal_inflation(truth, zero, -one, one, 0.95) == pytest.approx([10.0])


def test_conformal_inflation_counts_systems_not_views():
    # one system seen 91 times with score 0.1, nine systems seen once with scores 1..9
    truth = np.concatenate([np.full(91, 0.1), np.arange(1.0, 10.0)])[:, None]
    groups = np.array(["big"] * 91 + [f"s{k}" for k in range(1, 10)])
    zero, one = np.zeros_like(truth), np.ones_like(truth)
    # counted as 100 images, the big system decides alone
    assert conformal_inflation(truth, zero, -one, one, 0.5) == pytest.approx([0.1])
    # counted as 10 systems (each weighs 1): the ceil(11 * 0.5) = 6th smallest system score
    assert conformal_inflation(truth, zero, -one, one, 0.5, groups) == pytest.approx([5.0])
    inside = (np.abs(truth) <= 3.0).astype(float)
    assert coverage(truth, -3 * one, 3 * one, groups) == pytest.approx([0.4])  # 4 of 10 systems
    assert coverage(truth, -3 * one, 3 * one) == pytest.approx([inside.mean()])


def test_matching_calibration_chooses_on_one_half_and_fits_on_all_systems():
    from twinsight.inference import split_systems

    rng = np.random.default_rng(4)
    e_tr, i_tr = _library(200, 0, rng)
    e_va, i_va = _library(30, 1000, rng)
    library = _index([e_tr, e_va], [i_tr, i_va])
    matching = calibrate_from_embeddings(library, e_va, i_va, seed=3)
    v = matching["validation"]
    assert (v["systems"], v["selection_systems"], v["calibration_systems"]) == (30, 15, 30)
    assert v["seed"] == 3 and v["max_guaranteed_level"] == pytest.approx(30 / 31)
    # the number of matches is chosen on one half; the stored inflation is the
    # system-counted conformal fit of that number on every validation system
    select, other = split_systems(i_va["system"].to_numpy(), seed=3)
    assert not set(i_va["system"][select]) & set(i_va["system"][other])
    fit = np.ones(len(i_va), dtype=bool)
    cols = ["a", "b", "c"]
    scales = [matching["scales"][c] for c in cols]
    arr = recovery_arrays(
        library,
        e_va[fit],
        i_va["system"][fit].tolist(),
        top=matching["top"],
        columns=cols,
        levels=matching["levels"],
        scales=scales,
    )
    truth = np.stack(
        [to_scale(i_va[c].to_numpy()[fit], s) for c, s in zip(cols, scales, strict=True)], -1
    )
    i68 = matching["levels"].index(0.68)
    expected = conformal_inflation(
        truth, arr["median"], arr["lo"][i68], arr["hi"][i68], 0.68, i_va["system"][fit].to_numpy()
    )
    stored = [matching["inflation"][c][i68] for c in cols]
    np.testing.assert_allclose(stored, expected)
    # another seed, another split (and the same seed, the same calibration)
    assert calibrate_from_embeddings(library, e_va, i_va, seed=3) == matching
    other = split_systems(i_va["system"].to_numpy(), seed=4)[0]
    assert set(i_va["system"][other]) != set(i_va["system"][select])


def test_matching_calibration_needs_four_systems():
    rng = np.random.default_rng(5)
    e_tr, i_tr = _library(50, 0, rng)
    e_va, i_va = _library(3, 1000, rng)
    with pytest.raises(TwinsightError, match="at least 4 validation systems .* got 3"):
        calibrate_from_embeddings(_index([e_tr, e_va], [i_tr, i_va]), e_va, i_va)


def test_calibration_without_the_68_level_still_calibrates_the_reported_levels():
    rng = np.random.default_rng(6)
    e_tr, i_tr = _library(120, 0, rng)
    e_va, i_va = _library(20, 1000, rng)
    library = _index([e_tr, e_va], [i_tr, i_va])
    matching = calibrate_from_embeddings(library, e_va, i_va, levels=(0.5, 0.9))
    assert matching["levels"] == [0.5, 0.68, 0.9, 0.95]
    assert all(len(v) == 4 for v in matching["inflation"].values())
    est = estimate_parameters(library, e_va[0], matching=matching, exclude_systems="1000")[0]
    assert est.calibrated and est.n_matches == matching["top"]
    with pytest.raises(TwinsightError, match=r"interval level must be a number in \(0, 1\), got 1"):
        calibrate_from_embeddings(library, e_va, i_va, levels=(0.5, 1.0))


def test_numpy_integer_system_ids_are_accepted():
    rng = np.random.default_rng(7)
    e, items = _library(20, 0, rng, noise=0.05)
    idx = _index([e], [items])
    by_str = estimate_parameters(idx, e[0], top=8, exclude_systems="0")[0]
    for system in (np.int64(0), np.int32(0), 0):
        est = estimate_parameters(idx, e[0], top=8, exclude_systems=system)[0]
        assert "0" not in est.systems and est.keys == by_str.keys
    both = estimate_parameters(idx, e[:2], top=8, exclude_systems=[np.int64(0), None])
    assert "0" not in both[0].systems and "0" in both[1].systems
    with pytest.raises(TwinsightError, match="one per query"):
        estimate_parameters(idx, e[:2], top=8, exclude_systems=["0", "1", "2"])
    with pytest.raises(TwinsightError, match="--top must be an integer >= 1, got 0"):
        estimate_parameters(idx, e[0], top=0)
