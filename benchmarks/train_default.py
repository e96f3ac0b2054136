"""Benchmark: how long the default `twinsight train sims.h5 --targets params` takes.

The library of the observations issue: 1,000 simulated systems x 8 views at 64 x 64.
Measured in one run, median of several, on this machine:

- **training step throughput** (images/s, forward + backward + AdamW on batches of 128) of
  the former default (eager memory layout, no augmentation) and of today's
  (``channels_last``, the instrument augmentation on every batch);
- **the default's length**: the former 30 epochs of 60 steps (5 % validation) against
  today's planned epochs (about 1,200 steps) of 50 steps (20 % validation systems);
- with ``--full``, one real default run of the CLI, wall time (minutes).

Prints a summary, updates the "Default training" section of BENCHMARKS.md (unless
--no-write), and prints one JSON object as its last line.

    python benchmarks/train_default.py [--runs 5] [--full DATA.h5] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _bench import publish

from twinsight.instrument import InstrumentRange
from twinsight.models.encoders import create_encoder
from twinsight.training.augment import random_instrument
from twinsight.training.preparation import planned_epochs

SECTION = "## Default training"
BATCH = 128
STEPS = 12


def throughput(channels_last: bool, augment: bool, seed: int) -> float:
    """Training images/s of the default encoder on random 64 x 64 batches."""
    torch.manual_seed(seed)
    enc = create_encoder("small-cnn", in_channels=1, embedding_dim=128, input_size=(64, 64))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    enc.to(memory_format=fmt)
    opt = torch.optim.AdamW(enc.parameters(), lr=3e-3)
    x = torch.rand(BATCH, 1, 64, 64)
    rng = InstrumentRange()

    def step() -> None:
        batch = random_instrument(x, rng) if augment else x
        emb = enc(batch.contiguous(memory_format=fmt))
        loss = (emb @ emb.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return BATCH * STEPS / (time.perf_counter() - start)


def full_run(data: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "from twinsight.cli import main; main()", "train", data,
             "--targets", "params", "--out", str(Path(tmp) / "run"), "--no-progress"],
            check=True, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--full", help="also time one real default run on this packed set")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    old, new = [], []
    for run in range(args.runs):
        old.append(throughput(channels_last=False, augment=False, seed=run))
        new.append(throughput(channels_last=True, augment=True, seed=run))
        print(f"run {run + 1}: former {old[-1]:.0f} img/s, today {new[-1]:.0f} img/s", flush=True)
    old_ips, new_ips = statistics.median(old), statistics.median(new)
    old_steps, new_steps = 30 * 60, planned_epochs(50) * 50
    old_min = old_steps * BATCH / old_ips / 60
    new_min = new_steps * BATCH / new_ips / 60
    figures = {
        "former_images_per_s": round(old_ips, 1),
        "today_images_per_s": round(new_ips, 1),
        "speedup_per_step": round(new_ips / old_ips, 2),
        "former_steps": old_steps,
        "today_steps": new_steps,
        "today_epochs": planned_epochs(50),
        "former_training_minutes": round(old_min, 1),
        "today_training_minutes": round(new_min, 1),
        "runs": args.runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average": round(os.getloadavg()[0], 2),
    }
    if args.full:
        figures["full_run_minutes"] = round(full_run(args.full) / 60, 1)
    full = (
        f"\nOne real default run of `twinsight train {args.full} --targets params`: "
        f"{figures['full_run_minutes']} min of wall time.\n"
        if args.full
        else ""
    )
    text = f"""{SECTION}

`python benchmarks/train_default.py` ({dt.date.today()}; {figures["machine"]}; load average
{figures["load_average"]} at the end). Default encoder (small-cnn, 128-d), batches of 128 at
64 x 64; median of {args.runs} runs of {STEPS} steps.

| | former default | today |
|---|---|---|
| images/s | {old_ips:.0f} (eager, no augmentation) | {new_ips:.0f} (channels_last, instrument) |
| steps, 1,000 x 8 views | {old_steps} (30 x 60) | {new_steps} ({planned_epochs(50)} x 50) |
| training time from these rates | {old_min:.1f} min | {new_min:.1f} min |

Per step today is {new_ips / old_ips:.2f}x the former. Validation, checkpoints and the
calibration add about a minute to either.
{full}"""
    publish(text, figures, write=not args.no_write)


if __name__ == "__main__":
    main()
