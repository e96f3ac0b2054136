"""SimilarityIndex: exact search, persistence, bad folders, shards and merge."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pandas as pd
import pytest

from twinsight.errors import TwinsightError
from twinsight.index import (
    SearchParameters,
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


# -- per-call search parameters --------------------------------------------------------------------


def _ivf(n=2000, nlist=32, nprobe=4, factory=None):
    x, items = _data(n=n)
    idx = SimilarityIndex.build(
        x, items, model_fingerprint="m", index_type=factory or f"IVF{nlist},Flat", nprobe=nprobe
    )
    return idx, x


def test_search_parameters_are_per_call():
    idx, x = _ivf()
    q = x[:50] + 0.3 * np.random.default_rng(2).normal(size=(50, 16)).astype(np.float32)
    ivf = faiss.extract_index_ivf(idx.index)
    first = idx.search(q, 10, nprobe=1)
    full = idx.search(q, 10, nprobe=32)
    again = idx.search(q, 10, nprobe=1)
    np.testing.assert_array_equal(full[1], _brute(x, q, 10)[1])  # every list probed: exact
    assert not np.array_equal(first[1], full[1])  # nprobe=1 really is different
    np.testing.assert_array_equal(again[1], first[1])
    np.testing.assert_array_equal(again[0], first[0])
    assert ivf.nprobe == 4 and idx.meta["nprobe"] == 4  # the index is unchanged
    assert idx.search_parameters == SearchParameters(nprobe=4)
    # the dataclass and the keywords are the same thing; keywords win over params
    np.testing.assert_array_equal(idx.search(q, 10, SearchParameters(nprobe=1))[1], first[1])
    by_both = idx.search(q, 10, SearchParameters(nprobe=1), nprobe=32)
    np.testing.assert_array_equal(by_both[1], full[1])
    default = idx.search(q, 10)
    np.testing.assert_array_equal(default[1], idx.search(q, 10, nprobe=4)[1])


def test_concurrent_searches_with_different_nprobe_do_not_meet():
    from concurrent.futures import ThreadPoolExecutor

    idx, x = _ivf()
    q = x[:40] + 0.3 * np.random.default_rng(3).normal(size=(40, 16)).astype(np.float32)
    expected = {p: idx.search(q, 5, nprobe=p)[1] for p in (1, 32)}
    expected_one = {p: idx.search(q[:1], 5, nprobe=p)[1] for p in (1, 32)}

    def work(i):
        p = (1, 32)[i % 2]
        batch = idx.search(q, 5, nprobe=p)[1]
        single = idx.search(q[:1], 5, nprobe=p)[1]
        return np.array_equal(batch, expected[p]) and np.array_equal(single, expected_one[p])

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(40)))
    assert faiss.extract_index_ivf(idx.index).nprobe == 4


def test_ef_search_is_per_call_for_hnsw_and_hnsw_quantizers():
    x, items = _data(n=1000)
    hnsw = SimilarityIndex.build(x, items, model_fingerprint="m", index_type="HNSW8")
    assert hnsw.index.hnsw.efSearch == 64
    exact = hnsw.search(x[:20], 5, ef_search=500)
    np.testing.assert_array_equal(exact[1], _brute(x, x[:20], 5)[1])
    hnsw.search(x[:20], 5, ef_search=8)
    assert hnsw.index.hnsw.efSearch == 64 and hnsw.meta["ef_search"] == 64
    ivf_hnsw = SimilarityIndex.build(
        x, items, model_fingerprint="m", index_type="IVF16_HNSW8,Flat", nprobe=16
    )
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(ivf_hnsw.index).quantizer)
    before = quantizer.hnsw.efSearch
    out = ivf_hnsw.search(x[:20], 5, nprobe=16, ef_search=200)
    np.testing.assert_array_equal(out[1], _brute(x, x[:20], 5)[1])
    assert quantizer.hnsw.efSearch == before


def test_search_parameters_behind_a_pretransform():
    idx, x = _ivf(factory="PCA8,IVF16,Flat", nprobe=2)
    q = x[:30]
    first = idx.search(q, 5, nprobe=1)
    full = idx.search(q, 5, nprobe=16)
    assert not np.array_equal(first[1], full[1])
    np.testing.assert_array_equal(idx.search(q, 5, nprobe=1)[1], first[1])
    assert faiss.extract_index_ivf(idx.index).nprobe == 2


def test_bad_search_parameters():
    with pytest.raises(TwinsightError, match="nprobe must be an integer >= 1"):
        SearchParameters(nprobe=0)
    with pytest.raises(TwinsightError, match="ef_search must be an integer >= 1"):
        SearchParameters(ef_search=2.5)
    x, items = _data(n=20)
    idx = SimilarityIndex.build(x, items, model_fingerprint="m")
    with pytest.raises(TwinsightError, match="nprobe"):
        idx.search(x[:1], 3, nprobe=-1)
    # a setting that does not apply (nprobe of a Flat index) is ignored
    np.testing.assert_array_equal(idx.search(x[:3], 3, nprobe=7)[1], idx.search(x[:3], 3)[1])


def test_faiss_global_settings_are_changed_under_a_lock():
    import threading
    import time

    default = faiss.cvar.distance_compute_blas_threshold
    seen, order = [], []

    def single_query():
        with faiss_search_settings(1):
            order.append("single")
            seen.append(faiss.cvar.distance_compute_blas_threshold)

    with faiss_search_settings(100):
        thread = threading.Thread(target=single_query)
        thread.start()
        time.sleep(0.1)
        assert faiss.cvar.distance_compute_blas_threshold == 20
        order.append("batch done")
    thread.join()
    assert order == ["batch done", "single"] and seen == [default]


# -- the model path, relative to the index folder ----------------------------------------------


def test_model_path_is_stored_relative_and_resolved_from_anywhere(tmp_path, monkeypatch):
    model = tmp_path / "runs" / "model"
    model.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    x, items = _data(n=20)
    monkeypatch.chdir(tmp_path)  # a relative path, as `twinsight demo` passes it
    idx = SimilarityIndex.build(x, items, model_fingerprint="m", model_path="runs/model")
    assert idx.model_path == model
    idx.save("indexes/idx")
    meta = json.loads((tmp_path / "indexes" / "idx" / "index.json").read_text())
    assert meta["model_path"] == "../../runs/model"
    monkeypatch.chdir(tmp_path / "elsewhere")
    back = SimilarityIndex.load("../indexes/idx")
    assert back.model_path == model and back.model_path.is_absolute()
    assert back.meta["model_path"] == str(model)  # what cli/search.py reads
    # a copy of the index folder elsewhere still finds the model (absolute fallback)
    import shutil

    shutil.copytree(tmp_path / "indexes" / "idx", tmp_path / "elsewhere" / "copy")
    assert SimilarityIndex.load("copy").model_path == model
    # saving a loaded index again keeps it relative to the new folder
    back.save(tmp_path / "runs" / "idx2")
    meta2 = json.loads((tmp_path / "runs" / "idx2" / "index.json").read_text())
    assert meta2["model_path"] == "../model"


def test_old_index_json_model_paths_keep_working(tmp_path, monkeypatch):
    model = tmp_path / "runs" / "model"
    model.mkdir(parents=True)
    x, items = _data(n=20)
    SimilarityIndex.build(x, items, model_fingerprint="m").save(tmp_path / "idx")
    meta_file = tmp_path / "idx" / "index.json"
    meta = json.loads(meta_file.read_text())
    monkeypatch.chdir(tmp_path)
    for old in (str(model), "runs/model"):  # absolute, or relative to where it was built
        meta_file.write_text(json.dumps(meta | {"model_path": old}))
        assert SimilarityIndex.load("idx").model_path == model
    assert SimilarityIndex.build(x, items, model_fingerprint="m").model_path is None


def test_search_parameters_survive_faiss_torch_utils():
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which wraps Index.search."""
    import faiss.contrib.torch_utils  # noqa: F401

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(600, 8)).astype(np.float32)
    items = pd.DataFrame({"key": [f"k{i}" for i in range(600)]})
    idx = SimilarityIndex.build(vectors, items, model_fingerprint="m", index_type="IVF8,Flat")
    one = idx.search(vectors[:3], 5, nprobe=1)
    every = idx.search(vectors[:3], 5, nprobe=8)
    assert one[1].shape == every[1].shape == (3, 5)
    np.testing.assert_array_equal(every[1][:, 0], [0, 1, 2])


def test_refined_float16_index_is_exact_and_keeps_its_re_ranking_depth(tmp_path):
    """SQfp16,RFlat: a float16 scan re-scored in float32 gives Flat's neighbours; the
    re-ranking depth is written into the FAISS file and passed with every call."""
    from twinsight.index import REFINE_K_FACTOR, faiss_search_parameters

    x, items = _data(2000, 16)
    q = x[:40] + 0.05 * np.random.default_rng(3).normal(size=(40, 16)).astype(np.float32)
    idx = SimilarityIndex.build(x, items, model_fingerprint="m", index_type="SQfp16,RFlat")
    sims, found = idx.search(q, 10)
    exact_sims, exact = _brute(x, q, 10)
    np.testing.assert_array_equal(found, exact)
    np.testing.assert_allclose(sims, exact_sims, atol=1e-5)  # float32 scores, not float16
    back = SimilarityIndex.load(idx.save(tmp_path / "idx"))
    assert back.index.k_factor == REFINE_K_FACTOR
    params = faiss_search_parameters(back.index, SearchParameters())
    assert params.k_factor == REFINE_K_FACTOR
    np.testing.assert_array_equal(back.search(q, 10)[1], exact)
