"""Benchmark: twinsight's best-match estimates beside sbi's neural posterior estimation (NPE).

One seeded simulated library (``--systems`` x 8 views at ``--size``; or ``--data``) and,
on it, two estimators of the seven parameters (log10):

- **twinsight**: a model trained with ``twinsight.train`` defaults (or ``--run RUN
  --index IDX``, reused: its training time is RUN/metrics.json ``train_seconds``) and its
  index; each observation is matched with ``twinsight.match(index, images,
  instrument=...)``, the intervals calibrated for the instrument on the model's
  validation systems.
- **NPE**: ``sbi.inference.NPE`` with ``posterior_nn(model=--flow)`` (MAF by default) and,
  as the embedding net, the encoder architecture of the twinsight model (small-cnn, 128-d,
  without the final L2 normalization), fed the same min-max preprocessed images. It trains
  on the images of twinsight's training systems (the run's own split; sbi holds out 10 % of
  them for its early stopping), theta = log10 of the seven parameters, a BoxUniform prior
  over the library's log10 range widened by 5 % each side. Every batch (training and sbi's
  validation) is seen through fresh random instruments of the model's trained
  ``InstrumentRange`` (``random_instrument`` in the loaders' ``collate_fn``), as twinsight's
  training batches are. Its budget is the same wall time (``--npe-seconds``, default
  twinsight's ``train_seconds``): two epochs are timed, then training resumes for as many
  whole epochs as fit in the rest (sbi's ``max_num_epochs`` and ``resume_training``; its
  early stopping stays on).

Both are evaluated on the same ``--test-systems`` NEW systems (``observe_image`` seeds from
``--test-seed``: streams of their own, never in the library) rendered clean (beam 0, SNR 100:
the simulator's own noise) and through each ``--instrument``. Per method and instrument:
R^2 and RMSE of the median (log10), 68 % / 95 % coverage, narrowing (68 % width / the
library's 68 % width), TARP ATC and KS p-value and SBC rank KS p-values
(:mod:`twinsight.diagnostics`, the same code for both; twinsight's samples are its matches
widened by the 68 % inflation, :func:`~twinsight.diagnostics.inflate_samples`), and the time
per observation (twinsight's calibration for a new instrument, once per instrument, apart).
NPE's ``--samples`` draws per observation lie inside the prior box: sbi's rejection, bounded
(``--npe-rounds``, ``--npe-sampling-seconds``); an observation whose flow leaks past that is
topped up with raw draws, and counted.

Prints the tables and the README goal check, updates the "vs NPE" section of BENCHMARKS.md
(unless --no-write) and prints one JSON object as its last line.

    python benchmarks/vs_npe.py [--data sims.h5 --run RUN --index IDX] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import update_section

SECTION = "## vs NPE"
CLEAN = "beam=0,snr=100"
INSTRUMENTS = (CLEAN, "beam=2,snr=30", "beam=3,snr=10")
#: The prior box: the library's log10 range widened by this share of it on each side.
PRIOR_MARGIN = 0.05
#: The largest share of NPE's budget one resumed training call may plan for: a machine that
#: slows down mid-way costs at most about a chunk; each resumption costs sbi's early stopping
#: about one epoch of its patience (it counts the last epoch again), so not too many.
CHUNKS = 0.2
#: README goals: R^2(twinsight) / R^2(NPE) per parameter, and the 68 % level.
R2_RATIO_GOAL = 0.9
LEVEL_68 = 0.68
#: What the JSON keeps of each method's run beside the scores.
TWINSIGHT_EXTRAS = ("calibration_seconds", "matches", "inflation_68", "samples_vs_interval_68_dex")
NPE_EXTRAS = ("in_prior_share", "topped_up")


def require_sbi() -> Any:
    """sbi, or a one-line exit saying how to install it (an optional extra)."""
    try:
        import sbi
    except ImportError:
        raise SystemExit(
            "vs_npe.py needs sbi, the optional 'compare' extra: pip install -e '.[compare]'"
        ) from None
    return sbi


# -- the library and twinsight's model ------------------------------------------------------------
def library(args: argparse.Namespace, root: Path) -> Path:
    """The packed simulated set: ``--data``, or a seeded new one in ``root``."""
    import twinsight

    if args.data:
        if not Path(args.data).exists():
            raise SystemExit(f"--data {args.data}: no such file")
        return Path(args.data)
    path = root / "sims.h5"
    start = time.perf_counter()
    twinsight.simulate(
        path, n_systems=args.systems, n_projections=8, size=args.size, seed=args.seed
    )
    print(f"simulated {args.systems} systems x 8 views in {time.perf_counter() - start:.0f} s")
    return path


def twinsight_model(args: argparse.Namespace, data: Path, root: Path) -> dict[str, Any]:
    """The run folder, its index and training seconds: reused (``--run/--index``) or trained."""
    import twinsight

    if args.run:
        metrics = Path(args.run) / "metrics.json"
        if not metrics.is_file():
            raise SystemExit(f"--run {args.run}: no metrics.json (not a finished twinsight run)")
        seconds = float(json.loads(metrics.read_text())["train_seconds"])
        return {
            "run": Path(args.run),
            "index": twinsight.load_index(args.index),
            "train_seconds": seconds,
            "trained_here": False,
            "wall_seconds": None,
        }
    overrides = {"epochs": args.twinsight_epochs} if args.twinsight_epochs else {}
    start = time.perf_counter()
    result = twinsight.train(data, root / "run", progress=False, **overrides)
    wall = time.perf_counter() - start
    twinsight.build_index(result, data).save(root / "idx")
    print(f"trained twinsight in {wall:.0f} s (train_seconds {result.metrics['train_seconds']})")
    return {
        "run": result.run,
        "index": twinsight.load_index(root / "idx"),
        "train_seconds": float(result.metrics["train_seconds"]),
        "trained_here": True,
        "wall_seconds": round(wall, 1),
    }


def training_systems(collection: Any, run: Path, bundle: Any) -> Any:
    """The images twinsight trained on: the run's split, checked against its validation set."""
    from twinsight.inference.instrumented import calibration_set_path, load_calibration_set
    from twinsight.runs import resolve_config
    from twinsight.training.splits import split_train_val

    train, val = split_train_val(collection, resolve_config(run / "config.yaml"))
    if calibration_set_path(bundle) is not None:
        kept = set(load_calibration_set(bundle).items["system"].astype(str))
        if kept != set(val.items["system"].astype(str)):
            raise SystemExit(
                f"the split of {run}/config.yaml over this set does not give the model's own "
                "validation systems: is --data the set the run was trained on?"
            )
    return train


def log_params(values: np.ndarray, columns: list[str]) -> np.ndarray:
    """log10 of the parameters; all must be positive (the seven simulator parameters are)."""
    if not (np.asarray(values) > 0).all():
        bad = [c for j, c in enumerate(columns) if not (values[:, j] > 0).all()]
        raise SystemExit(f"parameters {bad} are not all positive: this benchmark works in log10")
    return np.log10(np.asarray(values, dtype=np.float64))


# -- NPE ------------------------------------------------------------------------------------------
class ChannelsLast(torch.nn.Module):
    """The embedding net in channels_last, as twinsight trains its encoder (about 1.4x faster)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


def embedding_net(bundle: Any) -> torch.nn.Module:
    """A fresh encoder of the twinsight model's architecture, without the L2 normalization."""
    from twinsight.models.encoders import create_encoder

    config = dict(bundle.encoder_config) | {"normalize": False}
    return ChannelsLast(create_encoder(bundle.encoder_name, **config))


class InstrumentCollate:
    """sbi's batches (theta, x, masks) with x seen through random instruments of ``rng``."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def __call__(self, rows: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        from torch.utils.data import default_collate

        from twinsight.training.augment import random_instrument

        theta, x, masks = default_collate(rows)
        return [theta, random_instrument(x, self.rng), masks]


def prior_bounds(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The library's log10 range [P], widened by :data:`PRIOR_MARGIN` of it on each side."""
    lo, hi = theta.min(axis=0), theta.max(axis=0)
    pad = PRIOR_MARGIN * (hi - lo)
    return (lo - pad).astype(np.float32), (hi + pad).astype(np.float32)


def prior_box(bounds: tuple[np.ndarray, np.ndarray]) -> Any:
    """sbi's BoxUniform over ``bounds``."""
    from sbi.utils import BoxUniform

    return BoxUniform(torch.from_numpy(bounds[0]), torch.from_numpy(bounds[1]))


def logging_to(folder: Path) -> dict[str, Any]:
    """NPE's TensorBoard log in ``folder`` (sbi's default is ./sbi-logs in the working dir)."""
    import inspect

    from sbi.inference import NPE
    from torch.utils.tensorboard.writer import SummaryWriter

    writer = SummaryWriter(str(folder))
    if "tracker" in inspect.signature(NPE).parameters:  # sbi >= 0.26
        from sbi.utils.tracking import TensorBoardTracker

        return {"tracker": TensorBoardTracker(writer)}
    return {"summary_writer": writer}


def fit_within(inference: Any, budget: float, settings: dict[str, Any]) -> list[tuple[int, float]]:
    """Train for as many whole epochs as fit in ``budget`` seconds of wall time.

    Two epochs first (sbi's ``max_num_epochs=1`` runs epochs 0 and 1), then resumed (the
    same optimizer, split and epoch count) in chunks of at most :data:`CHUNKS` of the
    budget, each sized by the last chunk's wall time per epoch, so that a machine that slows
    down mid-way costs at most a chunk; until no whole epoch fits or sbi's early stopping
    ends it. Returns (epochs, seconds) of each call.
    """
    start, calls = time.perf_counter(), []
    with warnings.catch_warnings():  # the epoch cap is ours: sbi's "not converged" is expected
        warnings.filterwarnings("ignore", message="Maximum number of epochs")
        planned = 2
        while True:
            done = len(inference.summary["epoch_durations_sec"])
            began = time.perf_counter()
            inference.train(max_num_epochs=done + planned - 1, resume_training=done > 0, **settings)
            ran = len(inference.summary["epoch_durations_sec"]) - done
            calls.append((ran, time.perf_counter() - began))
            if ran < planned:
                break  # sbi's early stopping: the validation loss stopped improving
            left, rate = budget - (time.perf_counter() - start), calls[-1][1] / ran
            if left < rate:
                break
            planned = max(1, int(min(left, budget * CHUNKS) // rate))
    return calls


def train_npe(
    x: torch.Tensor,
    theta: torch.Tensor,
    prior: Any,
    bundle: Any,
    args: argparse.Namespace,
    budget: float,
    logs: Path,
) -> tuple[Any, dict[str, Any]]:
    """Train NPE for about ``budget`` seconds; the posterior and how the training went."""
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn

    from twinsight.instrument import InstrumentRange

    torch.manual_seed(args.seed)
    rng = InstrumentRange.from_dict(bundle.instrument_range) or InstrumentRange()
    net = posterior_nn(model=args.flow, embedding_net=embedding_net(bundle), z_score_x="none")
    inference = NPE(
        prior=prior, density_estimator=net, show_progress_bars=False, **logging_to(logs)
    )
    with warnings.catch_warnings():  # sbi warns of z-scoring pixels, which z_score_x="none" skips
        warnings.filterwarnings("ignore", message="Data has extreme outliers")
        inference.append_simulations(theta, x)
    settings = {
        "training_batch_size": args.npe_batch,
        "learning_rate": args.npe_lr,
        "dataloader_kwargs": {"collate_fn": InstrumentCollate(rng)},
    }
    start, cpu = time.perf_counter(), time.process_time()
    calls = fit_within(inference, budget, settings)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    summary = inference.summary
    info = {
        "flow": args.flow,
        "epochs": int(len(summary["training_loss"])),
        "epoch_seconds": round(float(np.median(summary["epoch_durations_sec"])), 2),
        "train_seconds": round(seconds, 2),
        "budget_seconds": round(budget, 2),
        "cpu_seconds": round(cpu, 1),
        "calls": [[n, round(t, 1)] for n, t in calls],
        "best_validation_loss": float(min(summary["validation_loss"])),
        "batch_size": args.npe_batch,
        "learning_rate": args.npe_lr,
        "training_images": int(len(x)),
        "instrument_range": rng.to_dict(),
    }
    print(f"NPE: {info['epochs']} epochs of {info['epoch_seconds']} s in {seconds:.0f} s")
    return inference.build_posterior(), info


# -- the test observations ------------------------------------------------------------------------
def render(seeds: list[int], instrument: Any, size: int, columns: list[str]) -> tuple:
    """New systems seen through ``instrument``: images [N, 1, S, S] and log10 truths [N, P]."""
    from twinsight.simulator.observe import observe_image

    snr = math.inf if instrument.snr is None else instrument.snr
    images, truths = [], []
    for seed in seeds:
        image, truth = observe_image(seed=seed, size=size, snr=snr, beam_fwhm=instrument.beam_major)
        images.append(image[None])
        truths.append([truth[c] for c in columns])
    return np.stack(images), log_params(np.array(truths), columns)


def matching_for(index: Any, bundle: Any, instrument: Any) -> dict[str, Any] | None:
    """The calibration ``twinsight.match`` uses for ``instrument`` (fitted now, then cached)."""
    from twinsight.inference import calibrate_for_instrument
    from twinsight.inference.instrumented import calibration_set_path

    if calibration_set_path(bundle) is None:
        return bundle.matching or index.meta.get("matching")
    return calibrate_for_instrument(bundle, index, instrument)


def twinsight_posteriors(
    index: Any, bundle: Any, run: Path, images: np.ndarray, instrument: Any, columns: list[str]
) -> dict[str, Any]:
    """twinsight's medians, reported intervals and (inflated, weighted) samples, all log10."""
    import twinsight
    from twinsight.diagnostics import inflate_samples
    from twinsight.inference import inflation_factors, neighbour_intervals

    start = time.perf_counter()
    matching = matching_for(index, bundle, instrument)
    calibration = time.perf_counter() - start
    start = time.perf_counter()
    estimates = twinsight.match(index, images, model=run, instrument=instrument)
    seconds = time.perf_counter() - start
    if any(e.parameters[c].scale != "log" for e in estimates for c in columns):
        raise SystemExit("twinsight reports a parameter in linear scale; this benchmark is log10")
    n = max(e.n_matches for e in estimates)
    values, weights = np.zeros((len(images), n, len(columns))), np.zeros((len(images), n))
    for q, e in enumerate(estimates):
        weights[q, : e.n_matches] = e.parameters[columns[0]].weights
        for j, c in enumerate(columns):
            values[q, : e.n_matches, j] = np.log10(e.parameters[c].values)
        values[q, e.n_matches :] = values[q, 0]  # padding, weight 0
    median = np.log10([[e.parameters[c].median for c in columns] for e in estimates])
    factors = (
        inflation_factors(matching, columns, [LEVEL_68])[0]
        if estimates[0].calibrated
        else np.ones(len(columns))
    )
    with np.errstate(divide="ignore"):  # an interval reaching 0 (natural units): -inf
        intervals = {
            level: np.log10(
                [
                    [getattr(e.parameters[c], f"interval_{level}") for c in columns]
                    for e in estimates
                ]
            )
            for level in ("68", "95")
        }
    samples = inflate_samples(values, median, factors)
    _, lo, hi = neighbour_intervals(samples, weights, (LEVEL_68,))
    return {
        "median": median,
        "intervals": intervals,
        "samples": samples,
        "weights": weights,
        "seconds_per_observation": seconds / len(images),
        "calibration_seconds": calibration,
        "matches": n,
        "inflation_68": factors.tolist(),
        # the samples' 68 % interval is the reported one (inflate_samples): 0 up to rounding
        "samples_vs_interval_68_dex": float(
            np.abs(np.stack([lo[0], hi[0]], -1) - intervals["68"]).max()
        ),
    }


def draw_in_box(
    posterior: Any,
    x: torch.Tensor,
    n: int,
    box: tuple[np.ndarray, np.ndarray],
    rounds: int,
    seconds: float = math.inf,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` samples per observation [Q, N, P] of the flow truncated to the prior box.

    sbi's rejection sampling, bounded: ``n`` raw draws per observation still short of ``n``
    accepted ones, at most ``rounds`` times and no new round after ``seconds``; an
    observation whose flow leaks so much that it is still short is topped up with its raw
    (outside the box) draws. Returns also the share of raw draws inside the box and whether
    each observation was topped up.
    """
    lo, hi = box
    start = time.perf_counter()
    kept: list[list[np.ndarray]] = [[] for _ in range(len(x))]
    count, drawn = np.zeros(len(x), int), np.zeros(len(x), int)
    raw_last: dict[int, np.ndarray] = {}
    for _ in range(rounds):
        short = np.flatnonzero(count < n)
        if not len(short) or time.perf_counter() - start > seconds:
            break
        with torch.no_grad(), warnings.catch_warnings():  # outside the box: counted here
            warnings.filterwarnings("ignore", message=".*outside.*prior")
            warnings.filterwarnings("ignore", message="Capping max_sampling_batch_size")
            raw = posterior.sample_batched(
                (n,), x=x[short], reject_outside_prior=False, show_progress_bars=False
            )
        raw = raw.permute(1, 0, 2).double().numpy()  # [q, N, P]
        inside = ((raw >= lo) & (raw <= hi)).all(axis=-1)
        for row, q in enumerate(short):
            kept[q].append(raw[row, inside[row]])
            count[q] += int(inside[row].sum())
            drawn[q] += n
            raw_last[q] = raw[row, ~inside[row]]
    topped = count < n
    for q in np.flatnonzero(topped):
        kept[q].append(raw_last[q][: n - count[q]])
    samples = np.stack([np.concatenate(k)[:n] for k in kept])
    return samples, np.minimum(count, drawn) / drawn, topped


def npe_posteriors(
    posterior: Any,
    bundle: Any,
    images: np.ndarray,
    box: tuple[np.ndarray, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """NPE's medians, central intervals and ``--samples`` draws per observation, all log10."""
    from twinsight.data.transforms import preprocess
    from twinsight.inference import neighbour_intervals

    draw_in_box(
        posterior, torch.from_numpy(preprocess(images[:1], bundle.preprocessing)), 10, box, 1
    )  # warm-up: the first call of a process is several times slower
    start = time.perf_counter()
    x = torch.from_numpy(preprocess(images, bundle.preprocessing))
    samples, accepted, topped = draw_in_box(
        posterior, x, args.samples, box, args.npe_rounds, args.npe_sampling_seconds
    )
    seconds = time.perf_counter() - start
    weights = np.ones(samples.shape[:2])
    median, lo, hi = neighbour_intervals(samples, weights, (0.68, 0.95))
    return {
        "median": median,
        "intervals": {"68": np.stack([lo[0], hi[0]], -1), "95": np.stack([lo[1], hi[1]], -1)},
        "samples": samples,
        "weights": weights,
        "seconds_per_observation": seconds / len(images),
        "in_prior_share": float(np.mean(accepted)),
        "topped_up": int(topped.sum()),
    }


def _as_bounds(intervals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds [Q, P] of intervals stored [Q, P, 2]."""
    return intervals[..., 0], intervals[..., 1]


def score(
    post: dict[str, Any], truth: np.ndarray, prior: np.ndarray, columns: list[str], seed: int
) -> dict[str, Any]:
    """Per parameter R^2, RMSE, coverage, narrowing and SBC p; TARP ATC and p; time."""
    from twinsight.diagnostics import check_sbc, check_tarp, run_sbc, run_tarp

    prior_68 = np.quantile(prior, 0.84, axis=0) - np.quantile(prior, 0.16, axis=0)
    lo68, hi68 = _as_bounds(post["intervals"]["68"])
    lo95, hi95 = _as_bounds(post["intervals"]["95"])
    sbc_p = check_sbc(run_sbc(post["samples"], post["weights"], truth, seed=seed))
    atc, tarp_p = check_tarp(
        run_tarp(post["samples"], post["weights"], truth, prior=prior, seed=seed)
    )
    params = {}
    for j, c in enumerate(columns):
        resid = truth[:, j] - post["median"][:, j]
        params[c] = {
            "r2": float(1 - np.mean(resid**2) / np.var(truth[:, j])),
            "rmse": float(np.sqrt(np.mean(resid**2))),
            "coverage_68": float(
                np.mean((truth[:, j] >= lo68[:, j]) & (truth[:, j] <= hi68[:, j]))
            ),
            "coverage_95": float(
                np.mean((truth[:, j] >= lo95[:, j]) & (truth[:, j] <= hi95[:, j]))
            ),
            "narrowing": float(np.mean(hi68[:, j] - lo68[:, j]) / prior_68[j]),
            "sbc_ks_pvalue": float(sbc_p[j]),
        }
    cov_err = float(np.mean([abs(p["coverage_68"] - LEVEL_68) for p in params.values()]))
    return {
        "parameters": params,
        "tarp_atc": atc,
        "tarp_ks_pvalue": tarp_p,
        "mean_abs_coverage_68_error": cov_err,
        "seconds_per_observation": post["seconds_per_observation"],
    }


# -- the report -----------------------------------------------------------------------------------
def pair(a: float, b: float, digits: int = 2) -> str:
    return f"{a:.{digits}f} / {b:.{digits}f}"


def parameter_table(results: dict[str, dict[str, Any]], columns: list[str]) -> str:
    """Per instrument and parameter, every figure as ``twinsight / NPE``."""
    keys = ("r2", "rmse", "coverage_68", "coverage_95", "narrowing", "sbc_ks_pvalue")
    head = (
        "| instrument | parameter | R² | RMSE (dex) | coverage 68 % | coverage 95 % | "
        "narrowing | SBC KS p |"
    )
    rows = [head, "|---" * 8 + "|"]
    for name, res in results.items():
        for c in columns:
            t, n = res["twinsight"]["parameters"][c], res["npe"]["parameters"][c]
            cells = [pair(t[k], n[k], 3 if k == "sbc_ks_pvalue" else 2) for k in keys]
            rows.append(f"| {name} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """Per instrument the joint figures and the times, ``twinsight / NPE``."""
    rows = [
        "| instrument | TARP ATC | TARP KS p | mean abs(cov68 - 0.68) | ms per observation | "
        "twinsight calibration, s (once per instrument) | NPE draws inside the prior |",
        "|---" * 7 + "|",
    ]
    for name, res in results.items():
        t, n = res["twinsight"], res["npe"]
        ms = (1e3 * t["seconds_per_observation"], 1e3 * n["seconds_per_observation"])
        rows.append(
            f"| {name} | {pair(t['tarp_atc'], n['tarp_atc'], 3)} | "
            f"{pair(t['tarp_ks_pvalue'], n['tarp_ks_pvalue'], 3)} | "
            f"{pair(t['mean_abs_coverage_68_error'], n['mean_abs_coverage_68_error'], 3)} | "
            f"{pair(*ms, 1)} | {t['calibration_seconds']:.1f} | {n['in_prior_share']:.1%}"
            + (f" ({n['topped_up']} topped up)" if n["topped_up"] else "")
            + " |"
        )
    return "\n".join(rows) + "\n"


def goal_check(results: dict[str, dict[str, Any]], columns: list[str]) -> dict[str, Any]:
    """README goals per instrument: calibration at least NPE's, R^2 ratio >= 0.9 per parameter."""
    out = {}
    for name, res in results.items():
        t, n = res["twinsight"], res["npe"]
        ratios = {
            c: t["parameters"][c]["r2"] / n["parameters"][c]["r2"]
            if n["parameters"][c]["r2"] > 0
            else float("nan")
            for c in columns
        }
        out[name] = {
            "coverage_error_twinsight": t["mean_abs_coverage_68_error"],
            "coverage_error_npe": n["mean_abs_coverage_68_error"],
            "calibrated_at_least_as_npe": t["mean_abs_coverage_68_error"]
            <= n["mean_abs_coverage_68_error"],
            "r2_ratio": ratios,
            "r2_ratio_below_goal": [c for c, r in ratios.items() if not r >= R2_RATIO_GOAL],
        }
    return out


def goal_text(goals: dict[str, Any]) -> str:
    lines = []
    for name, g in goals.items():
        ratios = ", ".join(
            f"{c} {r:.2f}" if math.isfinite(r) else f"{c} n/a (NPE R² <= 0)"
            for c, r in g["r2_ratio"].items()
        )
        below = ", ".join(g["r2_ratio_below_goal"]) or "none"
        lines.append(
            f"- {name}: mean |coverage_68 - 0.68| twinsight {g['coverage_error_twinsight']:.3f} "
            f"vs NPE {g['coverage_error_npe']:.3f} "
            f"({'met' if g['calibrated_at_least_as_npe'] else 'not met'}); R²(twinsight) / "
            f"R²(NPE): {ratios}; below {R2_RATIO_GOAL}: {below}"
        )
    return "\n".join(lines) + "\n"


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity as None, so the JSON line is strict JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- the run --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", type=int, default=1000, help="simulated systems (x 8 views)")
    ap.add_argument("--size", type=int, default=64, help="image size of a new set, pixels")
    ap.add_argument("--seed", type=int, default=0, help="seed of the set and of NPE")
    ap.add_argument("--data", help="reuse this packed set (sims.h5) instead of simulating one")
    ap.add_argument("--run", help="reuse this trained twinsight run over --data (with --index)")
    ap.add_argument("--index", help="the index of --run over --data")
    ap.add_argument("--twinsight-epochs", type=int, help="epochs of a model trained here")
    ap.add_argument("--npe-seconds", type=float, help="NPE budget (default: twinsight's)")
    ap.add_argument("--flow", choices=("maf", "nsf"), default="maf", help="sbi density estimator")
    ap.add_argument("--npe-batch", type=int, default=128, help="NPE batch (twinsight's default)")
    ap.add_argument("--npe-lr", type=float, default=5e-4, help="NPE learning rate (sbi's default)")
    ap.add_argument("--test-systems", type=int, default=300, help="new systems per instrument")
    ap.add_argument("--test-seed", type=int, default=10_000, help="first observation seed")
    ap.add_argument("--samples", type=int, default=500, help="NPE samples per observation")
    ap.add_argument(
        "--npe-rounds",
        type=int,
        default=20,
        help="rejection rounds into the prior box before raw draws top up",
    )
    ap.add_argument(
        "--npe-sampling-seconds",
        type=float,
        default=120.0,
        help="no new rejection round after this long, per instrument",
    )
    ap.add_argument("--instrument", action="append", help=f"default: {' '.join(INSTRUMENTS)}")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if bool(args.run) != bool(args.index):
        ap.error("give --run RUN and --index IDX together (the model and its index)")
    if args.run and not args.data:
        ap.error("--run needs --data, the packed set it was trained on")
    from twinsight.errors import TwinsightError
    from twinsight.instrument import parse_instrument

    args.instrument = args.instrument or list(INSTRUMENTS)
    for text in args.instrument:
        try:
            parse_instrument(text)
        except TwinsightError as exc:
            ap.error(str(exc))
    return args


def settings_text(
    args: argparse.Namespace, model: dict[str, Any], npe: dict[str, Any], n_systems: int, size: int
) -> str:
    """What was compared, in one paragraph."""
    source = "trained here, `twinsight.train` defaults" if model["trained_here"] else "a reused run"
    box = f"{PRIOR_MARGIN:.0%}"
    sentences = [
        f"Library: {n_systems:,} simulated systems x 8 views at {size} x {size} px.",
        f"twinsight ({source}) trained on {npe['training_images']:,} images of its training",
        f"systems for {model['train_seconds']:.0f} s (`train_seconds`); it matches each",
        "observation with `twinsight.match(..., instrument=...)`, calibrated for the",
        "instrument on its validation systems.",
        f"NPE: sbi {npe['sbi']} `NPE`, {npe['flow'].upper()} (sbi's defaults: 5 transforms, 50",
        "hidden units), embedding net = the twinsight encoder's architecture (no L2",
        "normalization), fresh weights, on the same images min-max scaled, each batch through",
        "fresh random instruments of the model's training range; theta = log10 of the 7",
        f"parameters, BoxUniform prior over the library's range + {box} each side;",
        f"batch {npe['batch_size']}, lr {npe['learning_rate']:g}; {npe['epochs']} epochs in",
        f"{npe['train_seconds']:.0f} s, {npe['cpu_seconds']:.0f} CPU s (budget",
        f"{npe['budget_seconds']:.0f} s, sbi's early stopping on).",
        f"Test: {args.test_systems} new systems (never in the library) per instrument, the",
        f"same images for both; NPE: {args.samples} draws per observation inside the prior",
        "box. Cells: twinsight / NPE, parameters in log10.",
    ]
    return " ".join(sentences)


def compare(
    text: str, ctx: dict[str, Any], posterior: Any, box: tuple, args: argparse.Namespace
) -> dict[str, Any]:
    """Both methods' scores on the same new systems seen through the instrument ``text``."""
    from twinsight.instrument import parse_instrument

    inst = parse_instrument(text)
    bundle, columns, prior = ctx["bundle"], ctx["columns"], ctx["prior"]
    seeds = list(range(args.test_seed, args.test_seed + args.test_systems))
    images, truth = render(seeds, inst, int(bundle.preprocessing.size[0]), columns)
    ours = twinsight_posteriors(ctx["index"], bundle, ctx["run"], images, inst, columns)
    theirs = npe_posteriors(posterior, bundle, images, box, args)
    out = {
        "twinsight": score(ours, truth, prior, columns, args.seed)
        | {k: ours[k] for k in TWINSIGHT_EXTRAS},
        "npe": score(theirs, truth, prior, columns, args.seed) | {k: theirs[k] for k in NPE_EXTRAS},
    }
    print(f"{text}: done", flush=True)
    return out


def prepare(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The library, twinsight's model and index, and the images and theta NPE trains on."""
    import twinsight
    from twinsight.api import index_model
    from twinsight.data.transforms import preprocess

    data = library(args, root)
    collection = twinsight.open_collection(str(data))
    model = twinsight_model(args, data, root)
    bundle = index_model(model["index"], model["run"])
    columns = list(model["index"].param_columns)
    train = training_systems(collection, model["run"], bundle)
    return model | {
        "bundle": bundle,
        "columns": columns,
        "systems": int(collection.items["system"].nunique()),
        "prior": log_params(model["index"].params(columns), columns),
        "x": torch.from_numpy(preprocess(train.images(), bundle.preprocessing)),
        "theta": torch.tensor(log_params(train.params(columns), columns), dtype=torch.float32),
    }


def main() -> None:
    from twinsight.errors import TwinsightError

    try:
        run(parse_args())
    except TwinsightError as exc:  # a twinsight refusal: one line, as the CLI prints it
        raise SystemExit(f"vs_npe.py: {exc}") from None


def run(args: argparse.Namespace) -> None:
    """Prepare, train NPE, compare on every instrument, report; no temporary files left."""
    sbi = require_sbi()
    root = Path(tempfile.mkdtemp(prefix="twinsight-bench-npe-"))
    start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    try:
        ctx = prepare(args, root) | {"load_start": load_start}
        box = prior_bounds(ctx["prior"])
        budget = args.npe_seconds or ctx["train_seconds"]
        posterior, npe = train_npe(
            ctx["x"], ctx["theta"], prior_box(box), ctx["bundle"], args, budget, root / "sbi-logs"
        )
        npe["sbi"] = sbi.__version__
        results = {t: compare(t, ctx, posterior, box, args) for t in args.instrument}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    size = int(ctx["bundle"].preprocessing.size[0])
    report(args, ctx, npe, results, ctx["systems"], size, time.perf_counter() - start)


def report(
    args: argparse.Namespace,
    model: dict[str, Any],
    npe: dict[str, Any],
    results: dict[str, Any],
    n_systems: int,
    size: int,
    wall: float,
) -> None:
    """Print the tables and goal check, write the BENCHMARKS.md section, print the JSON."""
    columns = model["columns"]
    goals = goal_check(results, columns)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    load = round(os.getloadavg()[0], 2)
    command = " ".join(["python benchmarks/vs_npe.py", *sys.argv[1:]])
    intro = (
        f"`{command}` ({dt.date.today()}; {machine}; load average {model['load_start']} at "
        f"the start, {load} at the end; "
        f"{wall / 60:.1f} min in all). twinsight's best-match estimates beside sbi's neural "
        f"posterior estimation, on the same simulations and the same held-out new systems. "
        + settings_text(args, model, npe, n_systems, size)
    )
    goal = (
        f"Goals (README): twinsight's mean |coverage_68 - 0.68| at most NPE's, and "
        f"R²(twinsight) / R²(NPE) >= {R2_RATIO_GOAL} for every parameter:"
    )
    text = "\n\n".join(
        [
            SECTION,
            textwrap.fill(intro, 96, break_on_hyphens=False, break_long_words=False),
            parameter_table(results, columns).rstrip(),
            summary_table(results).rstrip(),
            textwrap.fill(goal, 96),
            goal_text(goals),
        ]
    )
    print(text)
    if not args.no_write:
        update_section(text)
    figures = {
        "machine": machine,
        "load_average": load,
        "load_average_start": model["load_start"],
        "wall_minutes": round(wall / 60, 2),
        "systems": n_systems,
        "size": size,
        "test_systems": args.test_systems,
        "twinsight_train_seconds": model["train_seconds"],
        "twinsight_trained_here": model["trained_here"],
        "twinsight_train_wall_seconds": model["wall_seconds"],
        "npe": npe,
        "instruments": results,
        "goals": goals,
    }
    print(json.dumps(finite(figures)))


if __name__ == "__main__":
    main()
