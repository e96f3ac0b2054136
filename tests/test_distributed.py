"""Distributed training and indexing, really run: 2 CPU processes talking over gloo.

Lightning re-runs the command once per further device, so every case runs the CLI in
a subprocess, through a small script (``WRAPPER``) that records the batches each rank's
sampler deals, and which rank calibrates the model, before handing over to
``twinsight.cli.main``; Lightning re-runs that script too, so the record covers both
ranks. Each launch gets its own session, so a
test can wait for (or kill) every process of it. The pieces (blocks of batches, the
rank read from the launcher's variables) are tested alone at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from twinsight.distributed import (
    RANK_VARIABLES,
    batch_block,
    check_rank,
    gather_rows,
    is_rank_zero,
    sum_across,
)
from twinsight.errors import TwinsightError
from twinsight.runs import partial_dir
from twinsight.training.data import sequential_batches, shards_validation, validation_batches

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

WRAPPER = """
import json, os, sys, time
import twinsight.training.data as data

record, delay = os.environ["BATCHES_DIR"], float(os.environ.get("BATCH_DELAY", "0"))
real_build = data.build_sampler

def recording_build(*args, **kwargs):
    sampler = real_build(*args, **kwargs)
    base = type(sampler)

    class Recorded(base):
        def __iter__(self):
            batches = list(base.__iter__(self))  # advances self.epoch, as iterating does
            name = f"rank{self.rank}-of{self.num_replicas}.jsonl"
            with open(os.path.join(record, name), "a") as f:
                f.write(json.dumps({"epoch": self.epoch - 1, "batches": batches}) + "\\n")
            for batch in batches:
                time.sleep(delay)
                yield batch

    sampler.__class__ = Recorded
    return sampler

data.build_sampler = recording_build

import twinsight.inference as inference
real_calibrate = inference.calibrate_for_inference

def recording_calibrate(*args, **kwargs):
    rank = os.environ.get("LOCAL_RANK", "0")
    with open(os.path.join(record, f"calibrated-rank{rank}.txt"), "a") as f:
        f.write("calibrated\\n")
    return real_calibrate(*args, **kwargs)

inference.calibrate_for_inference = recording_calibrate
from twinsight.cli import main
main(sys.argv[1:])
"""

#: A small, fast run on scikit-learn's digits: 3 epochs of >= 10 steps, batch 64.
TRAIN = ["train", "digits", "--encoder", "small-cnn", "--epochs", "3", "--batch-size", "64",
         "--min-steps-per-epoch", "10", "--early-stopping", "0", "--no-progress",
         "--accelerator", "cpu"]  # fmt: skip
DDP = ["--devices", "2", "--strategy", "ddp"]


@pytest.fixture
def launch(tmp_path):
    """Start ``twinsight ARGS`` through the recording wrapper, in a session of its own."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    (tmp_path / "batches").mkdir()

    def start(*args: str, delay: float = 0.0, log: str = "stderr.txt") -> subprocess.Popen:
        env = {**ENV, "BATCHES_DIR": str(tmp_path / "batches"), "BATCH_DELAY": str(delay)}
        with open(tmp_path / log, "w") as stderr:
            return subprocess.Popen(
                [sys.executable, str(wrapper), *map(str, args)],
                cwd=tmp_path, env=env, start_new_session=True, text=True,
                stdout=subprocess.PIPE, stderr=stderr,
            )  # fmt: skip

    return start


def wait_all(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for the launcher and every process it started (its session); its stdout."""
    try:
        out, _ = proc.communicate(timeout=timeout)  # EOF once the other ranks exit too
    finally:
        if not session_gone(proc.pid, 0):
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def session_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of the group ``pgid`` has exited within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.1)


def recorded_batches(folder: Path) -> dict[str, dict[int, list[list[int]]]]:
    """``{file stem: {epoch: batches}}`` as the wrapper recorded them."""
    out: dict[str, dict[int, list[list[int]]]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        out[path.stem] = {r["epoch"]: r["batches"] for r in rows}
    return out


@needs_gloo
def test_ddp_training_on_two_cpu_processes(launch, tmp_path):
    proc = launch(*TRAIN, *DDP, "--out", "ddp", "--json")
    stdout = wait_all(proc, timeout=240)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)  # one rank printed, once: stdout is one JSON document
    run = tmp_path / "ddp"
    assert summary["run"] == "ddp" and summary["epochs_run"] == 3

    # one run folder, one set of checkpoints and logs, written by rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "batches", "ddp", "stderr.txt", "wrapper.py"
    ]  # fmt: skip
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["hparams.yaml", "metrics.csv"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert "is being written by another" not in stderr and "interrupted run" not in stderr

    # both ranks trained, each on its own batches: rank r deals batches r, r + 2, ...
    batches = recorded_batches(tmp_path / "batches")
    assert sorted(batches) == ["rank0-of2", "rank1-of2"]
    for epoch in range(3):
        mine, theirs = batches["rank0-of2"][epoch], batches["rank1-of2"][epoch]
        assert len(mine) == len(theirs) >= 5
        assert not {tuple(b) for b in mine} & {tuple(b) for b in theirs}
    assert batches["rank0-of2"][0] != batches["rank0-of2"][1]  # a new order each epoch
    calibrated = sorted(p.name for p in (tmp_path / "batches").glob("calibrated-*"))
    assert calibrated == ["calibrated-rank0.txt"]
    assert (tmp_path / "batches" / calibrated[0]).read_text() == "calibrated\n"  # once

    # validation measured the whole set on every epoch (gathered), not one rank's half:
    # the best epoch's score equals rank 0's final measurement of the best weights
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    best = metrics["history"][metrics["best_epoch"]]
    assert best["val_score"] == pytest.approx(metrics["final"]["val_score"], abs=2e-3)

    # the same quality as one process with the same options (not the same numbers)
    from twinsight.api import train

    alone = train("digits", tmp_path / "alone", **_overrides(TRAIN))
    assert alone.metrics["world_size"] == 1
    one, two = alone.metrics["final"]["val_score"], metrics["final"]["val_score"]
    assert two > 0.6 and abs(two - one) < 0.1, (one, two)
    losses = [h["train_loss"] for h in metrics["history"]]  # the mean over both ranks
    assert losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(alone.metrics["history"][-1]["train_loss"], rel=0.1)


def _overrides(args: list[str]) -> dict[str, object]:
    """``train(**overrides)`` for the CLI options in ``args`` (after the data argument)."""
    out: dict[str, object] = {}
    options = iter(args[2:])
    for flag in options:
        if flag == "--no-progress":
            out["progress"] = False
            continue
        value = next(options)
        out[flag[2:].replace("-", "_")] = int(value) if value.isdigit() else value
    return out


@needs_gloo
def test_ddp_training_killed_after_a_checkpoint_resumes(launch, tmp_path):
    args = [*TRAIN, *DDP, "--out", "run"]
    proc = launch(*args, delay=0.15, log="killed.txt")  # slow batches: time to kill it
    last = partial_dir(tmp_path / "run") / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), (tmp_path / "killed.txt").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # the launcher, rank 0, with no chance to clean up
    proc.wait()
    # the other rank notices that its peer is gone and exits by itself
    assert session_gone(proc.pid, 60), "rank 1 outlived the killed rank 0"
    proc.stdout.close()
    kept = torch.load(last, weights_only=True)["epoch"]
    assert 0 <= kept < 2 and not (tmp_path / "run").exists()

    resumed = launch(*args, "--resume", "--json", log="resumed.txt")
    stdout = wait_all(resumed, timeout=240)
    assert resumed.returncode == 0, (tmp_path / "resumed.txt").read_text()[-3000:]
    assert json.loads(stdout)["epochs_run"] == 3
    run = tmp_path / "run"
    assert run.is_dir() and not partial_dir(run).exists()
    logged = pd.read_csv(run / "logs" / "metrics.csv")
    assert set(logged["epoch"].dropna().astype(int)) == {0, 1, 2}  # epochs before the kill kept
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # the resumed epochs' batches are those the sampler deals for them, rank by rank
    batches = recorded_batches(tmp_path / "batches")
    assert sorted(batches) == ["rank0-of2", "rank1-of2"] and 2 in batches["rank1-of2"]


# ------------------------------------------------------------------------------------ indexing
def _blobs(n: int, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size] - size / 2
    widths = rng.uniform(1, 4, n)
    imgs = np.exp(-(x**2 + y**2)[None] / (2 * widths[:, None, None] ** 2))
    return (imgs + rng.normal(0, 0.05, imgs.shape)).astype(np.float32)


@needs_gloo
def test_index_on_two_processes_equals_one_process(launch, tmp_path, run_cli):
    from twinsight.data.packed import write_packed
    from twinsight.index import SimilarityIndex
    from twinsight.models.bundle import ModelBundle
    from twinsight.models.encoders import create_encoder

    n = 300
    items = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "mass": np.linspace(1, 2, n)})
    data = write_packed(
        tmp_path / "sims.h5", items, [_blobs(n)], (1, 16, 16), param_columns=["mass"]
    )
    torch.manual_seed(0)
    encoder = create_encoder("small-cnn", embedding_dim=8, in_channels=1, input_size=(16, 16))
    ModelBundle.from_encoder(encoder).save(tmp_path / "model")
    common = ["index", tmp_path / "model", data, "--batch-size", "64", "--device", "cpu"]

    proc = launch(*common, "--out", "two", "--devices", "2", "--json")
    stdout = wait_all(proc, timeout=240)
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert json.loads(stdout)["count"] == n  # rank 0 alone wrote and printed
    alone = run_cli(*common, "--out", tmp_path / "one")
    assert alone.exit_code == 0, alone.stderr

    one, two = SimilarityIndex.load(tmp_path / "one"), SimilarityIndex.load(tmp_path / "two")
    np.testing.assert_allclose(two.vectors(), one.vectors(), rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(two.items, one.items)
    assert two.meta == one.meta
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "rank 0 of 2 embeds 192 of 300" in stderr and "rank 1 of 2 embeds 108 of 300" in stderr
    assert not list(tmp_path.glob(".*lock")) and not list(tmp_path.glob("*.part*"))


# ------------------------------------------------------------------------- the pieces, alone
@pytest.mark.parametrize(("n", "batch", "world"), [(300, 64, 2), (300, 64, 3), (100, 64, 2),
                                                   (5, 2, 4), (0, 8, 2), (7, 7, 1)])  # fmt: skip
def test_batch_blocks_are_whole_batches_that_join_in_order(n, batch, world):
    blocks = [batch_block(n, batch, r, world) for r in range(world)]
    np.testing.assert_array_equal(np.concatenate(blocks), np.arange(n))
    for block in blocks:
        assert len(block) == 0 or block[0] % batch == 0  # starts where one process's does


def test_validation_batches_shard_only_when_every_rank_gets_one():
    alone = sequential_batches(300, 128)
    assert validation_batches(300, 128) == alone
    shares = [validation_batches(300, 128, r, 2) for r in range(2)]
    assert shares[0] + shares[1] == alone and shares[0] != shares[1]
    assert shards_validation(300, 128, 2) and not shards_validation(100, 128, 2)
    assert validation_batches(100, 128, 1, 2) == sequential_batches(100, 128)  # all, unshared


@pytest.mark.parametrize(
    ("env", "zero"),
    [({}, True), ({"LOCAL_RANK": "1"}, False), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
     ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),
     ({"SLURM_PROCID": "3"}, False), ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),
     ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True)],
)  # fmt: skip
def test_rank_zero_is_read_from_the_launchers_variables(monkeypatch, env, zero):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_rank_zero() is zero
    check_rank(0 if zero else 1, "train")  # agreeing: nothing to say
    with pytest.raises(TwinsightError, match="train: Lightning made this process rank"):
        check_rank(1 if zero else 0, "train")


def test_gather_rows_alone_is_the_identity():
    rows = torch.arange(6.0).reshape(3, 2)
    assert gather_rows(rows) is rows and gather_rows(rows, to=0) is rows
    assert sum_across([1.5, 2]) == [1.5, 2.0]
