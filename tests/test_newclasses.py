"""New classes and small sets: class-held-out validation, small-set training, an adaptive
sampler, and the pixel / PCA baselines beside every evaluation (issue 11)."""

from __future__ import annotations

import json
import logging

import lightning
import numpy as np
import pandas as pd
import pytest
import torch

import twinsight
from twinsight.api import pack
from twinsight.config import TrainConfig, apply_overrides
from twinsight.data.collection import Collection
from twinsight.data.sampling import MPerClassSampler, RandomBatchSampler
from twinsight.data.targets import TargetSpec
from twinsight.data.transforms import preprocess
from twinsight.models.encoders import create_encoder
from twinsight.training.data import build_sampler
from twinsight.training.metrics import retrieval_metrics
from twinsight.training.module import SiameseModule, projection_head
from twinsight.training.preparation import prepare
from twinsight.training.splits import split_with_info


def cfg(**overrides) -> TrainConfig:
    return apply_overrides(TrainConfig(), {"progress": False, **overrides})


def labelled(n_classes: int, per_class: int, size: int = 8, seed: int = 0) -> Collection:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = rng.random((len(labels), 1, size, size), dtype=np.float32)
    items = pd.DataFrame({"key": [f"k{i}" for i in range(len(labels))], "label": labels})
    return Collection.from_arrays(images, items, name="toy")


def one_image_per_system(n: int = 80, size: int = 12) -> Collection:
    """A pose-angle table: one image per system, a group column (the object)."""
    rng = np.random.default_rng(1)
    angle = rng.uniform(0, 2 * np.pi, n)
    objects = np.arange(n) % 8
    y, x = np.mgrid[:size, :size] - size / 2
    images = np.stack(
        [np.exp(-((x - 3 * np.cos(a)) ** 2 + (y - 3 * np.sin(a)) ** 2) / 4) for a in angle]
    ).astype(np.float32)
    items = pd.DataFrame(
        {
            "key": [f"obj{o}_{i}" for i, o in enumerate(objects)],
            "system": [f"s{i}" for i in range(n)],
            "label": objects,
            "angle_sin": np.sin(angle),
            "angle_cos": np.cos(angle),
        }
    )
    return Collection.from_arrays(
        images, items, name="poses", param_columns=["angle_sin", "angle_cos"]
    )


def classes(c: Collection) -> set[str]:
    return set(c.items["label"].astype(str))


# -- validation that matches the question ---------------------------------------------------------
def test_val_split_by_class_holds_out_whole_classes():
    train, val, shape = split_with_info(labelled(8, 10), cfg())
    assert classes(train).isdisjoint(classes(val))
    assert shape["how"] == "held-out classes" and shape["classes"] == len(classes(val)) >= 2
    assert shape["images"] == len(val) and shape["systems"] == len(val)


def test_val_split_within_class_and_auto_below_six_classes():
    train, val, shape = split_with_info(labelled(8, 10), cfg(val_split="within-class"))
    assert classes(val) <= classes(train) and shape["how"].startswith("held-out images")
    _, val5, shape5 = split_with_info(labelled(5, 10), cfg())  # auto: 5 classes
    assert shape5["how"].startswith("held-out images") and len(classes(val5)) == 5


def test_one_image_per_system_holds_out_a_block_or_a_group(caplog):
    poses = one_image_per_system()
    with caplog.at_level(logging.INFO, logger="twinsight"):
        prep = prepare(cfg(targets="params"), poses)
    assert "parameter space" in prep.validation["how"]
    assert isinstance(prep.sampler, RandomBatchSampler)
    assert "random batches" in caplog.text
    prep = prepare(cfg(targets="params", group_column="label"), poses)
    assert "groups of 'label'" in prep.validation["how"]
    assert set(prep.train.items["label"]).isdisjoint(set(prep.val.items["label"]))


def test_one_image_per_system_trains_with_default_options(tmp_path):
    result = twinsight.train(
        one_image_per_system(), tmp_path / "run", targets="params", group_column="label",
        epochs=1, min_steps_per_epoch=5, progress=False,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "groups of 'label'" in metrics["validation"]["how"]
    assert metrics["validation"]["systems"] == metrics["validation"]["images"] > 0
    assert np.isfinite(result.metrics["final"]["val_score"])


# -- a sampler that adapts ------------------------------------------------------------------------
def test_sampler_auto_falls_back_and_logs(caplog):
    spec = TargetSpec(kind="labels")
    with caplog.at_level(logging.INFO, logger="twinsight"):
        small = build_sampler(cfg(), spec, labelled(40, 3))  # classes of 3 < the auto m
    assert isinstance(small, MPerClassSampler) and small.m <= 3
    assert all(len(b) == small.batch_size for b in small)
    with caplog.at_level(logging.INFO, logger="twinsight"):
        single = build_sampler(cfg(), spec, labelled(60, 1))
    assert isinstance(single, RandomBatchSampler)
    assert "single image" in caplog.text


def test_small_sets_get_enough_steps_and_a_fitting_batch():
    sampler = build_sampler(cfg(), TargetSpec(kind="labels"), labelled(12, 10))
    assert len(sampler) >= 50  # min_steps_per_epoch for labels
    assert sampler.batch_size <= 60  # at most half the 120 images
    params = build_sampler(cfg(targets="params"), TargetSpec(kind="params"), labelled(12, 10))
    assert len(params) >= 50  # a parameter table without systems: one image per system


# -- small sets train -----------------------------------------------------------------------------
def thirty_classes() -> Collection:
    """300 images, 30 classes: 10 mnist5k digits each of 10 labels x 3 transforms."""
    mnist = twinsight.open_collection("mnist5k")
    labels = mnist.items["label"].to_numpy()
    picks = np.concatenate([np.flatnonzero(labels == d)[:30] for d in range(10)])
    x = mnist.images(picks)
    digit = labels[picks]
    variant = np.tile(np.repeat(np.arange(3), 10), 10)
    x = np.where((variant == 1)[:, None, None, None], np.rot90(x, 1, axes=(2, 3)), x)
    x = np.where((variant == 2)[:, None, None, None], x[..., ::-1, :], x)
    items = pd.DataFrame(
        {"key": [f"t{i}" for i in range(len(picks))], "label": digit * 3 + variant}
    )
    return Collection.from_arrays(np.ascontiguousarray(x), items, name="thirty")


def test_three_hundred_images_thirty_classes_learn(tmp_path):
    data = thirty_classes()
    assert len(data) == 300 and data.items["label"].nunique() == 30
    result = twinsight.train(
        data, tmp_path / "run", epochs=4, min_steps_per_epoch=8, batch_size=64,
        early_stopping=0, progress=False,
    )  # fmt: skip
    history = result.metrics["history"]
    assert result.metrics["validation"]["how"] == "held-out classes"
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.metrics["best_epoch"] != 0
    # the kept model beats its own initialization on the held-out classes
    config = cfg(epochs=4, min_steps_per_epoch=8, batch_size=64, early_stopping=0)
    prep = prepare(config, data)
    lightning.seed_everything(config.trainer.seed, workers=True, verbose=False)
    init = create_encoder(prep.encoder_name, **prep.encoder_config).eval()
    with torch.no_grad():
        emb = init(torch.from_numpy(preprocess(prep.val.images(np.arange(len(prep.val))),
                                               prep.preprocessing)))  # fmt: skip
    before = retrieval_metrics(emb.numpy(), prep.val.items["label"].to_numpy())
    after = result.metrics["final"]["val_map_at_r"]
    assert after > before["mean_average_precision_at_r"]


# -- a training-only projection head --------------------------------------------------------------
def test_projection_head_is_chosen_by_target_kind_and_option():
    assert projection_head(cfg(), "labels", 16)[0].in_features == 16
    assert projection_head(cfg(), "params", 16) is None
    assert projection_head(cfg(projection="none"), "labels", 16) is None
    assert projection_head(cfg(projection="mlp"), "params", 16) is not None


def test_the_loss_sees_the_projection_and_it_learns():
    prep = prepare(cfg(), labelled(6, 4))
    module = SiameseModule(
        config=cfg().model_dump(mode="json"), config_hash="x",
        encoder_config={"name": prep.encoder_name, **prep.encoder_config},
        targets={"kind": "labels"}, data_fingerprint="y", loss_name="multi-similarity",
    )  # fmt: skip
    seen = {}
    module.loss_fn.register_forward_hook(lambda m, i, o: seen.update(S=i[0]))
    x, y = torch.rand(8, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    module.pair_loss(x, y).backward()
    with torch.no_grad():
        emb = module.encoder(x)
        projected = torch.nn.functional.normalize(module.projection(emb), dim=1)
    assert torch.allclose(seen["S"], projected @ projected.T, atol=1e-5)
    assert not torch.allclose(seen["S"], emb @ emb.T, atol=1e-3)
    grads = [p.grad for p in module.projection.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_projection_head_stays_out_of_the_saved_model(tmp_path):
    data = labelled(6, 12)
    options = dict(epochs=1, min_steps_per_epoch=2, embedding_dim=8, progress=False)
    with_head = twinsight.train(data, tmp_path / "mlp", **options)
    without = twinsight.train(data, tmp_path / "none", projection="none", **options)
    saved = twinsight.load_model(with_head.run).encoder.state_dict()
    assert saved.keys() == twinsight.load_model(without.run).encoder.state_dict().keys()
    assert not any("projection" in key for key in saved)


# -- baselines beside every evaluation ------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    digits = twinsight.open_collection("digits")
    digits = digits.subset(np.arange(400))
    digits.items["split"] = np.where(digits.items["label"].to_numpy() < 5, "train", "test")
    run = twinsight.train(
        digits.subset(digits.items["split"].to_numpy() == "train"), root / "run", epochs=1,
        min_steps_per_epoch=2, embedding_dim=16, progress=False,
    )  # fmt: skip
    return run.run, digits


def test_evaluate_reports_pixel_and_pca_baselines_with_the_same_keys(digits_run, run_cli):
    run, digits = digits_run
    ev = twinsight.evaluate(run, digits, split="test").to_dict()
    model_keys = set(ev) - {"data", "split", "items", "baselines", "worse_than_pca", "compared_on"}
    assert set(ev["baselines"]) == {"pixels", "pca"}
    for name in ("pixels", "pca"):
        assert set(ev["baselines"][name]) == model_keys
        assert set(ev["baselines"][name]["verification"]) == set(ev["verification"])
    assert isinstance(ev["worse_than_pca"], bool)
    assert twinsight.evaluate(run, digits, split="test", baseline="none").to_dict().keys() == (
        model_keys | {"data", "split", "items"}
    )


def test_cli_evaluate_json_carries_baselines(digits_run, run_cli, tmp_path):
    run, digits = digits_run
    table = tmp_path / "digits.h5"
    pack(digits, table)
    r = run_cli("evaluate", run, table, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert "mean_average_precision_at_r" in data["baselines"]["pca"]
    assert "precision_at_1" in data["baselines"]["pixels"]
    r = run_cli("evaluate", run, table)
    assert "pca (baseline)" in r.stdout and "PCA" in r.stdout
    r = run_cli("evaluate", run, table, "--json", "--baseline", "none")
    assert "baselines" not in json.loads(r.stdout)
