"""Pairs learned per second: in-batch training (ours) vs the seeds' pairwise loop.

Same encoder (small-cnn, 28x28), same MNIST images, same loss (seed 003's BCE on
a learned ``a * cos + b``), batch size 64:

- ours: one forward/backward pass of 64 images, loss over all 64 * 63 / 2 pairs;
- seeds: a batch of 64 pairs, each member sent through the network separately
  (two forward passes of 64 images), loss over those 64 pairs.

Prints a table and, as its last line, one JSON object; it updates the
"Training" section of BENCHMARKS.md (only that section).

    OMP_NUM_THREADS=2 python benchmarks/train_pairs.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _bench import update_section

from twinsight.data.readers import open_collection
from twinsight.data.transforms import preprocess
from twinsight.losses import create_loss
from twinsight.models.encoders import create_encoder

ROOT = Path(__file__).resolve().parents[1]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    encoder = create_encoder("small-cnn", in_channels=1, input_size=(28, 28))
    loss = create_loss("bce")
    params = list(encoder.parameters()) + list(loss.parameters())
    return encoder, loss, torch.optim.AdamW(params, lr=1e-3)


def in_batch_step(encoder, loss, opt, x: torch.Tensor, y: torch.Tensor) -> int:
    """One step of ours: embed each image once, loss on every pair of the batch."""
    emb = encoder(x)
    sim = emb @ emb.T
    target = (y[:, None] == y[None, :]).float()
    mask = ~torch.eye(len(x), dtype=torch.bool)
    value = loss(sim, target, mask)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return len(x) * (len(x) - 1) // 2


def pairwise_step(encoder, loss, opt, xa: torch.Tensor, xb: torch.Tensor, t: torch.Tensor) -> int:
    """One step of the seeds' loop: both members of each pair through the network."""
    ea, eb = encoder(xa), encoder(xb)
    logits = loss.scale * (ea * eb).sum(1) + loss.bias
    value = F.binary_cross_entropy_with_logits(logits, t)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return len(xa)


def _rate(step, batches, warmup: int = 3) -> float:
    for args in batches[:warmup]:
        step(*args)
    start = time.perf_counter()
    pairs = sum(step(*args) for args in batches[warmup:])
    return pairs / (time.perf_counter() - start)


def measure(batch: int = 64, steps: int = 20, repeats: int = 5, seed: int = 0) -> dict:
    """Median pairs/s of both methods over ``repeats`` runs of ``steps`` timed steps."""
    coll = open_collection("mnist5k").split("train")
    rng = np.random.default_rng(seed)
    n = (steps + 3) * batch * 2
    idx = rng.choice(len(coll), size=n, replace=True)
    images = torch.from_numpy(preprocess(coll.images(idx), _setup()[0].default_preprocessing()))
    labels = torch.as_tensor(coll.labels()[idx].astype(np.int64))
    ours_batches, seed_batches = [], []
    for s in range(steps + 3):
        a = slice(2 * s * batch, (2 * s + 1) * batch)
        b = slice((2 * s + 1) * batch, (2 * s + 2) * batch)
        ours_batches.append((images[a], labels[a]))
        seed_batches.append((images[a], images[b], (labels[a] == labels[b]).float()))
    ours, seeds = [], []
    for _ in range(repeats):
        encoder, loss, opt = _setup(seed)
        ours.append(_rate(partial(in_batch_step, encoder, loss, opt), ours_batches))
        encoder, loss, opt = _setup(seed)
        seeds.append(_rate(partial(pairwise_step, encoder, loss, opt), seed_batches))
    ours_med, seeds_med = statistics.median(ours), statistics.median(seeds)
    return {
        "benchmark": "train_pairs",
        "encoder": "small-cnn 28x28",
        "batch_size": batch,
        "steps": steps,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "ours_pairs_per_s": round(ours_med),
        "seeds_pairs_per_s": round(seeds_med),
        "ratio": round(ours_med / seeds_med, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def write_section(result: dict, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace (or append) the "## Training" section of BENCHMARKS.md, nothing else."""
    section = (
        "## Training\n\n"
        "Pairs learned per second, `benchmarks/train_pairs.py` (small-cnn on 28x28 MNIST, "
        f"seed 003's BCE loss, batch size {result['batch_size']}, median of "
        f"{result['repeats']} runs of {result['steps']} steps, {result['threads']} threads, "
        f"1-minute load average {result['load_avg_1min']} while measuring):\n\n"
        "| method | pairs/s |\n| --- | ---: |\n"
        f"| in-batch: one pass per image, all B(B-1)/2 pairs (twinsight) | "
        f"{result['ours_pairs_per_s']:,} |\n"
        f"| pairwise loop: each pair member through the network (seeds) | "
        f"{result['seeds_pairs_per_s']:,} |\n"
        f"| **ratio** | **{result['ratio']}x** |\n\n"
        "Run: `OMP_NUM_THREADS=2 python benchmarks/train_pairs.py --repeats 5`\n"
    )
    update_section(section, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = parser.parse_args()
    result = measure(args.batch_size, args.steps, args.repeats)
    print(f"ours  {result['ours_pairs_per_s']:>10,} pairs/s")
    print(f"seeds {result['seeds_pairs_per_s']:>10,} pairs/s")
    print(f"ratio {result['ratio']}x")
    if not args.no_write:
        write_section(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
