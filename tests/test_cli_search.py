"""CLI: index, index-merge, search, compare, match, evaluate, fid (tiny random model, tiny data)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from PIL import Image

from twinsight.data.packed import write_packed
from twinsight.data.readers import open_collection
from twinsight.index import SimilarityIndex
from twinsight.models.bundle import ModelBundle
from twinsight.models.encoders import create_encoder

SIZE = 16


def _blob(mass: float, age: float, rng, size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size / 2
    img = np.exp(-(x**2 + y**2) / (2 * (1 + 3 * mass) ** 2)) * (1 + age / 10)
    return (img + rng.normal(scale=0.02, size=img.shape)).astype(np.float32)


def _bundle(seed: int) -> ModelBundle:
    torch.manual_seed(seed)
    enc = create_encoder("small-cnn", embedding_dim=16, in_channels=1, input_size=(SIZE, SIZE))
    return ModelBundle.from_encoder(enc)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(0)
    n_sys, n_proj = 12, 4
    rows, images = [], []
    for s in range(n_sys):
        mass, age = rng.uniform(0.1, 2.0), 10 ** rng.uniform(4, 6)
        for p in range(n_proj):
            rows.append(
                {
                    "key": f"sys{s:03d}_p{p}",
                    "system": f"sys{s:03d}",
                    "projection": p,
                    "split": "test" if s >= 8 else "train",
                    "mass": mass,
                    "age": age,
                }
            )
            images.append(_blob(mass, np.log10(age), rng))
    items = pd.DataFrame(rows)
    data = write_packed(
        root / "sims.h5", items, [np.stack(images)], (1, SIZE, SIZE), param_columns=["mass", "age"]
    )
    run = _bundle(0)
    run.save(root / "run")
    _bundle(1).save(root / "other_run")
    # queries: a PNG of another size, an RGB PNG, and a FITS file with the true mass in its header
    q = _blob(0.7, 5.0, rng, size=24)
    png = root / "query.png"
    Image.fromarray((255 * (q - q.min()) / np.ptp(q)).astype(np.uint8)).save(png)
    rgb = root / "query_rgb.png"
    Image.fromarray(
        np.repeat((255 * (q - q.min()) / np.ptp(q)).astype(np.uint8)[..., None], 3, 2)
    ).save(rgb)
    obs = root / "obs.fits"
    hdu = fits.PrimaryHDU(_blob(0.7, 5.0, rng))
    hdu.header["HIERARCH TRUE_MASS"] = 0.7
    hdu.writeto(obs)
    return {
        "root": root,
        "data": str(data),
        "run": str(root / "run"),
        "other": str(root / "other_run"),
        "png": str(png),
        "rgb": str(rgb),
        "fits": str(obs),
        "items": items,
    }


@pytest.fixture(scope="module")
def built(world):
    """An index built through the CLI once for the module."""
    from twinsight.cli import main

    idx = world["root"] / "idx"
    with pytest.raises(SystemExit) as exc:
        main(["index", world["run"], world["data"], "--out", str(idx)])
    assert exc.value.code == 0
    return str(idx)


def test_index_writes_folder(world, built):
    meta = json.loads((world["root"] / "idx" / "index.json").read_text())
    bundle = ModelBundle.load(world["run"])
    assert meta["model_fingerprint"] == bundle.fingerprint
    assert meta["count"] == 48 and meta["dim"] == 16 and meta["param_columns"] == ["mass", "age"]
    idx = SimilarityIndex.load(built)
    expected = bundle.embed(open_collection(world["data"]).images())
    np.testing.assert_allclose(
        idx.vectors(), expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5
    )


def test_index_refuses_existing_output(run_cli, world, built):
    r = run_cli("index", world["run"], world["data"], "--out", built)
    assert r.exit_code == 2 and "already exists" in r.stderr


def test_search_matches_brute_force(run_cli, world, built):
    r = run_cli("search", built, world["png"], world["fits"], "-k", "5", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    bundle = ModelBundle.load(world["run"])
    coll = open_collection(world["data"])
    lib = bundle.embed(coll.images())
    lib /= np.linalg.norm(lib, axis=1, keepdims=True)
    for res, src in zip(out["results"], (world["png"], world["fits"]), strict=True):
        q = bundle.embed(open_collection(src).images())[0]
        q /= np.linalg.norm(q)
        sims = lib @ q
        order = np.argsort(-sims)[:5]
        assert [m["key"] for m in res["matches"]] == coll.items["key"].iloc[order].tolist()
        np.testing.assert_allclose(
            [m["similarity"] for m in res["matches"]], sims[order], atol=1e-4
        )
        assert "mass" in res["matches"][0]


def test_search_table_plot_and_clamp(run_cli, world, built, tmp_path):
    r = run_cli("search", built, world["rgb"], "-k", "500", "--plot", tmp_path / "s.png")
    assert r.exit_code == 0, r.stderr
    assert "larger than the index (48 items)" in r.stderr
    assert "rank" in r.stdout and "sys0" in r.stdout
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_search_refuses_other_model(run_cli, world, built):
    r = run_cli("search", built, world["png"], "--model", world["other"])
    assert r.exit_code == 2
    fp_run = ModelBundle.load(world["run"]).fingerprint
    fp_other = ModelBundle.load(world["other"]).fingerprint
    assert fp_run in r.stderr and fp_other in r.stderr


def test_bad_index_folders_exit_2(run_cli, world, tmp_path):
    r = run_cli("search", tmp_path, world["png"])
    assert r.exit_code == 2 and "not a twinsight index folder" in r.stderr
    r = run_cli("search", tmp_path / "missing", world["png"])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = run_cli("search", tmp_path, world["png"], "-k", "0")
    assert r.exit_code == 2


def test_shards_and_merge_equal_single_index(run_cli, world, built, tmp_path):
    for i in (1, 2, 3):
        r = run_cli(
            "index", world["run"], world["data"], "--out", tmp_path / f"s{i}", "--shard", f"{i}/3"
        )
        assert r.exit_code == 0, r.stderr
    r = run_cli(
        "index-merge", tmp_path / "s1", tmp_path / "s2", tmp_path / "s3", "--out", tmp_path / "m"
    )
    assert r.exit_code == 0, r.stderr
    merged, whole = SimilarityIndex.load(tmp_path / "m"), SimilarityIndex.load(built)
    assert merged.items["key"].tolist() == whole.items["key"].tolist()
    q = whole.vectors()[::7]
    np.testing.assert_array_equal(merged.search(q, 6)[1], whole.search(q, 6)[1])
    r = run_cli("index", world["run"], world["data"], "--out", tmp_path / "bad", "--shard", "4/3")
    assert r.exit_code == 2 and "--shard" in r.stderr


def test_match_json_truth_and_plot(run_cli, world, built, tmp_path):
    r = run_cli("match", built, world["fits"], "--top", "8", "--json", "--plot", tmp_path / "m.png")
    assert r.exit_code == 0, r.stderr
    est = json.loads(r.stdout)
    assert est["n_matches"] == 8 and est["calibrated"] is False
    mass = est["parameters"]["mass"]
    assert mass["truth"] == pytest.approx(0.7) and est["parameters"]["age"]["truth"] is None
    assert (
        mass["interval_95"][0] <= mass["interval_68"][0] <= mass["median"] <= mass["interval_68"][1]
    )
    assert mass["prior"]["interval_68"][0] < mass["prior"]["interval_68"][1]
    assert len(mass["values"]) == 8 and mass["narrowing"] > 0
    assert (tmp_path / "m.png").stat().st_size > 1000
    r = run_cli("match", built, world["fits"], "--top", "5", "--exclude-system", "sys000")
    assert r.exit_code == 0 and "best 5 matches" in r.stdout


def test_match_bad_inputs(run_cli, world, built):
    r = run_cli("match", built, world["fits"], "--param", "luminosity")
    assert r.exit_code == 2 and "does not hold parameter" in r.stderr and "mass" in r.stderr
    r = run_cli("match", built, world["fits"], "--top", "5", "--threshold", "0.5")
    assert r.exit_code == 2 and "either --top or --threshold" in r.stderr
    r = run_cli("match", built, world["fits"], "--weighting", "median")
    assert r.exit_code == 2 and "weighting" in r.stderr
    r = run_cli("match", built, world["fits"], "--top", "100")
    assert r.exit_code == 0 and "larger than the index" in r.stderr


def test_compare(run_cli, world, tmp_path):
    r = run_cli("compare", world["run"], world["png"], world["fits"], "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    bundle = ModelBundle.load(world["run"])
    a = bundle.embed(open_collection(world["png"]).images())[0]
    b = bundle.embed(open_collection(world["fits"]).images())[0]
    assert out["similarity"] == pytest.approx(
        float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-4
    )
    assert out["calibrated"] is False and out["probability"] is None
    bundle.calibration = {"scale": 10.0, "bias": -5.0, "threshold": 0.5}
    bundle.save(tmp_path / "cal")
    out = json.loads(
        run_cli("compare", tmp_path / "cal", world["png"], world["fits"], "--json").stdout
    )
    expected = 1 / (1 + np.exp(-(10 * out["similarity"] - 5)))
    assert out["probability"] == pytest.approx(expected) and out["same"] == (
        out["similarity"] >= 0.5
    )
    r = run_cli("compare", world["run"], world["png"], world["data"])
    assert r.exit_code == 2 and "one image on each side" in r.stderr


def test_evaluate_json_and_out(run_cli, world, tmp_path):
    r = run_cli("evaluate", world["run"], world["data"], "--json", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["items"] == 16 and m["split"] == "test"
    assert -1 <= m["spearman"] <= 1
    for name in ("mass", "age"):
        p = m["parameters"][name]
        assert set(p) >= {"r2", "rmse", "coverage_68", "coverage_95", "narrowing", "scale"}
        assert 0 <= p["coverage_68"] <= p["coverage_95"] <= 1
    assert m["parameters"]["age"]["scale"] == "log10"
    assert "verification" in m and 0 <= m["verification"]["roc_auc"] <= 1
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["parameters"] == m["parameters"]
    assert (tmp_path / "ev" / "coverage.png").exists() and (tmp_path / "ev" / "pairs.png").exists()
    r = run_cli("evaluate", world["run"], world["data"], "--split", "holdout")
    assert r.exit_code == 2 and "no split 'holdout'" in r.stderr


def test_fid(run_cli, world):
    r = run_cli("fid", world["data"], world["data"], "--model", world["run"], "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["fid"] == pytest.approx(0.0, abs=1e-3) and out["n_a"] == 48
    assert out["regularized"] is False  # 48 images > 16 dimensions
    r = run_cli("fid", world["data"], world["png"], "--model", world["run"], "--json")
    assert r.exit_code == 2 and "at least 2" in r.stderr


def test_training_time_calibration_is_stored_and_used(run_cli, world, tmp_path):
    from twinsight.inference import calibrate_for_inference

    bundle = _bundle(0)
    coll = open_collection(world["data"])
    calibrate_for_inference(bundle, coll.split("train"), coll.split("test"))
    m = bundle.matching
    assert m["top"] in (10, 20, 30, 48) and set(m["inflation"]) == {"mass", "age"}
    assert m["validation"]["items"] == 16 and m["scales"]["age"] == "log"
    assert bundle.calibration["method"] == "platt" and "threshold" in bundle.calibration
    bundle.save(tmp_path / "cal_run")
    r = run_cli("evaluate", tmp_path / "cal_run", world["data"], "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["matching"]["calibrated"] is True and out["matching"]["top"] == m["top"]
    assert out["verification"]["threshold_source"] == "calibration"
    r = run_cli("compare", tmp_path / "cal_run", world["png"], world["fits"], "--json")
    assert json.loads(r.stdout)["calibrated"] is True


def test_match_exclude_system_is_checked(run_cli, world, built, tmp_path):
    r = run_cli("match", built, world["fits"], "--exclude-system", "nosuch")
    assert r.exit_code == 2 and "'nosuch'" in r.stderr and "not systems of the index" in r.stderr
    r = run_cli(
        "match", built, world["fits"], "--top", "4", "--exclude-system", "sys000",
        "--exclude-system", "sys001", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    systems = {m["system"] for m in json.loads(r.stdout)["matches"]}
    assert systems.isdisjoint({"sys000", "sys001"})
    # an index without a 'system' column: a clear error, not a KeyError
    items = world["items"].drop(columns=["system"])
    images = open_collection(world["data"]).images()
    data = write_packed(tmp_path / "nosys.h5", items, [images], (1, SIZE, SIZE),
                        param_columns=["mass", "age"])  # fmt: skip
    assert run_cli("index", world["run"], data, "--out", tmp_path / "idx").exit_code == 0
    r = run_cli("match", tmp_path / "idx", world["fits"], "--exclude-system", "sys000")
    assert r.exit_code == 2 and "no 'system' column" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_match_from_another_folder(run_cli, world, tmp_path, monkeypatch):
    """An index built with relative paths finds its model from any working folder."""
    import shutil

    work = tmp_path / "project"
    work.mkdir()
    shutil.copytree(world["run"], work / "run")
    shutil.copy(world["data"], work / "sims.h5")
    monkeypatch.chdir(work)
    assert run_cli("index", "run", "sims.h5", "--out", "idx").exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = run_cli("match", work / "idx", world["fits"], "--top", "5", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["n_matches"] == 5


# -- the façade: the same results from Python, with arrays or paths ------------------------------
def test_facade_results_are_what_the_cli_prints(run_cli, world, built):
    import twinsight

    index = twinsight.load_index(built)
    hits = twinsight.search(index, [world["png"], world["fits"]], k=5)
    cli = json.loads(
        run_cli("search", built, world["png"], world["fits"], "-k", "5", "--json").stdout
    )
    assert hits.to_dict() == cli
    estimate = twinsight.match(index, world["fits"], top=8)
    cli = json.loads(run_cli("match", built, world["fits"], "--top", "8", "--json").stdout)
    assert json.loads(json.dumps(estimate.to_dict())) == cli
    pair = twinsight.compare(world["run"], world["png"], world["fits"])
    cli = json.loads(run_cli("compare", world["run"], world["png"], world["fits"], "--json").stdout)
    assert pair.to_dict() == cli


def test_facade_takes_arrays(world, built):
    import twinsight

    coll = twinsight.open_collection(world["data"])
    index = twinsight.load_index(built)
    one = coll.images([3])[0]  # [C, H, W]
    hits = twinsight.search(index, one, k=3)
    assert hits.matches(0)[0]["key"] == coll.items["key"].iloc[3]
    assert hits.similarities[0, 0] == pytest.approx(1.0, abs=1e-5)
    single = twinsight.match(index, one, top=6)
    assert isinstance(single, twinsight.ParameterEstimate) and single.n_matches == 6
    several = twinsight.match(index, coll.images([0, 1, 2]), top=6)
    assert isinstance(several, list) and len(several) == 3
    same = twinsight.compare(world["run"], one, one[0])  # [C, H, W] and [H, W]
    assert same.similarity == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(twinsight.TwinsightError, match="images must be"):
        twinsight.search(index, 42)
