"""Benchmark: matching one FITS observation through a new instrument, and again.

A 10,000-image library (1,250 simulated systems x 8 views, 64 x 64) is indexed with a
small untrained CNN (the speed does not depend on training); 20 % of its systems are the
model's validation systems, kept beside it as a trained run keeps them. One observation
is written as an archive would (celestial WCS, beam in the header, at 140 pc) and matched
with ``twinsight match IDX obs.fits --distance 140 --json`` in a fresh process:

- **new instrument**: the calibration cache emptied first, so the validation systems are
  seen through the observation's instrument, embedded and calibrated (goal <= 20 s);
- **repeat**: the same observation again, the calibration read from the cache (goal:
  at most 2 s beyond start-up);
- **start-up**: ``twinsight match`` of a library-grid PNG with the stored clean calibration
  (load the CLI, the model and the index, match; no intake, no instrument): the baseline.

Medians of several runs. Prints a summary, updates the "Observation matching" section of
BENCHMARKS.md (unless --no-write) and prints one JSON object as its last line.

    python benchmarks/observation.py [--runs 3] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _bench import publish
from PIL import Image

import twinsight
from twinsight.inference.instrumented import write_calibration_set
from twinsight.models.bundle import ModelBundle
from twinsight.models.encoders import create_encoder

SECTION = "## Observation matching"
CLI = [sys.executable, "-c", "from twinsight.cli import main; main()"]


def build(root: Path, n_systems: int) -> tuple[Path, Path]:
    data = root / "sims.h5"
    sims = twinsight.simulate(data, n_systems=n_systems, n_projections=8, size=64, seed=0)
    torch.manual_seed(0)
    encoder = create_encoder("small-cnn", in_channels=1, embedding_dim=128, input_size=(64, 64))
    bundle = ModelBundle.from_encoder(encoder, targets={"kind": "params"})
    model = root / "model"
    bundle.save(model)
    systems = sims.items["system"].astype(str)
    val_names = sorted(set(systems))[: n_systems // 5]
    write_calibration_set(sims.subset(systems.isin(val_names).to_numpy()), model)
    twinsight.build_index(model, data, progress=True).save(root / "idx")
    return model, root / "idx"


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(CLI + args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"twinsight {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", type=int, default=1250)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="twinsight-bench-obs-"))
    try:
        _, idx = build(root, args.systems)
        obs = root / "obs.fits"
        twinsight.observe(obs, seed=7, size=128, snr=30, beam_fwhm=4.0)  # finer grid than 64
        png = root / "grid.png"
        image = twinsight.open_collection(str(root / "sims.h5")).images([0])[0, 0]
        Image.fromarray((255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)).save(png)
        match = ["match", str(idx), str(obs), "--distance", "140", "--json"]
        new, repeat, startup = [], [], []
        for run in range(args.runs):
            shutil.rmtree(idx / "calibrations", ignore_errors=True)
            new.append(timed(match))
            repeat.append(timed(match))
            startup.append(timed(["match", str(idx), str(png), "--json"]))
            print(f"run {run + 1}: new {new[-1]:.2f} s, repeat {repeat[-1]:.2f} s, "
                  f"start-up {startup[-1]:.2f} s", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in (("new", new), ("repeat", repeat),
                                                  ("startup", startup))}  # fmt: skip
    figures = {
        "library_images": args.systems * 8,
        "runs": args.runs,
        "new_instrument_s": round(med["new"], 2),
        "repeat_s": round(med["repeat"], 2),
        "startup_s": round(med["startup"], 2),
        "repeat_beyond_startup_s": round(med["repeat"] - med["startup"], 2),
        "new_vs_startup": round(med["new"] / med["startup"], 2),
        "goal_new_s": 20.0,
        "goal_repeat_beyond_startup_s": 2.0,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average": round(os.getloadavg()[0], 2),
    }
    text = f"""{SECTION}

`python benchmarks/observation.py` ({dt.date.today()}; {figures["machine"]}; load average
{figures["load_average"]} at the end). One FITS observation (128 x 128, celestial WCS, beam
in the header, 140 pc) matched by `twinsight match IDX obs.fits --distance 140 --json` in a
fresh process against a {figures["library_images"]:,}-image library; median of {args.runs}.

| case | seconds | goal |
|---|---|---|
| new instrument (validation systems degraded, embedded, calibrated) | {med["new"]:.2f} | <= 20 |
| same instrument again (calibration from the cache) | {med["repeat"]:.2f} | |
| start-up baseline: a library-grid PNG, no intake, no instrument | {med["startup"]:.2f} | |
| repeat beyond start-up | {med["repeat"] - med["startup"]:.2f} | <= 2 |

The new-instrument match costs {figures["new_vs_startup"]:.1f}x the start-up baseline.
"""
    publish(text, figures, write=not args.no_write)


if __name__ == "__main__":
    main()
