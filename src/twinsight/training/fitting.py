"""The training loop: a Lightning trainer, checkpoints, resuming, and the trained bundle.

:func:`fit` trains on a :class:`~twinsight.training.preparation.Prepared` run
(made by :func:`~twinsight.training.preparation.prepare` when not given): AdamW
with a cosine or plateau schedule, early stopping, the best and the last
checkpoint (``best.ckpt`` by ``val_score``, ``last.ckpt`` every epoch;
resumable, refused under another configuration or data), and returns a
:class:`~twinsight.models.bundle.ModelBundle` with the best weights plus the
per-epoch metrics.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from twinsight import __version__
from twinsight.config import TrainConfig, config_differences, config_hash, hashed_part
from twinsight.data.collection import Collection
from twinsight.data.transforms import preprocess
from twinsight.distributed import check_rank
from twinsight.errors import TwinsightError
from twinsight.models.bundle import ModelBundle
from twinsight.training.calibration import score_calibration
from twinsight.training.data import loaders, shards_validation, val_batch_size
from twinsight.training.module import SiameseModule
from twinsight.training.preparation import Prepared, prepare

LAST_CHECKPOINT = "last.ckpt"
METRICS_CSV = Path("logs") / "metrics.csv"


def _atomic_checkpoint_io() -> Any:
    """A CheckpointIO whose checkpoints are atomic on their own file system.

    Why: Lightning writes into a temporary file elsewhere and moves it into place, which
    across file systems is a copy into ``last.ckpt`` itself; a kill or a full disk then
    leaves a 0-byte ``last.ckpt`` and nothing to resume from. Here the bytes go to
    ``NAME.tmp-PID`` beside the target, are fsynced, then ``os.replace`` it: the previous
    checkpoint survives any kill. A stale ``.tmp-PID`` of a dead process is removed by the
    next save (:func:`twinsight.fsutil.clean_stale`).
    """
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(
            self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
        ) -> None:
            if storage_options is not None:
                raise TypeError("storage_options are not supported by AtomicCheckpointIO")
            save_checkpoint_atomic(checkpoint, Path(path))

    return AtomicCheckpointIO()


def save_checkpoint_atomic(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` through a fsynced temporary file beside it."""
    from twinsight.fsutil import clean_stale, disk_errors

    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _previous_metrics(work: Path) -> str | None:
    """The CSV logger's rows so far (read before a resumed fit, which rewrites the file)."""
    path = work / METRICS_CSV
    return path.read_text() if path.is_file() else None


def _merge_metrics(work: Path, previous: str | None) -> None:
    """Put the epochs logged before a resume back in front of the resumed run's rows."""
    import io

    import pandas as pd

    from twinsight.fsutil import write_text_atomic

    path = work / METRICS_CSV
    if not previous or not path.is_file():
        return
    old, new = pd.read_csv(io.StringIO(previous)), pd.read_csv(path)
    if "epoch" in old and "epoch" in new and new["epoch"].notna().any():
        old = old[old["epoch"] < new["epoch"].min()]
    write_text_atomic(path, pd.concat([old, new], ignore_index=True).to_csv(index=False))


def fit(
    config: TrainConfig,
    collection: Collection,
    *,
    val: Collection | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    prepared: Prepared | None = None,
) -> tuple[ModelBundle, dict[str, Any]]:
    """Train a Siamese encoder on ``collection``; returns the best model and the metrics.

    ``val`` is the validation collection (split off ``collection`` when None). Checkpoints
    (``best.ckpt``, ``last.ckpt``) and logs go to ``work_dir`` (a temporary folder when None);
    ``resume`` continues from ``work_dir/checkpoints/last.ckpt`` after checking that it was
    made under the same configuration and data.
    """
    prep = prepared or prepare(config, collection, val)
    with tempfile.TemporaryDirectory(prefix="twinsight-train-") as scratch:
        work = Path(work_dir) if work_dir is not None else Path(scratch)
        return _fit_prepared(prep, work, resume, callbacks)


def _fit_prepared(
    prep: Prepared, work: Path, resume: bool, callbacks: Sequence[pl.Callback]
) -> tuple[ModelBundle, dict[str, Any]]:
    cfg = prep.config
    ckpt_dir = work / "checkpoints"
    hparams = {
        "config": hashed_part(cfg),
        "config_hash": config_hash(cfg),
        "encoder_config": {"name": prep.encoder_name, **prep.encoder_config},
        "targets": {k: v for k, v in prep.targets_dict.items() if k != "normalizer"},
        "data_fingerprint": prep.fingerprint,
        "loss_name": prep.loss_name,
    }
    ckpt_path = check_resume(ckpt_dir / LAST_CHECKPOINT, hparams) if resume else None
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    module = SiameseModule(**hparams)
    trainer, checkpoint = build_trainer(cfg, work, callbacks, len(prep.sampler))
    check_rank(trainer.global_rank, "train")
    train_loader, val_loader = loaders(prep, trainer)
    module.train_batches = train_loader.batch_sampler
    module.gather_validation = shards_validation(
        len(prep.val), val_batch_size(cfg), trainer.world_size
    )
    previous = _previous_metrics(work) if resume else None
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    if trainer.global_rank != 0:  # rank 0 loads the best weights, measures them and writes
        return _rank_result(prep, module, trainer, seconds)
    _merge_metrics(work, previous)
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best_path and best_path.is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    return _finish(prep, module, trainer, seconds, best_path)


def check_resume(path: Path, hparams: dict[str, Any]) -> Path:
    """The checkpoint to resume from, refused when made under another configuration or data."""
    if not path.is_file():
        raise TwinsightError(
            f"--resume: there is no checkpoint '{path}' to continue from; start without --resume"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise TwinsightError(
            f"--resume: checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); it may "
            "be truncated or not a twinsight checkpoint; start over with --overwrite"
        ) from None
    old = ckpt.get("hyper_parameters", {})
    if old.get("config_hash") != hparams["config_hash"]:
        diffs = config_differences(old.get("config", {}), hparams["config"])
        raise TwinsightError(
            f"--resume: checkpoint '{path}' was made with another configuration ("
            + "; ".join(diffs[:12] or ["unknown differences"])
            + "); resume with the same options, or start over with --overwrite"
        )
    if old.get("data_fingerprint") != hparams["data_fingerprint"]:
        raise TwinsightError(
            f"--resume: checkpoint '{path}' was trained on other data (or another train/"
            "validation split); resume with the same data, or start over with --overwrite"
        )
    return path


def _devices(value: str) -> Any:
    value = str(value).strip()
    if value.isdigit() or (value.startswith("-") and value[1:].isdigit()):
        return int(value)
    return value


def build_trainer(
    cfg: TrainConfig, work: Path, callbacks: Sequence[pl.Callback], n_batches: int
) -> tuple[pl.Trainer, pl.callbacks.ModelCheckpoint]:
    """The Lightning trainer (precision, devices, loggers) and its best-checkpoint callback."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    rt = cfg.runtime
    gpu = rt.accelerator in ("gpu", "cuda") or (
        rt.accelerator == "auto" and torch.cuda.is_available()
    )
    precision = rt.precision if rt.precision != "auto" else ("16-mixed" if gpu else "32-true")
    checkpoint = ModelCheckpoint(
        dirpath=work / "checkpoints",
        filename="best",
        monitor="val_score",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # Lightning 2.6 writes save_last only when the best improves; resuming needs the latest
    # epoch, so a second callback without a monitor rewrites last.ckpt after every epoch.
    last = ModelCheckpoint(
        dirpath=work / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    cbs: list[pl.Callback] = [checkpoint, last, *callbacks]
    if cfg.trainer.early_stopping > 0:
        cbs.append(
            EarlyStopping(
                "val_score", mode="max", patience=cfg.trainer.early_stopping, check_finite=False
            )
        )
    if rt.progress:
        cbs.append(RichProgressBar(leave=False, console_kwargs={"stderr": True}))
    loggers = [
        CSVLogger(work, name="", version="logs"),
        TensorBoardLogger(work, name="", version="tensorboard", default_hp_metric=False),
    ]
    trainer = pl.Trainer(
        max_epochs=cfg.trainer.epochs,
        accelerator=rt.accelerator,
        devices=_devices(rt.devices),
        strategy=rt.strategy,
        num_nodes=rt.num_nodes,
        precision=precision,
        deterministic=bool(rt.deterministic and not gpu),
        callbacks=cbs,
        logger=loggers,
        enable_progress_bar=rt.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=max(1, min(50, n_batches)),
        default_root_dir=work,
        plugins=[_atomic_checkpoint_io()],
    )
    return trainer, checkpoint


def _finish(
    prep: Prepared,
    module: SiameseModule,
    trainer: pl.Trainer,
    seconds: float,
    best_path: Path | None,
) -> tuple[ModelBundle, dict[str, Any]]:
    encoder = module.encoder.cpu().eval()
    emb, y = _embed_validation(encoder, prep)
    final = module.validation_metrics(emb, y)
    metrics = _run_metrics(prep, module, trainer, seconds, best_path, final)
    calibration = score_calibration(module.loss_fn, emb, y, prep.spec)
    return _bundle(prep, encoder, calibration, metrics), metrics


def _rank_result(
    prep: Prepared, module: SiameseModule, trainer: pl.Trainer, seconds: float
) -> tuple[ModelBundle, dict[str, Any]]:
    """What a rank other than 0 returns: its last weights and the epochs' history, unmeasured.

    Why not the best weights: rank 0 reads best.ckpt and then publishes the run folder it
    is in; this rank's result is not written anywhere, and only rank 0 measures.
    """
    metrics = _run_metrics(prep, module, trainer, seconds, None, {})
    return _bundle(prep, module.encoder.cpu().eval(), None, metrics), metrics


def _run_metrics(
    prep: Prepared,
    module: SiameseModule,
    trainer: pl.Trainer,
    seconds: float,
    best_path: Path | None,
    final: dict[str, float],
) -> dict[str, Any]:
    history = sorted(module.history, key=lambda r: r["epoch"])
    best = max(history, key=lambda r: r.get("val_score", -1.0)) if history else {}
    return {
        "history": history,
        "best_epoch": best.get("epoch"),
        "epochs_run": int(trainer.current_epoch),
        "stopped_early": bool(trainer.current_epoch < prep.config.trainer.epochs),
        "train_seconds": round(seconds, 2),
        "train_images": len(prep.train),
        "val_images": len(prep.val),
        "world_size": int(trainer.world_size),
        "validation": dict(prep.validation),
        "final": {k: float(v) for k, v in final.items()},
        "best_checkpoint": str(best_path) if best_path else None,
    }


def _bundle(
    prep: Prepared,
    encoder: nn.Module,
    calibration: dict[str, float] | None,
    metrics: dict[str, Any],
) -> ModelBundle:
    return ModelBundle(
        encoder=encoder,
        encoder_name=prep.encoder_name,
        encoder_config=prep.encoder_config,
        preprocessing=prep.preprocessing,
        targets=prep.targets_dict,
        calibration=calibration,
        matching=None,
        training={
            "config": prep.config.model_dump(mode="json"),
            "config_hash": config_hash(prep.config),
            "data_fingerprint": prep.fingerprint,
            "loss": prep.loss_name,
            "metrics": metrics["final"],
            "best_epoch": metrics["best_epoch"],
            "twinsight_version": __version__,
            "pixel_scale_au": _pixel_scale_au(prep.train.meta),
        },
        instrument_range=_trained_instruments(prep),
    )


def _trained_instruments(prep: Prepared) -> dict[str, float] | None:
    """The instrument range training showed the library through (None: no such augmentation)."""
    from twinsight.training.augment import augment_choice, instrument_range

    channels = int(prep.encoder_config.get("in_channels", 1))
    if augment_choice(prep.config, prep.spec.kind, channels) != "instrument":
        return None
    return instrument_range(prep.config).to_dict()


def _pixel_scale_au(meta: dict[str, Any]) -> float | None:
    """The training images' AU per pixel, when their collection says (simulated sets do)."""
    value = (meta.get("simulator") or {}).get("pixel_scale_au", meta.get("pixel_scale_au"))
    return float(value) if isinstance(value, int | float) and value > 0 else None


@torch.inference_mode()
def _embed_validation(encoder: nn.Module, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for _, x in prep.val.iter_batches(512):
        out.append(encoder(torch.from_numpy(preprocess(x, prep.preprocessing))).float())
    return torch.cat(out), torch.from_numpy(prep.y_val)
