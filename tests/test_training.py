"""Siamese training: every pair of a batch, splits, resume, run folder, bad inputs."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from twinsight.api import partial_dir, train
from twinsight.config import TrainConfig, apply_overrides
from twinsight.data.collection import Collection
from twinsight.data.packed import write_packed
from twinsight.data.params import parameter_similarity
from twinsight.errors import TwinsightError
from twinsight.models.bundle import ModelBundle
from twinsight.training import (
    SiameseModule,
    TargetSpec,
    fit,
    prepare,
    resolve_targets,
    split_train_val,
    target_matrix,
)

FAST = {"progress": False, "batch_size": 16, "epochs": 2, "early_stopping": 0, "lr": 3e-3}
FAST["min_steps_per_epoch"] = 0  # one pass per epoch: these tests check the loop, not learning


def _label_images(n_per_class: int, classes: int = 4, size: int = 16, seed: int = 0):
    """Class k = a bright 6x6 square in its own place, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k in range(classes):
        for _ in range(n_per_class):
            img = rng.normal(0.1, 0.05, (size, size))
            r, c = 2 + 6 * (k // 2) + rng.integers(0, 2), 2 + 6 * (k % 2) + rng.integers(0, 2)
            img[r : r + 6, c : c + 6] += 1.0
            images.append(img)
            labels.append(f"c{k}")
    return np.asarray(images, dtype=np.float32), labels


def labelled(n_per_class: int = 12, classes: int = 4) -> Collection:
    images, labels = _label_images(n_per_class, classes)
    items = pd.DataFrame({"key": [f"k{i}" for i in range(len(labels))], "label": labels})
    return Collection.from_arrays(images, items, name="tiny-labels")


def simulated(systems: int = 12, projections: int = 4, size: int = 16) -> Collection:
    """Blobs whose width and brightness follow two parameters; projections = small shifts."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    images, rows = [], []
    for s in range(systems):
        mass, radius = rng.uniform(1, 10), rng.uniform(1.5, 5)
        for p in range(projections):
            cx, cy = size / 2 + rng.normal(0, 0.7, 2)
            images.append(mass * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))
            rows.append({"key": f"s{s}p{p}", "system": f"s{s}", "projection": p,
                         "mass": mass, "radius": radius})  # fmt: skip
    items = pd.DataFrame(rows)
    return Collection.from_arrays(
        np.asarray(images, dtype=np.float32),
        items,
        name="tiny-sims",
        param_columns=["mass", "radius"],
    )


def packed(path, collection: Collection):
    write_packed(
        path, collection.items, [collection.images()], collection.image_shape,
        param_columns=collection.param_columns,
    )  # fmt: skip
    return path


def cfg(**overrides) -> TrainConfig:
    return apply_overrides(TrainConfig(), {"encoder": "small-cnn", **FAST, **overrides})


# -- pieces ---------------------------------------------------------------------------------------
def test_target_matrix_matches_parameter_similarity():
    z = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    for kernel, width in (("cosine", 1.0), ("rbf", 0.7)):
        spec = TargetSpec("params", ("a", "b", "c"), (), kernel, width)
        ours = target_matrix(torch.from_numpy(z), spec).numpy()
        np.testing.assert_allclose(ours, parameter_similarity(z, z, kernel, width), atol=1e-5)
    labels = torch.tensor([0, 1, 0])
    assert target_matrix(labels, TargetSpec("labels")).tolist() == [
        [1, 0, 1], [0, 1, 0], [1, 0, 1]
    ]  # fmt: skip


def test_one_forward_pass_per_image_and_all_pairs():
    prep = prepare(cfg(), labelled())
    hp = {
        "config": cfg().model_dump(mode="json"), "config_hash": "x",
        "encoder_config": {"name": prep.encoder_name, **prep.encoder_config},
        "targets": {"kind": "labels"}, "data_fingerprint": "y", "loss_name": "contrastive",
    }  # fmt: skip
    module = SiameseModule(**hp)
    calls = []
    module.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    seen = {}
    module.loss_fn.register_forward_hook(lambda m, i, o: seen.update(S=i[0], T=i[1], mask=i[2]))
    x = torch.rand(8, 1, 16, 16)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = module.pair_loss(x, y)
    assert calls == [8]  # the whole batch through the encoder once
    assert seen["S"].shape == (8, 8) and int(seen["mask"].sum()) == 8 * 7
    assert not seen["mask"].diagonal().any()
    assert float(seen["T"][0, 1]) == 1.0 and float(seen["T"][0, 2]) == 0.0
    assert torch.isfinite(loss)


def test_split_by_system_and_split_column():
    sims = simulated(systems=20)
    train_c, val_c = split_train_val(sims, cfg(val_fraction=0.25))
    a, b = set(train_c.items["system"]), set(val_c.items["system"])
    assert not a & b and len(b) == 5 and len(a) == 15
    lab = labelled(10)
    train_c, val_c = split_train_val(lab, cfg())
    assert val_c.items["label"].value_counts().to_dict() == {f"c{k}": 2 for k in range(4)}
    assert len(train_c) == 32 and not set(train_c.items["key"]) & set(val_c.items["key"])
    items = lab.items.copy()
    items["split"] = ["train"] * 30 + ["validation"] * 5 + ["test"] * 5
    split = Collection.from_arrays(lab.images(), items, name="s")
    train_c, val_c = split_train_val(split, cfg())
    assert len(train_c) == 30 and len(val_c) == 5  # the test rows are left out


def test_training_reduces_loss_and_validation_improves():
    config = cfg(epochs=4, loss="contrastive")
    bundle, metrics = fit(config, labelled(16))
    hist = metrics["history"]
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert metrics["final"]["val_p_at_1"] == 1.0  # four well separated classes
    assert bundle.targets == {"kind": "labels"}
    assert set(bundle.calibration) == {"scale", "bias", "threshold"}
    assert bundle.calibration["scale"] > 0


def test_auto_log10_picks_parameters_spanning_decades():
    sims = simulated()
    items = sims.items.copy()
    items["rate"] = 10.0 ** np.linspace(-7, -4, len(items))
    coll = Collection.from_arrays(sims.images(), items, name="s", param_columns=["mass", "rate"])
    assert resolve_targets(cfg(), coll).log10 == ("rate",)
    assert resolve_targets(cfg(log10=[]), coll).log10 == ()
    with pytest.raises(TwinsightError, match="not among --params"):
        resolve_targets(cfg(log10=["rate"], params=["mass"]), coll)


class _Failing(torch.nn.Module):
    """An encoder whose forward pass raises ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def forward(self, x):
        raise RuntimeError(self.message)


def test_input_probe_calls_images_too_small_only_for_size_errors():
    from twinsight.training import check_input_size

    size_error = (
        "Calculated padded input size per channel: (2 x 2). Kernel size: (3 x 3). "
        "Kernel size can't be greater than actual input size"
    )
    with pytest.raises(TwinsightError, match="3x3 pixels are too small for encoder 'tiny'"):
        check_input_size(_Failing(size_error), "tiny", 1, (3, 3))
    pool_error = (
        "Given input size: (16x1x1). Calculated output size: (16x0x0). Output size is too small"
    )
    with pytest.raises(TwinsightError, match="too small for encoder 'tiny'"):
        check_input_size(_Failing(pool_error), "tiny", 1, (3, 3))
    other = "mat1 and mat2 shapes cannot be multiplied (2x5 and 3x4)"
    with pytest.raises(TwinsightError) as info:
        check_input_size(_Failing(other), "odd-net", 3, (64, 64))
    message = str(info.value)
    assert "too small" not in message and "encoder 'odd-net'" in message
    assert other in message and "3-channel 64x64" in message
    encoder = _Failing(other).train()
    with pytest.raises(TwinsightError):
        check_input_size(encoder, "odd-net", 3, (64, 64))
    assert encoder.training  # the probe leaves the mode as it found it


def test_label_model_calibration_is_the_shared_platt_fit():
    from twinsight.models.calibration import fit_platt
    from twinsight.training.calibration import random_pairs, score_calibration

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 4
    centers = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=1)
    emb = torch.nn.functional.normalize(centers[y] + 0.6 * torch.randn(40, 8, generator=gen), dim=1)
    spec = TargetSpec("labels")
    cal = score_calibration(torch.nn.MSELoss(), emb, y, spec)
    scores, same = random_pairs(emb, y)
    assert cal == fit_platt(scores, same)
    assert score_calibration(torch.nn.MSELoss(), emb, torch.zeros(40), spec) == {
        "scale": 10.0, "bias": -5.0, "threshold": 0.5
    }  # fmt: skip
    assert score_calibration(torch.nn.MSELoss(), emb, y, TargetSpec("params")) is None


def test_parameter_targets_store_normalizer_and_spearman():
    # in_memory_gb=0: the streamed (on-disk) data path
    config = cfg(epochs=2, log10=["mass"], params=["mass", "radius"], **{"runtime.in_memory_gb": 0})
    bundle, metrics = fit(config, simulated())
    assert bundle.targets["kind"] == "params"
    assert bundle.targets["columns"] == ["mass", "radius"] and bundle.targets["log10"] == ["mass"]
    assert bundle.targets["normalizer"]["columns"] == ["mass", "radius"]
    assert -1.0 <= metrics["final"]["val_spearman"] <= 1.0
    assert bundle.calibration is None


# -- the run folder, interruption and resume ------------------------------------------------------
class Crash(pl.Callback):
    """Stops training with an error when ``epoch`` starts (like a kill after a checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class Recorder(pl.Callback):
    def on_train_start(self, trainer, module):
        self.start_epoch = trainer.current_epoch
        self.weights = {k: v.clone() for k, v in module.state_dict().items()}


def test_interrupt_then_resume_continues_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    data = labelled(12)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(data, out, cfg(epochs=3), callbacks=[Crash(1)])
    work = partial_dir(out)
    assert not out.exists() and (work / "checkpoints" / "last.ckpt").is_file()
    last = torch.load(work / "checkpoints" / "last.ckpt", weights_only=True)  # plain values only
    assert last["epoch"] == 0 and last["hyper_parameters"]["config"]["trainer"]["epochs"] == 3
    saved = last["state_dict"]

    with pytest.raises(TwinsightError, match="interrupted run"):
        train(data, out, cfg(epochs=3))  # neither --resume nor --overwrite
    with pytest.raises(TwinsightError) as err:
        train(data, out, cfg(epochs=3, lr=0.05), resume=True)
    assert "another configuration" in str(err.value) and "optim.lr: 0.003 -> 0.05" in str(err.value)

    rec = Recorder()
    bundle = train(data, out, cfg(epochs=3), resume=True, callbacks=[rec]).bundle
    assert rec.start_epoch == 1  # not from scratch
    for key, value in saved.items():
        torch.testing.assert_close(rec.weights[key], value)
    assert out.is_dir() and not work.exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [0, 1, 2]
    final = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 2  # the latest epoch, whether or not it was the best
    for name in ("metrics.csv", "config.yaml", "training_curves.png", "pairs.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "model" / "twinsight.json").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv["epoch"]) == [0, 1, 2] and "val_map_at_r" in csv.columns
    assert bundle.training["config"]["trainer"]["epochs"] == 3
    loaded = ModelBundle.load(out / "model")
    images = data.images(np.arange(6))
    np.testing.assert_allclose(loaded.embed(images), bundle.embed(images), atol=1e-6)
    assert loaded.preprocessing == bundle.preprocessing and loaded.calibration == bundle.calibration
    with pytest.raises(TwinsightError, match="finished run"):
        train(data, out, cfg(epochs=3), resume=True)


def test_nan_loss_stops_with_cause_and_leaves_nothing(tmp_path, monkeypatch):
    import twinsight.training.module as training_module

    class NanLoss(torch.nn.Module):
        def forward(self, S, T, mask):
            return S.sum() * float("nan")

    monkeypatch.setattr(training_module, "create_loss", lambda name, **kw: NanLoss())
    out = tmp_path / "run"
    with pytest.raises(TwinsightError, match="learning rate too high"):
        train(labelled(8), out, cfg())
    assert not out.exists() and not partial_dir(out).exists()


# -- the command line -----------------------------------------------------------------------------
def test_cli_train_json_and_refuses_existing_run(tmp_path, run_cli):
    data = packed(tmp_path / "sims.h5", simulated())
    out = tmp_path / "run"
    args = ["train", data, "--out", out, "--encoder", "small-cnn", "--epochs", "1",
            "--batch-size", "16", "--no-progress", "--kernel", "cosine"]  # fmt: skip
    res = run_cli(*args, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["epochs_run"] == 1 and "val_spearman" in summary["validation"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["kernel"] == "cosine" and saved["trainer"]["epochs"] == 1
    again = run_cli(*args)
    assert (
        again.exit_code == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    )


def test_print_config_round_trips(tmp_path, run_cli):
    res = run_cli("train", "--print-config", "--encoder", "seed-cnn", "--params", "a,b",
                  "--lr", "0.02", "--margin", "0.3", "--devices", "2")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    data = yaml.safe_load(res.stdout)
    assert data["encoder"]["name"] == "seed-cnn" and data["data"]["params"] == ["a", "b"]
    assert data["optim"]["lr"] == 0.02 and data["loss"]["options"] == {"margin": 0.3}
    path = tmp_path / "c.yaml"
    path.write_text(res.stdout)
    again = run_cli("train", "--print-config", "--config", path)
    assert again.exit_code == 0 and again.stdout == res.stdout


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("labels", ["--encoder", "nope"], "unknown encoder 'nope'; valid names:"),
        ("labels", ["--loss", "nope"], "nope"),
        ("tiny", ["--encoder", "small-cnn"], "too small"),
        ("labels", ["--m", "20", "--batch-size", "20"], "at least m=20"),
        ("bare", [], "neither a 'label' column nor parameter columns"),
        ("labels", ["--targets", "params"], "no parameter columns"),
        ("sims", ["--params", "mass,age"], "'age'"),
        ("labels", ["--resume"], "no interrupted run"),
    ],
)
def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path, run_cli, case, extra, message):
    if case == "labels":
        coll = labelled(12)
    elif case == "sims":
        coll = simulated()
    else:
        images, _ = _label_images(6, 2, size=16 if case == "bare" else 3)
        items = pd.DataFrame({"key": [f"k{i}" for i in range(len(images))]})
        if case == "tiny":
            items["label"] = ["a", "b"] * 6
        coll = Collection.from_arrays(images, items, name=case)
    data = packed(tmp_path / f"{case}.h5", coll)
    out = tmp_path / "run"
    res = run_cli("train", data, "--out", out, "--epochs", "1", "--no-progress", *extra)
    assert res.exit_code == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() and not partial_dir(out).exists()


def test_plots_ranked_pairs_and_curves(tmp_path):
    from twinsight.plots import plot_ranked_pairs, plot_training_curves, select_ranked_pairs

    pred = np.linspace(1, -1, 30)
    groups = select_ranked_pairs(pred, 8)
    assert list(groups["top"]) == list(range(8)) and list(groups["bottom"]) == list(range(22, 30))
    assert list(groups["middle"]) == list(range(11, 19))
    images = np.random.default_rng(0).random((30, 1, 8, 8))
    fig = plot_ranked_pairs(images, images[::-1], pred, (pred + 1) / 2, tmp_path / "p.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 24 and titles[0] == "pred 1.00\ntrue 1.00"
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(TwinsightError, match="matching lengths"):
        plot_ranked_pairs(images[:5], images[:4], pred[:5], pred[:5])
    with pytest.raises(TwinsightError, match="no training history"):
        plot_training_curves([])
    history = [{"epoch": 0, "train_loss": 1.0, "val_map_at_r": 0.5}]
    plot_training_curves(history, tmp_path / "c.svg")
    assert (tmp_path / "c.svg").read_text().startswith("<?xml")
    with pytest.raises(TwinsightError, match="unknown format"):
        plot_training_curves(history, tmp_path / "c.bmp2")


def test_instrument_augmentation_blurs_shifts_and_adds_noise_to_all_but_the_clean_share():
    from twinsight.instrument import InstrumentRange
    from twinsight.training import random_instrument

    torch.manual_seed(0)
    x = torch.zeros(200, 1, 16, 16)
    x[:, :, 8, 8] = 1.0  # point sources: a beam spreads them
    rng = InstrumentRange(beam_min=1.0, beam_max=3.0, snr_min=10.0, noise_free=0.0, clean=0.25)
    out = random_instrument(x, rng)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 120 <= int(changed.sum()) <= 175  # 75 % degraded
    seen = out[changed]
    assert (seen[:, 0, 0, 0] != 0).any()  # noise reaches the empty background
    neighbours = seen[:, 0, 8, 9] - seen[:, 0, 0, 0]
    assert float(neighbours.mean()) > 0.05  # light spread next to the source
    torch.testing.assert_close(out[~changed], x[~changed])


def test_instrument_augmentation_noise_free_share_has_no_noise():
    from twinsight.instrument import InstrumentRange
    from twinsight.training import random_instrument

    torch.manual_seed(1)
    x = torch.zeros(50, 1, 24, 24)
    x[:, :, 12, 12] = 1.0
    rng = InstrumentRange(
        beam_min=2.0, beam_max=2.0, min_axis_ratio=1.0, noise_free=1.0, clean=0.0, shift=0.0
    )
    out = random_instrument(x, rng)
    assert float(out[:, 0, :3, :3].abs().max()) < 1e-4  # far from the source: nothing
    assert torch.allclose(out[0], out[-1], atol=1e-5)  # one beam, no noise: the same image


def test_cli_train_with_telescope_augmentation(tmp_path, run_cli):
    data = tmp_path / "sims.h5"
    assert (
        run_cli("simulate", data, "--systems", 12, "--projections", 2, "--size", 16).exit_code == 0
    )
    result = run_cli(
        "train", data, "--out", tmp_path / "run", "--targets", "params", "--epochs", 1,
        "--augment", "telescope", "--beam", 2, "--snr", 20, "--batch-size", 8, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "augment: telescope" in config and "beam: 2.0" in config and "snr: 20.0" in config
