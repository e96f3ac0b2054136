"""SimilarityIndex: exact search, persistence, bad folders, shards and merge."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pandas as pd
import pytest

from twinsight.errors import TwinsightError
from twinsight.index import (
    SimilarityIndex,
    faiss_search_settings,
    merge,
    parse_shard,
    resolve_index_type,
    shard_positions,
)


def _data(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    items = pd.DataFrame(
        {
            "key": [f"k{i}" for i in range(n)],
            "system": [f"s{i // 4}" for i in range(n)],
            "mass": rng.uniform(0.1, 3.0, n),
        }
    )
    return x, items


def _brute(x, q, k):
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    qu = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = qu @ xu.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def test_search_equals_numpy_brute_force():
    x, items = _data()
    q = np.random.default_rng(1).normal(size=(25, 16)).astype(np.float32)
    idx = SimilarityIndex.build(x, items, model_fingerprint="m1", param_columns=["mass"])
    sims, pos = idx.search(q, 7)
    bs, bp = _brute(x, q, 7)
    np.testing.assert_array_equal(pos, bp)
    np.testing.assert_allclose(sims, bs, atol=1e-5)
    single_s, single_p = idx.search(q[3], 7)  # a single query (1-D) works the same
    np.testing.assert_array_equal(single_p[0], bp[3])


def test_search_settings_are_restored():
    before = (
        faiss.cvar.distance_compute_blas_threshold,
        faiss.cvar.distance_compute_blas_database_bs,
        faiss.omp_get_max_threads(),
    )
    with faiss_search_settings(1):
        assert faiss.omp_get_max_threads() == 1
    with faiss_search_settings(100):
        assert faiss.cvar.distance_compute_blas_threshold == 20
        assert faiss.cvar.distance_compute_blas_database_bs == 65536
    after = (
        faiss.cvar.distance_compute_blas_threshold,
        faiss.cvar.distance_compute_blas_database_bs,
        faiss.omp_get_max_threads(),
    )
    assert after == before


def test_k_is_clamped_and_logged(caplog):
    x, items = _data(n=12)
    idx = SimilarityIndex.build(x, items, model_fingerprint="m1")
    with caplog.at_level("INFO"):
        sims, pos = idx.search(x[:2], 50)
    assert pos.shape == (2, 12)
    assert sorted(pos[0]) == list(range(12))
    assert "larger than the index" in caplog.text
    with pytest.raises(TwinsightError, match="k must be an integer >= 1, got 0"):
        idx.search(x[:1], 0)


def test_search_excluding_drops_own_system():
    x, items = _data()
    idx = SimilarityIndex.build(x, items, model_fingerprint="m1")
    sims, pos = idx.search_excluding(x[:3], 10, ["s0", None, "s0"])
    systems = items["system"].to_numpy()
    assert not (systems[pos[0]] == "s0").any()
    assert pos[1, 0] == 1  # not excluded: finds itself first
    assert (pos >= 0).all() and pos.shape == (3, 10)


def test_save_load_roundtrip(tmp_path):
    x, items = _data()
    idx = SimilarityIndex.build(
        x,
        items,
        model_fingerprint="abc123",
        model_path="/runs/m",
        param_columns=["mass"],
        units={"mass": "Msun"},
    )
    idx.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["model_fingerprint"] == "abc123" and meta["count"] == 300 and meta["dim"] == 16
    assert meta["index_type"] == "Flat" and meta["param_columns"] == ["mass"]
    back = SimilarityIndex.load(tmp_path / "idx")
    assert back.items["key"].tolist() == items["key"].tolist()
    np.testing.assert_array_equal(back.search(x[:5], 4)[1], idx.search(x[:5], 4)[1])
    np.testing.assert_allclose(back.params(["mass"])[:, 0], items["mass"])
    with pytest.raises(TwinsightError, match="already exists"):
        idx.save(tmp_path / "idx")
    idx.save(tmp_path / "idx", overwrite=True)


def test_bad_index_folders(tmp_path):
    with pytest.raises(TwinsightError, match="does not exist"):
        SimilarityIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwinsightError, match="missing"):
        SimilarityIndex.load(tmp_path / "empty")
    x, items = _data()
    SimilarityIndex.build(x, items, model_fingerprint="m").save(tmp_path / "ok")
    # truncated FAISS file
    f = tmp_path / "ok" / "index.faiss"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(TwinsightError, match="not a readable FAISS index"):
        SimilarityIndex.load(tmp_path / "ok")
    # foreign folder with the right names
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("index.faiss", "items.parquet"):
        (foreign / name).write_bytes(b"hello")
    (foreign / "index.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TwinsightError, match="not a twinsight index"):
        SimilarityIndex.load(foreign)
    (foreign / "index.json").write_text("{not json")
    with pytest.raises(TwinsightError, match="not valid JSON"):
        SimilarityIndex.load(foreign)
    with pytest.raises(TwinsightError, match="is a file"):
        SimilarityIndex.load(foreign / "index.json")


def test_model_check_names_both_fingerprints():
    x, items = _data(n=20)
    idx = SimilarityIndex.build(x, items, model_fingerprint="aaaa1111", model_path="/runs/a")
    idx.check_model("aaaa1111")
    with pytest.raises(TwinsightError) as err:
        idx.check_model("bbbb2222", "/runs/b")
    assert "aaaa1111" in str(err.value) and "bbbb2222" in str(err.value)


def test_missing_parameter_is_refused():
    x, items = _data(n=20)
    idx = SimilarityIndex.build(x, items, model_fingerprint="m", param_columns=["mass"])
    with pytest.raises(TwinsightError, match="does not hold parameter"):
        idx.check_params(["age"])


def test_shards_merge_equal_single_build():
    x, items = _data(n=101)
    whole = SimilarityIndex.build(x, items, model_fingerprint="m", param_columns=["mass"])
    parts = []
    for i in range(1, 4):
        pos = shard_positions(len(x), (i, 3))
        parts.append(
            SimilarityIndex.build(
                x[pos], items.iloc[pos], model_fingerprint="m", param_columns=["mass"]
            )
        )
    merged = merge(parts)
    assert len(merged) == 101
    assert merged.items["key"].tolist() == items["key"].tolist()
    q = x[::10]
    np.testing.assert_array_equal(merged.search(q, 5)[1], whole.search(q, 5)[1])
    np.testing.assert_allclose(merged.search(q, 5)[0], whole.search(q, 5)[0], atol=1e-6)
    with pytest.raises(TwinsightError, match="overlap"):
        merge([parts[0], parts[0]])
    other = SimilarityIndex.build(x[:5], items.iloc[:5], model_fingerprint="zz")
    with pytest.raises(TwinsightError, match="shard 2 was built with model zz"):
        merge([parts[0], other])
    with pytest.raises(TwinsightError, match="nothing to merge"):
        merge([])


def test_index_types_and_shard_parsing():
    assert resolve_index_type("auto", 1000) == "Flat"
    assert resolve_index_type("auto", 500_000).startswith("IVF")
    assert resolve_index_type("auto", 5_000_000) == "IVF65536_HNSW32,Flat"
    assert resolve_index_type("HNSW32", 10) == "HNSW32"
    x, items = _data(n=400)
    hnsw = SimilarityIndex.build(x, items, model_fingerprint="m", index_type="HNSW16")
    assert hnsw.meta["ef_search"] == 64
    assert hnsw.search(x[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    ivf = SimilarityIndex.build(x, items, model_fingerprint="m", index_type="IVF4,Flat", nprobe=4)
    np.testing.assert_array_equal(ivf.search(x[:5], 3)[1], _brute(x, x[:5], 3)[1])
    with pytest.raises(TwinsightError, match="needs at least 64 vectors"):
        SimilarityIndex.build(
            x[:10], items.iloc[:10], model_fingerprint="m", index_type="IVF64,Flat"
        )
    with pytest.raises(TwinsightError, match="FAISS cannot build"):
        SimilarityIndex.build(x, items, model_fingerprint="m", index_type="Bogus99")
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1/0"):
        with pytest.raises(TwinsightError, match="--shard"):
            parse_shard(bad)


def test_bad_embeddings():
    x, items = _data(n=10)
    with pytest.raises(TwinsightError, match="must match"):
        SimilarityIndex.build(x[:5], items, model_fingerprint="m")
    with pytest.raises(TwinsightError, match="0 embeddings"):
        SimilarityIndex.build(x[:0], items.iloc[:0], model_fingerprint="m")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(TwinsightError, match="NaN"):
        SimilarityIndex.build(bad, items, model_fingerprint="m")
    idx = SimilarityIndex.build(x, items, model_fingerprint="m")
    with pytest.raises(TwinsightError, match="dimension 8"):
        idx.search(np.ones((1, 8), np.float32), 3)
