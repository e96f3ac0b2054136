"""Model bundles and embedding: round trip, fingerprint, safe loading, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from twinsight.data.collection import Collection
from twinsight.data.transforms import Preprocessing
from twinsight.embedding import embed_collection, embed_images
from twinsight.errors import TwinsightError
from twinsight.models.bundle import META_FILE, WEIGHTS_FILE, ModelBundle
from twinsight.models.encoders import create_encoder

torch.set_num_threads(1)


def _images(n=6, size=28, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 1, size, size)) * 255).astype(np.float32)


def _bundle(seed=0, **fields):
    torch.manual_seed(seed)
    enc = create_encoder("small-cnn", embedding_dim=8, input_size=(28, 28))
    # move the batch-norm statistics off their defaults so the round trip must keep them
    enc.train()
    with torch.no_grad():
        enc(torch.rand(16, 1, 28, 28))
    fields.setdefault(
        "targets",
        {
            "kind": "params",
            "columns": ["mass", "age"],
            "normalizer": {"method": "zscore", "mean": [1.0, 2.0], "std": [0.5, 0.1]},
            "kernel": "cosine",
            "width": 1.0,
        },
    )
    return ModelBundle.from_encoder(enc, **fields)


def test_round_trip_same_embeddings_and_fingerprint(tmp_path):
    bundle = _bundle(
        calibration={"scale": np.float32(7.5), "bias": -2.0, "threshold": 0.6},
        training={"epochs": 3, "metrics": {"p_at_1": np.float64(0.97)}, "loss": "bce"},
    )
    images = _images()
    before = bundle.embed(images)
    path = bundle.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == [WEIGHTS_FILE, META_FILE]
    loaded = ModelBundle.load(path)
    after = loaded.embed(images)
    assert before.dtype == after.dtype == np.float32 and before.shape == (6, 8)
    np.testing.assert_allclose(before, after, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert loaded.fingerprint == bundle.fingerprint and len(bundle.fingerprint) == 16
    assert loaded.encoder_name == "small-cnn" and loaded.encoder_config == bundle.encoder_config
    assert loaded.preprocessing == bundle.preprocessing
    assert loaded.targets == bundle.targets
    assert loaded.calibration == {"scale": 7.5, "bias": -2.0, "threshold": 0.6}
    assert loaded.training["metrics"]["p_at_1"] == pytest.approx(0.97)
    assert not loaded.encoder.training
    meta = json.loads((path / META_FILE).read_text())
    assert meta["format"] == "twinsight-model" and meta["version"] == 1
    assert meta["twinsight_version"] and meta["fingerprint"] == bundle.fingerprint


def test_fingerprint_changes_with_weights():
    a, b = _bundle(seed=0), _bundle(seed=1)
    assert a.fingerprint != b.fingerprint
    fp = a.fingerprint
    with torch.no_grad():
        next(a.encoder.parameters())[0, 0, 0, 0] += 1e-3
    assert a.fingerprint != fp


def test_save_refuses_existing_folder_unless_overwrite(tmp_path):
    bundle = _bundle()
    bundle.save(tmp_path / "m")
    with pytest.raises(TwinsightError, match="already exists.*--overwrite"):
        bundle.save(tmp_path / "m")
    other = _bundle(seed=3)
    other.save(tmp_path / "m", overwrite=True)
    assert ModelBundle.load(tmp_path / "m").fingerprint == other.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary leftovers


def test_save_refuses_non_json_metadata_and_writes_nothing(tmp_path):
    bundle = _bundle(training={"bad": object()})
    with pytest.raises(TwinsightError, match="cannot store the model metadata as JSON"):
        bundle.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(TwinsightError, match="does not exist or is not a folder"):
        ModelBundle.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwinsightError, match="not a twinsight model: it has no twinsight.json"):
        ModelBundle.load(tmp_path / "empty")
    path = _bundle().save(tmp_path / "m")
    meta = json.loads((path / META_FILE).read_text())

    (path / META_FILE).write_text("{not json")
    with pytest.raises(TwinsightError, match="not valid JSON"):
        ModelBundle.load(path)
    (path / META_FILE).write_text(json.dumps({**meta, "format": "keras"}))
    with pytest.raises(TwinsightError, match="format 'keras', expected 'twinsight-model'"):
        ModelBundle.load(path)
    (path / META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(TwinsightError, match="newer than this twinsight"):
        ModelBundle.load(path)
    bad_encoder = {**meta, "encoder": {"name": "vgg", "config": {}}}
    (path / META_FILE).write_text(json.dumps(bad_encoder))
    with pytest.raises(TwinsightError, match="cannot rebuild its encoder.*unknown encoder 'vgg'"):
        ModelBundle.load(path)
    other = {**meta, "encoder": {"name": "small-cnn", "config": {"embedding_dim": 4}}}
    (path / META_FILE).write_text(json.dumps(other))
    with pytest.raises(TwinsightError, match="does not fit the encoder"):
        ModelBundle.load(path)
    (path / META_FILE).write_text(json.dumps({**meta, "fingerprint": "0" * 16}))
    with pytest.raises(TwinsightError, match="fingerprint does not match"):
        ModelBundle.load(path)
    (path / META_FILE).write_text(json.dumps(meta))
    ModelBundle.load(path)  # intact again


def test_load_refuses_truncated_or_missing_weights(tmp_path):
    path = _bundle().save(tmp_path / "m")
    weights = path / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(TwinsightError, match="model.safetensors is damaged or truncated"):
        ModelBundle.load(path)
    weights.unlink()
    with pytest.raises(TwinsightError, match="has no model.safetensors"):
        ModelBundle.load(path)


def test_load_never_unpickles(tmp_path, monkeypatch):
    import pickle

    path = _bundle().save(tmp_path / "m")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ModelBundle.load(path)


def test_similarity_and_probability():
    bundle = _bundle(calibration={"scale": 10.0, "bias": -5.0, "threshold": 0.5})
    a, b = _images(4, seed=1), _images(4, seed=2)
    sims = bundle.similarity(a, b)
    ea, eb = bundle.embed(a), bundle.embed(b)
    np.testing.assert_allclose(sims, np.sum(ea * eb, axis=1), atol=1e-6)
    np.testing.assert_allclose(bundle.similarity(a, a), 1.0, atol=1e-5)
    assert bundle.similarity(a[:1], b).shape == (4,)  # one image against many
    with pytest.raises(TwinsightError, match="got 4 and 3"):
        bundle.similarity(a, b[:3])
    np.testing.assert_allclose(bundle.probability(np.array([0.5, 1.0])), [0.5, 1 / (1 + np.e**-5)])
    with pytest.raises(TwinsightError, match="no score calibration"):
        _bundle().probability(np.zeros(2))


def test_embed_images_applies_preprocessing_and_restores_mode():
    torch.manual_seed(0)
    enc = create_encoder("small-cnn", embedding_dim=8, input_size=(28, 28))
    enc.train()
    images = _images(5, size=40)  # resized to 28x28 by the preprocessing
    out = embed_images(enc, images, enc.default_preprocessing(), batch_size=2)
    assert out.shape == (5, 8) and out.dtype == np.float32
    assert enc.training  # training flag restored
    prep = enc.default_preprocessing()
    enc.eval()
    with torch.no_grad():
        direct = enc(torch.from_numpy(prep(images))).numpy()
    np.testing.assert_allclose(out, direct, atol=1e-5)
    # min-max per image: scaling an image changes nothing
    np.testing.assert_allclose(embed_images(enc, images * 3.0, prep), out, atol=1e-5)
    one = embed_images(enc, images[0, 0], prep)  # a single [H, W] image
    np.testing.assert_allclose(one[0], out[0], atol=1e-5)


def test_embed_collection_streams_in_order():
    bundle = _bundle()
    images = _images(7)
    items = pd.DataFrame({"key": [f"k{i}" for i in range(7)], "label": list("aabbccd")})
    collection = Collection.from_arrays(images, items, name="tiny")
    out = embed_collection(bundle, collection, batch_size=3)
    np.testing.assert_allclose(out, bundle.embed(images), atol=1e-6)
    again = embed_collection(bundle.encoder, collection.subset([6, 0]), batch_size=1)
    np.testing.assert_allclose(again, out[[6, 0]], atol=1e-6)
    empty = embed_collection(bundle, collection.subset(np.array([], dtype=np.int64)))
    assert empty.shape == (0, 8)


def test_embedding_bad_inputs():
    bundle = _bundle()
    with pytest.raises(TwinsightError, match="batch_size must be an integer >= 1, got 0"):
        bundle.embed(_images(2), batch_size=0)
    with pytest.raises(TwinsightError, match=r"expected images \[N, C, H, W\]"):
        bundle.embed(np.zeros((1, 1, 1, 28, 28)))
    with pytest.raises(TwinsightError, match="expected a ModelBundle or an encoder"):
        embed_collection("model", None)
    with pytest.raises(TwinsightError, match="unknown device"):
        bundle.embed(_images(1), device="tpu:x")


def test_custom_preprocessing_is_stored(tmp_path):
    prep = Preprocessing(
        size=(28, 28), channels=1, normalize="standardize", mean=(0.13,), std=(0.3,)
    )
    bundle = _bundle(preprocessing=prep)
    loaded = ModelBundle.load(bundle.save(tmp_path / "m"))
    assert loaded.preprocessing == prep


def test_embed_collection_with_progress_bar(capsys):
    bundle = _bundle()
    items = pd.DataFrame({"key": [f"k{i}" for i in range(4)]})
    collection = Collection.from_arrays(_images(4), items, name="tiny")
    out = embed_collection(bundle, collection, batch_size=2, progress=True)
    assert out.shape == (4, 8)
    assert capsys.readouterr().out == ""  # the bar goes to stderr, never stdout
