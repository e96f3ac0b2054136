"""Benchmark: training throughput from a packed HDF5 set streamed from disk, against in memory.

Makes packed files of ``--sizes`` GB of images (default 1 and 4) from one simulated library
(``--systems`` x 8 views, 64 px, or ``--data``): the library repeated, each copy turned by
one of the eight rotations/flips of the square and given systems of its own, so that every
file is a library of ``copies x systems`` systems. Then, each in a fresh process:

- **in memory**: the smallest file, loaded whole (``in_memory_gb`` above its size);
- **streamed**: every file with ``in_memory_gb = 0``: batches read and preprocessed by
  the data-loader workers (``--workers``, default twinsight's choice) with prefetch;
- **streamed, glibc's malloc**: the smallest file streamed without
  :func:`twinsight.allocator.reuse_freed_memory` (which the command line and every other
  case here call), to show what that setting is worth.

A run is twinsight's own training (its sampler, loaders, module, instrument augmentation
and AdamW) under a Lightning Trainer for ``--warmup`` + ``--steps`` optimizer steps; its
throughput is the images per second over the steps after the warm-up, its peak memory the
largest proportional set size (PSS, so pages shared with the workers count once) of the
process and its workers, polled every 0.1 s. Median of ``--runs`` interleaved rounds.

Prints a table, updates the "Streaming" section of BENCHMARKS.md (unless --no-write) and
prints one JSON object as its last line.

    python benchmarks/stream.py [--data sims.h5] [--sizes 1 4] [--folder DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _bench import machine, publish

from twinsight.data.packed import CHUNK_IMAGES

SECTION = "## Streaming"
RATIO_GOAL = 0.8


def _dihedral(images: np.ndarray, copy: int) -> np.ndarray:
    turned = np.rot90(images, copy % 4, axes=(-2, -1))
    return np.ascontiguousarray(turned[..., ::-1] if copy % 8 >= 4 else turned)


def make_file(source: Path, path: Path, gigabytes: float) -> dict[str, Any]:
    """A packed file of about ``gigabytes`` of images: ``source`` repeated, each copy turned."""
    from twinsight.data.packed import read_packed, write_packed

    lib = read_packed(source)
    per_copy = len(lib) * int(np.prod(lib.image_shape)) * 4
    copies = max(1, round(gigabytes * 1e9 / per_copy))
    items = []
    for copy in range(copies):
        part = lib.items.copy()
        part["system"] = f"c{copy}_" + part["system"].astype(str)
        part["key"] = f"c{copy}_" + part["key"].astype(str)
        items.append(part)
    table = pd.concat(items, ignore_index=True)

    def batches():
        for copy in range(copies):
            for _, x in lib.iter_batches(2048):
                yield _dihedral(x, copy)

    t = time.perf_counter()
    write_packed(
        path,
        table,
        batches(),
        lib.image_shape,
        param_columns=lib.param_columns,
        meta=lib.meta,
        overwrite=True,  # the benchmark's own scratch file from an earlier run
    )
    return {
        "images": len(table),
        "systems": int(table["system"].nunique()),
        "image_gb": len(table) * int(np.prod(lib.image_shape)) * 4 / 1e9,
        "file_gb": path.stat().st_size / 1e9,
        "write_seconds": time.perf_counter() - t,
    }


def _compression(path: Path) -> str:
    """How the file's image chunks are stored, in words."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f["images"]
        if ds.compression is None:
            return "uncompressed"
        return f"{ds.compression}-{ds.compression_opts}" if ds.compression_opts else ds.compression


def _pss_kb(pid: int) -> int:
    """The proportional set size of ``pid`` and its descendants, in kB (0 when gone)."""
    total = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    except OSError:
        return 0
    return total + sum(_pss_kb(int(c)) for c in children)


def run_child(args: list[str]) -> dict[str, Any]:
    """Run one measurement in a fresh process; its JSON result and peak PSS."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _pss_kb(proc.pid))
            time.sleep(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"error: the measurement {args} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_memory_gb"] = peak * 1024 / 1e9
    return result


def child(
    path: str, in_memory_gb: float, workers: int | None, warmup: int, steps: int, reuse: bool
) -> None:
    """One training run of ``warmup + steps`` steps; prints its throughput as JSON."""
    import lightning.pytorch as pl
    import torch

    from twinsight.allocator import reuse_freed_memory
    from twinsight.config import TrainConfig, apply_overrides
    from twinsight.data.packed import read_packed
    from twinsight.training.data import loaders
    from twinsight.training.module import SiameseModule
    from twinsight.training.preparation import prepare

    if reuse:
        reuse_freed_memory()  # as the command line does
    overrides: dict[str, Any] = {"runtime.in_memory_gb": in_memory_gb, "runtime.progress": False}
    if workers is not None:
        overrides["runtime.num_workers"] = workers
    config = apply_overrides(TrainConfig(), overrides)
    prep = prepare(config, read_packed(path))
    pl.seed_everything(0, verbose=False)
    module = SiameseModule(
        config=prep.config.model_dump(),
        config_hash="bench",
        encoder_config={"name": prep.encoder_name, **prep.encoder_config},
        targets={k: v for k, v in prep.targets_dict.items() if k != "normalizer"},
        data_fingerprint=prep.fingerprint,
        loss_name=prep.loss_name,
    )
    marks: dict[str, float] = {}
    done = [0]  # optimizer steps so far, across epochs (a small file has short epochs)

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if done[0] == warmup:
                marks["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            done[0] += 1
            if done[0] == warmup + steps:
                marks["end"] = time.perf_counter()

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[Clock()],
    )
    start = time.perf_counter()
    train_loader, _ = loaders(prep, trainer)
    loader_setup = time.perf_counter() - start
    module.train_batches = train_loader.batch_sampler
    trainer.fit(module, train_loader)
    batch = (
        train_loader.batch_sampler.batch_size
        if hasattr(train_loader.batch_sampler, "batch_size")
        else prep.config.trainer.batch_size
    )
    if "end" not in marks:
        raise SystemExit(
            f"stream: training ran {done[0]} steps, fewer than --warmup {warmup} + --steps "
            f"{steps}; give a larger file (--sizes) or fewer steps"
        )
    seconds = marks["end"] - marks["start"]
    print(
        json.dumps(
            {
                "images_per_s": steps * batch / seconds,
                "seconds": seconds,
                "loader_setup_s": loader_setup,
                "batch": batch,
                "workers": train_loader.num_workers,
                "prefetch_factor": train_loader.prefetch_factor,
                "streamed": train_loader.dataset.images is None,
                "torch_threads": torch.get_num_threads(),
                "malloc": "reuse" if reuse else "glibc",
            }
        )
    )


def _markdown(res: dict[str, Any]) -> str:
    env = res["machine"]
    base = res["in_memory"]
    lines = [
        SECTION,
        "",
        f"Measured by `benchmarks/stream.py` on {env['date']} ({env['machine']}, {env['cpus']} "
        f"CPUs, load average {env['load']} at the start, {env['load_end']} at the end). "
        f"Training throughput of twinsight's defaults over {res['steps']} optimizer steps after "
        f"{res['warmup']} of warm-up, median of {res['runs']} interleaved rounds (each case "
        "once a round), each run in a fresh process; "
        "peak memory is the largest PSS of the process and its data-loader workers. "
        f"Files: {res['source']} repeated in the eight orientations of the square "
        f"({res['compression']} chunks of {res['chunk_images']} images, as `twinsight pack` "
        "writes).",
        "",
        "| images | file | how | workers | malloc | images/s | / in memory | each round "
        "| peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in [base, *res["streamed"], res["streamed_glibc_malloc"]]:
        ratio = row["images_per_s"] / base["images_per_s"]
        lines.append(
            f"| {row['file']['images']:,} ({row['file']['image_gb']:.1f} GB) | "
            f"{row['file']['file_gb']:.2f} GB | {'streamed' if row['streamed'] else 'in memory'} "
            f"| {row['workers']} | {row['malloc']} | {row['images_per_s']:,.0f} "
            f"| {ratio:.2f}x | "
            f"{', '.join(f'{v:.0f}' for v in row['all_images_per_s'])} | "
            f"{row['peak_memory_gb']:.2f} GB |"
        )
    worst = min(r["images_per_s"] for r in res["streamed"]) / base["images_per_s"]
    goal = "met" if worst >= RATIO_GOAL else "missed"
    lines += [
        "",
        f"Goal: streamed at least {RATIO_GOAL}x in memory: {goal} ({worst:.2f}x). malloc "
        "`reuse`: twinsight's setting (`twinsight.allocator`: freed blocks kept for the next "
        "step); `glibc`: glibc's defaults, which hand each large activation back to the "
        "kernel and fault it in again at the next step.",
        "",
    ]
    return "\n".join(lines)


def _summary(path: Path, runs: list[dict[str, Any]], info: dict) -> dict[str, Any]:
    row = dict(runs[0])
    row["images_per_s"] = statistics.median(r["images_per_s"] for r in runs)
    row["peak_memory_gb"] = max(r["peak_memory_gb"] for r in runs)
    row["all_images_per_s"] = [r["images_per_s"] for r in runs]
    row["file"] = info
    print(
        f"{path.name}: {'streamed' if row['streamed'] else 'in memory'}, "
        f"{row['images_per_s']:,.0f} images/s, peak {row['peak_memory_gb']:.2f} GB",
        file=sys.stderr,
        flush=True,
    )
    return row


def measure_interleaved(cases: list[tuple[Path, float, bool]], args) -> list[list[dict[str, Any]]]:
    """``args.runs`` rounds, each running every case once: a machine whose speed drifts
    (a shared host) then slows every case alike, not one case's runs."""
    results: list[list[dict[str, Any]]] = [[] for _ in cases]
    for _ in range(args.runs):
        for i, (path, in_memory_gb, reuse) in enumerate(cases):
            child_args = [
                str(path), str(in_memory_gb), str(args.workers), str(args.warmup),
                str(args.steps), "reuse" if reuse else "glibc",
            ]  # fmt: skip
            results[i].append(run_child(child_args))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a packed simulated library to repeat (default: simulate)")
    ap.add_argument("--systems", type=int, default=500, help="systems simulated without --data")
    ap.add_argument("--sizes", type=float, nargs="+", default=[1.0, 4.0], help="file sizes, GB")
    ap.add_argument("--folder", help="where the files go (default: a temporary folder)")
    ap.add_argument("--workers", default="None", help="data-loader workers (default: auto)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        path, mem, workers, warmup, steps, malloc = args.child
        child(
            path,
            float(mem),
            None if workers == "None" else int(workers),
            int(warmup),
            int(steps),
            malloc == "reuse",
        )
        return
    env = machine()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="twinsight-stream-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        source = Path(args.data) if args.data else folder / "library.h5"
        if not args.data:
            from twinsight.simulator.writers import write_packed_simulation

            write_packed_simulation(source, args.systems, 8, 64, seed=0)
        files = {}
        for size in sorted(args.sizes):
            path = folder / f"stream_{size:g}gb.h5"
            files[path] = make_file(source, path, size)
            print(f"wrote {path.name}: {files[path]}", file=sys.stderr, flush=True)
        smallest = min(files, key=lambda p: files[p]["images"])
        cases = [(smallest, 1e3, True)] + [(p, 0.0, True) for p in files]
        cases.append((smallest, 0.0, False))
        runs = measure_interleaved(cases, args)
        rows = [_summary(p, r, files[p]) for (p, _, _), r in zip(cases, runs, strict=True)]
        res: dict[str, Any] = {
            "machine": env,
            "source": f"'{source.name}'" if args.data else f"{args.systems} simulated systems x 8",
            "steps": args.steps,
            "warmup": args.warmup,
            "runs": args.runs,
            "chunk_images": CHUNK_IMAGES,
            "compression": _compression(smallest),
            "in_memory": rows[0],
            "streamed": rows[1:-1],
            "streamed_glibc_malloc": rows[-1],
        }
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    base = res["in_memory"]["images_per_s"]
    res["ratio"] = min(r["images_per_s"] for r in res["streamed"]) / base
    env["load_end"] = round(os.getloadavg()[0], 2)
    text = _markdown(res)
    publish(text, res, write=not args.no_write)


if __name__ == "__main__":
    main()
