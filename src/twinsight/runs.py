"""Training runs in a folder: checked first, trained in ``RUN.partial``, published whole.

:func:`train` (re-exported by the façade, :func:`twinsight.train`) writes its run
folder RUN safely, under one lock per RUN (one writer):

- everything is checked (data, targets, encoder, loss, sampler, configuration)
  before any file is written; a bad input leaves nothing behind;
- training runs in ``RUN.partial/`` next to RUN (checkpoints, logs, config);
  an interruption leaves it there, and ``resume=True`` (``--resume``) continues
  from ``RUN.partial/checkpoints/last.ckpt``; a failure such as a NaN loss
  removes a fresh ``RUN.partial``;
- at the end the model bundle, metrics and figures are written into
  ``RUN.partial`` and the folder is renamed to RUN in one step (an existing RUN
  is replaced only then, and only with ``overwrite=True``).

So RUN is either absent, or a complete run; never half-written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from twinsight.config import TrainConfig, apply_overrides, config_to_yaml, load_config
from twinsight.config import validate_config as _validate_config
from twinsight.data.collection import Collection
from twinsight.data.readers import open_collection
from twinsight.data.transforms import preprocess
from twinsight.distributed import is_rank_zero
from twinsight.errors import TwinsightError
from twinsight.fsutil import (
    WriteRefusedError,
    disk_errors,
    output_lock,
    replace_dir,
    write_text_atomic,
)
from twinsight.io import write_json
from twinsight.models.bundle import ModelBundle
from twinsight.plots import plot_ranked_pairs, plot_training_curves, select_ranked_pairs
from twinsight.results import TrainResult
from twinsight.training import Prepared, fit, pair_targets, prepare, split_with_info

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def resolve_config(
    config: TrainConfig | dict | str | os.PathLike | None = None, **overrides: Any
) -> TrainConfig:
    """The effective configuration: defaults, then a YAML file / dict / config, then overrides."""
    if config is None:
        base = TrainConfig()
    elif isinstance(config, TrainConfig):
        base = config
    elif isinstance(config, dict):
        base = _validate_config(config)
    else:
        base = load_config(config)
    return apply_overrides(base, overrides)


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a run trains before it is complete: ``RUN.partial`` next to RUN."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def train(
    data: str | os.PathLike | Collection,
    out: str | os.PathLike,
    config: TrainConfig | dict | str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
    **overrides: Any,
) -> TrainResult:
    """Train a similarity model on ``data`` and write the run folder ``out``.

    ``data`` is anything :func:`~twinsight.data.readers.open_collection` takes (a path or a
    built-in name) or a Collection; ``config`` a TrainConfig, a dict or a YAML path;
    ``overrides`` flat options such as ``epochs=5, encoder="small-cnn"`` (see
    :data:`twinsight.config.OVERRIDES`). RUN receives ``model/`` (the bundle),
    ``metrics.csv``, ``metrics.json``, ``config.yaml``, ``training_curves.png``,
    ``pairs.png``, ``checkpoints/`` and ``logs/``. ``callbacks`` are extra Lightning
    callbacks. Returns the run (its folder, the trained bundle and the metrics).
    """
    cfg = resolve_config(config, **overrides)
    out = Path(out)
    # Under DDP every rank runs this (Lightning re-runs the command per device, srun starts
    # them all); rank 0 alone locks, checks and writes the run, the others only train.
    main = is_rank_zero()
    lock = output_lock(out) if main else contextlib.nullcontext()
    with lock:  # one writer per run: RUN and RUN.partial, from the check to the publishing
        return _train_locked(data, out, cfg, resume, overwrite, callbacks, main)


def _train_locked(
    data: Any,
    out: Path,
    cfg: TrainConfig,
    resume: bool,
    overwrite: bool,
    callbacks: Sequence[Any],
    main: bool,
) -> TrainResult:
    work = partial_dir(out)
    if main:  # the other ranks find RUN.partial made by rank 0: theirs is not to judge
        _check_run_paths(out, work, resume=resume, overwrite=overwrite)
    collection = data if isinstance(data, Collection) else open_collection(data)
    train_c, val_c, shape = split_with_info(collection, cfg)
    prep = prepare(cfg, train_c, val_c, validation=shape)
    fresh = not resume
    if main:
        _fresh_work_dir(work, fresh)
    try:
        if main:
            write_text_atomic(work / "config.yaml", config_to_yaml(cfg))
        bundle, metrics = fit(
            cfg,
            train_c,
            val=val_c,
            work_dir=work,
            resume=resume,
            callbacks=callbacks,
            prepared=prep,
        )
    except WriteRefusedError:  # a full disk: what was trained so far is worth keeping
        if main and _has_checkpoint(work):
            log.warning("%s", interrupted_advice(out))
        elif fresh and main:
            shutil.rmtree(work, ignore_errors=True)
        raise
    except TwinsightError:
        if fresh and main:
            shutil.rmtree(work, ignore_errors=True)
        raise
    except BaseException:
        if main:
            log.warning("%s", interrupted_advice(out))
        raise
    if not main:
        return TrainResult(out, bundle, metrics)
    # matching calibration: added by inference
    from twinsight.inference import calibrate_for_inference

    calibrate_for_inference(bundle, train_c, val_c)
    metrics = _published_paths(metrics, work, out)
    with disk_errors(work):
        _write_outputs(work, bundle, metrics, val_c, prep)
    _publish(work, out, overwrite=overwrite)
    log.info("run written to %s", out)
    return TrainResult(out, bundle, metrics)


def _fresh_work_dir(work: Path, fresh: bool) -> None:
    """Make RUN.partial; a fresh run starts it empty (--overwrite discards an interrupted one)."""
    if fresh and work.exists():
        shutil.rmtree(work)
    with disk_errors(work):
        work.mkdir(parents=True, exist_ok=True)


def _has_checkpoint(work: Path) -> bool:
    from twinsight.training.fitting import LAST_CHECKPOINT

    return (work / "checkpoints" / LAST_CHECKPOINT).is_file()


def interrupted_advice(out: str | os.PathLike) -> str:
    """What an interrupted training kept and how to go on, the same wherever it is said."""
    out = Path(out)
    work = partial_dir(out)
    if _has_checkpoint(work):
        return (
            f"training stopped; the run so far is kept in '{work}' (checkpoints/last.ckpt); "
            "continue it with --resume"
        )
    return (
        f"training stopped before its first checkpoint; nothing to resume in '{work}'; "
        "run the same command again (without --resume) to start over"
    )


def _published_paths(metrics: dict[str, Any], work: Path, out: Path) -> dict[str, Any]:
    """Metrics whose paths point into the published RUN rather than RUN.partial."""
    best = metrics.get("best_checkpoint")
    if best:
        try:
            relative = Path(best).resolve().relative_to(work.resolve())
        except ValueError:
            return metrics
        metrics = {**metrics, "best_checkpoint": str(out / relative)}
    return metrics


def _check_run_paths(out: Path, work: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise TwinsightError("--resume and --overwrite contradict each other; pass only one")
    if resume:
        if not work.exists():
            hint = f"'{out}' is a finished run" if out.exists() else f"'{out}' was never started"
            raise TwinsightError(
                f"--resume: there is no interrupted run '{work}' to continue ({hint}); "
                "start a new run without --resume"
            )
        if not _has_checkpoint(work):
            raise TwinsightError(
                f"--resume: the interrupted run '{work}' stopped before its first checkpoint, "
                "so there is nothing to continue; run the same command without --resume"
            )
        return
    if out.exists() and not overwrite:
        raise TwinsightError(
            f"output path '{out}' already exists; choose another --out or pass --overwrite"
        )
    if work.exists() and not overwrite and not _has_checkpoint(work):
        log.info("removing '%s': an interrupted run with no checkpoint to resume from", work)
        shutil.rmtree(work, ignore_errors=True)
    if work.exists() and not overwrite:
        raise TwinsightError(
            f"an interrupted run is in '{work}'; continue it with --resume, or start over "
            "with --overwrite"
        )


def _publish(work: Path, out: Path, *, overwrite: bool = False) -> None:
    """Rename the finished RUN.partial to RUN, under the run's lock.

    RUN is checked again now: it is replaced only when ``overwrite`` was given at the
    start; a RUN that appeared meanwhile is kept, and so is the finished RUN.partial.
    """
    if out.exists() and not overwrite:
        raise TwinsightError(
            f"'{out}' appeared while this run trained; it was kept, and this run is complete "
            f"in '{work}'; move one of them, or train again with --overwrite"
        )
    with disk_errors(out):
        replace_dir(work, out)


def _write_outputs(
    work: Path, bundle: ModelBundle, metrics: dict[str, Any], val: Collection, prep: Prepared
) -> None:
    bundle.save(work / "model", overwrite=True)
    if val.param_columns and val.has_systems:  # what instrument calibration fits on
        from twinsight.inference.instrumented import write_calibration_set

        write_calibration_set(val, work / "model")
    history = metrics["history"]
    write_text_atomic(work / "metrics.csv", pd.DataFrame(history).to_csv(index=False))
    write_json(work / "metrics.json", metrics)
    if history:
        plot_training_curves(history, work / "training_curves.png")
    pairs = ranked_validation_pairs(bundle, val, prep)
    if pairs is not None:
        plot_ranked_pairs(*pairs, work / "pairs.png")


def ranked_validation_pairs(
    bundle: ModelBundle, val: Collection, prep: Prepared, n_images: int = 256, n: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The top, middle and bottom validation pairs by predicted similarity (for the figure)."""
    rng = np.random.default_rng(prep.config.trainer.seed)
    pick = np.sort(rng.choice(len(val), size=min(n_images, len(val)), replace=False))
    if len(pick) < 3:
        return None
    images = val.images(pick)
    with torch.inference_mode():
        emb = bundle.encoder.eval()(torch.from_numpy(preprocess(images, prep.preprocessing)))
    i, j = torch.triu_indices(len(pick), len(pick), offset=1)
    predicted = (emb[i] * emb[j]).sum(1).float().numpy()
    y = torch.from_numpy(prep.y_val[pick])
    target = pair_targets(y[i], y[j], prep.spec).numpy()
    chosen = np.concatenate(list(select_ranked_pairs(predicted, n).values()))
    a, b = i.numpy()[chosen], j.numpy()[chosen]
    return images[a], images[b], predicted[chosen], target[chosen]
