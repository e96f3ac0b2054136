"""Trials per hour of ``twinsight tune``, and its overhead over plain ``train``.

A fixed small setup: digits (1,797 images, 8x8), small-cnn with channels [8, 16],
embedding 16, batch 64, multi-similarity, 2 epochs. The search space pins every
field to that configuration, so each trial trains exactly what the plain run trains.
Plain runs and 1-trial tune calls alternate (the machine is shared: alternating
spreads load changes over both):

- plain: ``twinsight.train`` of the configuration;
- trial: the Optuna trial's own duration (sampling, the pruning callback, storage
  writes, the same training);
- tune call: the whole ``twinsight.tune(..., trials=1, resume=True)`` call, with the
  study opened from SQLite and best.yaml, trials.csv and figures rewritten.

Overhead = median(trial) / median(plain) - 1 (goal <= 10 %); trials per hour
= 3600 / median(tune call). Prints a table and, as its last line, one JSON object;
updates the "Tuning" section of BENCHMARKS.md (only that section).

    OMP_NUM_THREADS=2 python benchmarks/tune.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _bench import update_section

import twinsight
from twinsight.tuning import default_space

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "encoder": {"embedding_dim": 16, "options": {"channels": [8, 16]}},
    "loss": {"name": "multi-similarity"},
    "trainer": {"batch_size": 64, "early_stopping": 0},
    "runtime": {"progress": False},
}


def pinned_space(cfg: twinsight.TrainConfig) -> dict:
    """Every entry of the default labels space pinned to ``cfg``'s value."""
    data = cfg.model_dump(mode="json")
    space = {}
    for name, spec in default_space("labels").items():
        value = data
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None and name.startswith("loss.options."):
            value = 0.5
        space[name] = {"value": value, **({"when": spec["when"]} if "when" in spec else {})}
    return space


def measure(repeats: int = 3, epochs: int = 2) -> dict:
    digits = twinsight.open_collection("digits")
    cfg = twinsight.TrainConfig.model_validate(
        {**BASE, "trainer": {**BASE["trainer"], "epochs": epochs}}
    )
    space = pinned_space(cfg)
    plain, calls = [], []
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        for i in range(repeats + 1):  # round 0 warms up (imports, first allocations)
            t = time.perf_counter()
            twinsight.train(digits, Path(tmp) / f"plain{i}", cfg)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = twinsight.tune(
                digits, study, cfg, trials=1, space=space, pruner="none", resume=True,
                baseline=False, progress=False,
            )  # fmt: skip
            calls.append(time.perf_counter() - t)
            load.append(os.getloadavg()[0])
        trials = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in result.study.get_trials()
        ]
    plain, calls, trials = plain[1:], calls[1:], trials[1:]
    p, c, tr = (statistics.median(v) for v in (plain, calls, trials))
    return {
        "setup": "digits, small-cnn [8,16], embedding 16, batch 64, multi-similarity",
        "epochs": epochs,
        "repeats": repeats,
        "plain_train_s": round(p, 2),
        "trial_s": round(tr, 2),
        "tune_call_s": round(c, 2),
        "plain_runs_s": [round(v, 2) for v in plain],
        "trial_runs_s": [round(v, 2) for v in trials],
        "overhead_trial_pct": round(100 * (tr / p - 1), 1),
        "overhead_call_pct": round(100 * (c / p - 1), 1),
        "trials_per_hour": round(3600 / c),
        "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_avg_1min": [round(v, 2) for v in (min(load), max(load))],
        "date": time.strftime("%Y-%m-%d"),
    }


def write_section(result: dict, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace (or append) the "## Tuning" section of BENCHMARKS.md, nothing else."""
    lo, hi = result["load_avg_1min"]
    section = (
        "## Tuning\n\n"
        f"`benchmarks/tune.py` on {result['date']} ({result['machine']}, shared with other "
        f"work: 1-minute load average {lo}-{hi} while measuring): {result['setup']}, "
        f"{result['epochs']} epochs per run, median of {result['repeats']} alternating "
        "runs after one warm-up round.\n\n"
        "| what | seconds |\n| --- | ---: |\n"
        f"| plain `train` | {result['plain_train_s']} |\n"
        f"| one tuning trial (Optuna's duration) | {result['trial_s']} |\n"
        f"| one `tune(trials=1, resume=True)` call (study, outputs, figures) | "
        f"{result['tune_call_s']} |\n\n"
        f"Overhead per trial: **{result['overhead_trial_pct']} %** (goal <= 10 %); per call, "
        f"with the study files and figures rewritten: {result['overhead_call_pct']} %. "
        f"Trials per hour in this setup: **{result['trials_per_hour']}**.\n\n"
        f"Every run (s): plain {result['plain_runs_s']}, trials {result['trial_runs_s']}. "
        "On a shared machine the spread between runs can exceed the overhead being "
        "measured; compare the medians only when the runs agree.\n\n"
        "Run: `OMP_NUM_THREADS=2 python benchmarks/tune.py --repeats 3`\n"
    )
    update_section(section, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = measure(args.repeats, args.epochs)
    for key in ("plain_train_s", "trial_s", "tune_call_s", "overhead_trial_pct", "trials_per_hour"):
        print(f"{key:<20} {result[key]}")
    if not args.no_write:
        write_section(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
