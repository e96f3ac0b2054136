"""The unseen-class protocol: train on digits 0-4, test on the never-seen digits 5-9.

Runs end to end through the façade (``twinsight.train`` with the defaults, then
``twinsight.evaluate`` with its baseline columns) and prints a Markdown table of
twinsight against raw pixels and PCA: precision@1, MAP@R and verification.

- ``mnist5k``: trains on the 2,000 ``train`` digits 0-4; evaluates on all 2,500
  digits 5-9 (none ever seen). PCA is fitted on the 2,000 training digits 0-4
  (the evaluation collection marks them ``split=train``), never on 5-9.
- ``digits`` (sklearn 8x8): the same with its ~900 digits 0-4 and ~900 digits 5-9.

Usage::

    PYTHONPATH=src python scripts/unseen_classes.py --out runs/unseen [--data mnist5k digits]
        [--option epochs=10 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import twinsight
from twinsight.allocator import reuse_freed_memory
from twinsight.data.collection import Collection

SEEN = (0, 1, 2, 3, 4)


def protocol_collections(name: str) -> tuple[Collection, Collection]:
    """(training collection: seen classes only; evaluation collection: seen training rows
    marked ``train`` for the PCA fit, every unseen image marked ``test``)."""
    full = twinsight.open_collection(name)
    labels = full.items["label"].to_numpy()
    seen = np.isin(labels, SEEN)
    if "split" in full.items.columns:
        train_rows = seen & (full.items["split"].astype(str).to_numpy() == "train")
    else:
        train_rows = seen
    train = full.subset(train_rows)
    train.items["split"] = "train"
    evaluation = full.subset(train_rows | ~seen)
    evaluation.items["split"] = np.where(
        np.isin(evaluation.items["label"].to_numpy(), SEEN), "train", "test"
    )
    return train, evaluation


def run_protocol(name: str, out: Path, options: dict) -> dict:
    """Train with the defaults (plus ``options``) and evaluate on the unseen classes."""
    train, evaluation = protocol_collections(name)
    start = time.perf_counter()
    result = twinsight.train(train, out / name, overwrite=True, progress=False, **options)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    ev = twinsight.evaluate(result.run, evaluation, split="test").to_dict()
    eval_s = time.perf_counter() - start
    return {
        "data": name,
        "train_images": len(train),
        "test_images": ev["items"],
        "train_seconds": round(train_s, 1),
        "evaluate_seconds": round(eval_s, 1),
        "load_1min": round(os.getloadavg()[0], 2),
        "best_epoch": result.metrics.get("best_epoch"),
        "epochs_run": result.metrics.get("epochs_run"),
        "validation": result.metrics.get("validation"),
        "evaluation": ev,
    }


def table(rows: list[dict]) -> str:
    """A Markdown table: one line per data set and method."""
    head = (
        "| data (train 0-4, test 5-9) | method | precision@1 | MAP@R | verification ROC-AUC "
        "| EER |\n| --- | --- | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for row in rows:
        ev = row["evaluation"]
        methods = {"twinsight": ev, **{k: v for k, v in ev.get("baselines", {}).items()}}
        for method, m in methods.items():
            ver = m.get("verification", {})
            auc, eer = ver.get("roc_auc", float("nan")), ver.get("eer", float("nan"))
            lines.append(
                f"| {row['data']} | {method} | {m['precision_at_1']:.3f} "
                f"| {m['mean_average_precision_at_r']:.3f} | {auc:.4f} | {eer:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/unseen"))
    parser.add_argument("--data", nargs="+", default=["mnist5k", "digits"])
    parser.add_argument("--option", action="append", default=[], help="NAME=VALUE (JSON value)")
    args = parser.parse_args()
    reuse_freed_memory()  # as every twinsight command does (README, Python API)
    options = {}
    for item in args.option:
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    rows = [run_protocol(name, args.out, options) for name in args.data]
    for row in rows:
        ev = row["evaluation"]
        print(
            f"{row['data']}: trained on {row['train_images']} images in {row['train_seconds']} s "
            f"(best epoch {row['best_epoch']} of {row['epochs_run']}; validation "
            f"{row['validation']}); evaluated {row['test_images']} unseen images in "
            f"{row['evaluate_seconds']} s; load {row['load_1min']}; worse than PCA: "
            f"{ev.get('worse_than_pca')}"
        )
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "unseen_classes.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
