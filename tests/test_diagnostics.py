"""Posterior diagnostics: TARP, SBC ranks and expected coverage flag over-confident estimates."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kstest

import twinsight
from twinsight.diagnostics import (
    COVERAGE_LEVELS,
    _pit,
    check_sbc,
    check_tarp,
    expected_coverage,
    inflate_samples,
    ks_uniform,
    posterior_diagnostics,
    rank_histogram,
    run_sbc,
    run_tarp,
)
from twinsight.errors import TwinsightError
from twinsight.inference import weighted_quantile


def _posteriors(spread: float, n_queries: int = 1000, n_samples: int = 50, seed: int = 0):
    """Gaussian posteriors of width 0.3 about a random centre: truth and samples drawn alike
    (``spread`` 0.3, calibrated), or samples with another width. Prior: the centres' spread."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(n_queries, 3))
    truth = centre + 0.3 * rng.normal(size=centre.shape)
    samples = centre[:, None, :] + spread * rng.normal(size=(n_queries, n_samples, 3))
    prior = 1.05 * rng.normal(size=(5000, 3))
    return samples, truth, prior


# -- (1) calibrated posteriors pass ---------------------------------------------------------------
def test_calibrated_posteriors_pass_tarp_and_sbc():
    samples, truth, prior = _posteriors(0.3)
    tarp = run_tarp(samples, None, truth, prior=prior, seed=0)
    atc, p = check_tarp(tarp)
    assert abs(atc) < 0.01 and p > 0.05, (atc, p)
    assert tarp["alpha"][0] == 0 and tarp["alpha"][-1] == 1 and tarp["ecp"][-1] == 1
    np.testing.assert_allclose(tarp["ecp"], tarp["alpha"], atol=0.05)
    sbc = run_sbc(samples, None, truth, seed=0)
    assert (check_sbc(sbc) > 0.05).all(), check_sbc(sbc)
    edges, hist = rank_histogram(sbc)
    assert len(edges) == 21 and hist.shape == (3, 20)
    np.testing.assert_allclose(hist.sum(axis=1), 1.0)
    cov = expected_coverage(samples, np.ones(samples.shape[:2]), truth)
    np.testing.assert_allclose(cov, np.repeat(np.array(COVERAGE_LEVELS)[:, None], 3, 1), atol=0.05)


def test_diagnostics_are_seeded():
    samples, truth, prior = _posteriors(0.3, n_queries=200)
    a = check_tarp(run_tarp(samples, None, truth, prior=prior, seed=3))
    assert a == check_tarp(run_tarp(samples, None, truth, prior=prior, seed=3))
    assert a != check_tarp(run_tarp(samples, None, truth, prior=prior, seed=4))


# -- (2) over-confident (and over-wide) posteriors are flagged ------------------------------------
def test_too_narrow_samples_are_flagged_and_too_wide_ones_have_positive_atc():
    for spread, sign in ((0.15, -1), (0.6, 1)):
        samples, truth, prior = _posteriors(spread)
        atc, p = check_tarp(run_tarp(samples, None, truth, prior=prior))
        assert sign * atc > 0.04 and p < 1e-6, (spread, atc, p)
        assert (check_sbc(run_sbc(samples, None, truth)) < 1e-4).all()


def test_inflating_the_shrunk_samples_about_their_median_restores_calibration():
    samples, truth, prior = _posteriors(0.15)
    median = np.median(samples, axis=1)
    widened = inflate_samples(samples, median, np.full(3, 2.0))
    atc, p = check_tarp(run_tarp(widened, None, truth, prior=prior))
    assert abs(atc) < 0.01 and p > 0.05, (atc, p)
    assert (check_sbc(run_sbc(widened, None, truth)) > 0.05).all()


def test_inflated_samples_reproduce_the_inflated_68_interval():
    rng = np.random.default_rng(1)
    v, w = rng.normal(size=(1, 30, 1)), rng.random((1, 30))
    m = weighted_quantile(v[0, :, 0], w[0], [0.5])
    lo, hi = weighted_quantile(v[0, :, 0], w[0], [0.16, 0.84])
    out = inflate_samples(v, m[None, :], np.array([1.7]))
    np.testing.assert_allclose(
        weighted_quantile(out[0, :, 0], w[0], [0.16, 0.84]), [m[0] - 1.7 * (m[0] - lo),
                                                              m[0] + 1.7 * (hi - m[0])]
    )  # fmt: skip


# -- the pieces -----------------------------------------------------------------------------------
def test_rank_is_the_level_of_the_reported_quantiles():
    """Inside the level-L interval exactly when the rank is within L / 2 of 0.5."""
    rng = np.random.default_rng(0)
    x, w = np.round(rng.normal(size=(500, 7)), 1), rng.random((500, 7))
    w[:, -1] *= rng.random(500) > 0.3  # some queries have a match without weight
    t = np.round(1.5 * rng.normal(size=500), 1) + 0.05  # never tied with a sample
    u = _pit(x, t, w, True, np.random.default_rng(0))
    for level in (0.2, 0.68, 0.9):
        for q in range(500):
            ok = w[q] > 0
            lo, hi = weighted_quantile(x[q, ok], w[q, ok], [0.5 - level / 2, 0.5 + level / 2])
            assert (lo <= t[q] <= hi) == (abs(u[q] - 0.5) <= level / 2)
    share = (w * (x < t[:, None])).sum(1) / w.sum(1)
    np.testing.assert_allclose(_pit(x, t, w, False, np.random.default_rng(0)), share)


def test_ties_are_split_at_random():
    x = np.zeros((4000, 5))  # every sample equals the truth
    u = _pit(x, np.zeros(4000), np.ones((4000, 5)), True, np.random.default_rng(0))
    assert ks_uniform(u)[1] > 0.05


def test_ks_uniform_is_scipys_for_equal_weights_and_counts_systems():
    x = np.random.default_rng(0).random(300) ** 1.2
    d, p = ks_uniform(x)
    ref = kstest(x, "uniform")
    assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    # each value seen 8 times as 8 views of one system: the same test, not 8x the evidence
    samples, truth, prior = _posteriors(0.2, n_queries=150)
    one = run_sbc(samples, None, truth, seed=0)
    views = run_sbc(
        np.repeat(samples, 8, 0), None, np.repeat(truth, 8, 0), groups=np.repeat(np.arange(150), 8)
    )
    assert views["draws"] == 150
    ranks = np.repeat(one["ranks"], 8, 0)  # no ties here: the ranks are not random
    np.testing.assert_allclose(views["ranks"], ranks)
    np.testing.assert_allclose(check_sbc(views), check_sbc(one))


def test_weights_matter():
    """A heavy weight on the samples near the centre narrows the posterior: flagged."""
    samples, truth, prior = _posteriors(0.3)
    centre = samples.mean(axis=1, keepdims=True)
    w = np.exp(-np.sum((samples - centre) ** 2, -1) / (2 * 0.15**2))
    assert check_tarp(run_tarp(samples, w, truth, prior=prior))[0] < -0.03


def test_bad_inputs():
    samples, truth, _ = _posteriors(0.3, n_queries=10)
    with pytest.raises(TwinsightError, match="samples"):
        run_tarp(samples[:, :, 0], None, truth)
    with pytest.raises(TwinsightError, match="weights"):
        run_sbc(samples, np.zeros((10, 50)), truth)
    with pytest.raises(TwinsightError, match="references"):
        run_tarp(samples, None, truth, references=np.zeros((3, 3)))
    with pytest.raises(TwinsightError, match="groups"):
        run_sbc(samples, None, truth, groups=np.arange(4))


def test_posterior_diagnostics_keys_and_figures(tmp_path):
    from twinsight.plots import plot_sbc_ranks, plot_tarp

    samples, truth, prior = _posteriors(0.3, n_queries=200)
    d = posterior_diagnostics(
        samples, np.ones(samples.shape[:2]), truth, np.median(samples, 1), names=["a", "b", "c"],
        prior=prior, inflation_68=np.array([1.0, 1.1, 1.2]),
        coverage_inflation=np.ones((len(COVERAGE_LEVELS), 3)), groups=np.arange(200) // 2,
    )  # fmt: skip
    assert set(d) == {"samples", "tarp", "sbc", "coverage"}
    assert d["samples"] == {
        "queries": 200, "draws": 100, "inflation_68": {"a": 1.0, "b": 1.1, "c": 1.2}
    }  # fmt: skip
    assert {"atc", "ks_pvalue", "alpha", "ecp"} <= set(d["tarp"])
    assert set(d["sbc"]) == {"a", "b", "c"} and set(d["sbc"]["a"]) == {"ks_pvalue", "edges", "hist"}
    assert d["coverage"]["intervals"] == "calibrated" and len(d["coverage"]["observed"]["a"]) == 19
    json.dumps(d)
    plot_tarp(d, tmp_path / "tarp.png")
    plot_sbc_ranks(d, tmp_path / "sbc.png")
    assert (tmp_path / "tarp.png").stat().st_size > 0 and (tmp_path / "sbc.png").stat().st_size > 0


# -- (3) end to end: twinsight.evaluate, calibrated vs raw ----------------------------------------
def _blobs(systems: int = 300, views: int = 12, size: int = 16, seed: int = 1):
    """Blobs whose brightness and width follow mass and radius; the views of a system are
    small shifts with a little noise, so they look alike and crowd one another's matches:
    the raw spread of the best matches (a few systems) is too narrow."""
    from twinsight.data.collection import Collection

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, rows = [], []
    for s in range(systems):
        mass, radius = 10 ** rng.uniform(0, 1), rng.uniform(1.5, 5)
        for p in range(views):
            cx, cy = size / 2 + rng.normal(0, 0.3, 2)
            blob = mass * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
            images.append(blob + rng.normal(0, 0.1, blob.shape))
            rows.append({"key": f"s{s}p{p}", "system": f"s{s}", "projection": p,
                         "split": ("train", "val", "test")[s % 3], "mass": mass,
                         "radius": radius})  # fmt: skip
    return Collection.from_arrays(
        np.asarray(images, dtype=np.float32), pd.DataFrame(rows), name="blobs",
        param_columns=["mass", "radius"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def blob_model():
    """A seeded, untrained small CNN whose matching is calibrated on the validation systems
    exactly as training's hook does (:func:`calibrate_matching`): fast and deterministic,
    and its neighbours carry the parameters well enough to be judged."""
    import torch

    from twinsight.embedding import embed_collection
    from twinsight.inference import calibrate_matching
    from twinsight.models.bundle import ModelBundle
    from twinsight.models.encoders import create_encoder

    data = _blobs()
    torch.manual_seed(0)
    encoder = create_encoder("small-cnn", embedding_dim=16, input_size=(16, 16))
    bundle = ModelBundle.from_encoder(encoder, targets={"kind": "params"})
    train = data.split("train")
    calibrate_matching(bundle, (embed_collection(bundle, train), train.items), data.split("val"))
    return bundle, data


def test_evaluate_reports_diagnostics_and_flags_the_raw_spread(blob_model):
    bundle, data = blob_model
    cal = twinsight.evaluate(bundle, data, split="test", baseline="none").to_dict()
    raw_bundle = copy.copy(bundle)
    raw_bundle.matching = {k: v for k, v in bundle.matching.items() if k != "inflation"}
    raw = twinsight.evaluate(raw_bundle, data, split="test", baseline="none").to_dict()
    d_cal, d_raw = cal["diagnostics"], raw["diagnostics"]
    for d in (d_cal, d_raw):
        assert {"atc", "ks_pvalue", "alpha", "ecp"} <= set(d["tarp"])
        assert set(d["sbc"]) == {"mass", "radius"}
        assert d["samples"]["queries"] == 1200 and d["samples"]["draws"] == 100  # systems
    assert d_cal["coverage"]["intervals"] == "calibrated"
    assert d_raw["coverage"]["intervals"] == "raw"
    assert d_raw["samples"]["inflation_68"] == {"mass": 1.0, "radius": 1.0}
    # measured: calibrated ATC -0.001 (KS p 0.67); raw -0.036 (KS p 0.12)
    assert d_cal["tarp"]["ks_pvalue"] > 0.05
    assert d_raw["tarp"]["atc"] < -0.02
    assert abs(d_raw["tarp"]["atc"]) > abs(d_cal["tarp"]["atc"]) + 0.015
    i90 = COVERAGE_LEVELS.index(0.9)
    for name in ("mass", "radius"):  # the raw 90 % intervals cover far less than 90 %
        assert d_raw["coverage"]["observed"][name][i90] < 0.87
        assert d_cal["coverage"]["observed"][name][i90] > 0.88


def test_cli_evaluate_writes_the_diagnostics_and_their_figures(blob_model, run_cli, tmp_path):
    from twinsight.api import pack

    bundle, data = blob_model
    small = data.subset(data.items["system"].str[1:].astype(int).to_numpy() < 60)
    bundle.save(tmp_path / "model")
    pack(small, tmp_path / "blobs.h5")
    r = run_cli("evaluate", tmp_path / "model", tmp_path / "blobs.h5", "--json", "--baseline",
                "none", "--out", tmp_path / "eval")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"tarp", "sbc", "coverage", "samples"} <= set(out["diagnostics"])
    assert (tmp_path / "eval" / "tarp.png").is_file() and (tmp_path / "eval" / "sbc.png").is_file()
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["diagnostics"]["tarp"]["atc"] == out["diagnostics"]["tarp"]["atc"]


# -- (4) the same TARP as sbi's -------------------------------------------------------------------
def test_tarp_equals_sbis_on_the_same_samples_and_references():
    sbi_tarp = pytest.importorskip("sbi.diagnostics.tarp")
    import torch

    samples, truth, _ = _posteriors(0.3, n_queries=500)
    refs = np.random.default_rng(5).uniform(truth.min(0), truth.max(0), size=truth.shape)
    # 37 bins: no edge j / 37 falls on a share k / 50 inside (0, 1), where rounding would
    # decide the bin
    ours = run_tarp(samples, None, truth, references=refs, num_bins=37, interpolate=False)
    f = ours["credibility"]
    assert f.min() == 0 and f.max() == 1  # sbi's bins span [min f, max f]: here [0, 1] too
    ecp, alpha = sbi_tarp._run_tarp(  # the sample-based core of sbi's run_tarp
        torch.from_numpy(samples).permute(1, 0, 2), torch.from_numpy(truth),
        torch.from_numpy(refs), num_bins=37, z_score_theta=False,
    )  # fmt: skip
    np.testing.assert_allclose(ours["alpha"], alpha.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours["ecp"], ecp.numpy(), atol=1e-6)  # sbi's ecp: float32
    atc_sbi, _ = sbi_tarp.check_tarp(ecp, alpha)
    assert check_tarp(ours)[0] == pytest.approx(atc_sbi, abs=1e-6)
    # the interpolated credibility (evaluate's default) moves the ATC only a little here
    assert check_tarp(run_tarp(samples, None, truth, references=refs, num_bins=37))[0] == (
        pytest.approx(atc_sbi, abs=0.01)
    )
