"""CLI command ``twinsight train``: thin wrapper over :func:`twinsight.api.train`.

Every option is a field of :class:`twinsight.config.TrainConfig`; options left
unset keep the value of ``--config FILE`` (or the default).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from twinsight.cli._app import app, console, print_json
from twinsight.errors import TwinsightError


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _log10_option(value: str | None) -> list[str] | str | None:
    if value is None or value.strip().lower() == "auto":
        return value and "auto"
    if value.strip().lower() == "none":
        return []
    return _split_list(value)


@app.command()
def train(
    data: str = typer.Argument(None, help="Images: a path or a built-in name (mnist5k, ...)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder to create."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML configuration file."),
    encoder: str = typer.Option(None, help="Encoder: small-cnn, seed-cnn, resnet18, timm:NAME."),
    embedding_dim: int = typer.Option(None, help="Embedding dimension [default: 128]."),
    weights: str = typer.Option(None, help="Local pretrained weights file for the encoder."),
    loss: str = typer.Option(None, help="Loss: multi-similarity, contrastive, bce, mse, ..."),
    margin: float = typer.Option(None, help="Loss margin (contrastive, triplet)."),
    targets: str = typer.Option(None, help="labels | params | auto [default: auto]."),
    params: str = typer.Option(None, help="Parameter columns, comma-separated."),
    log10: str = typer.Option(
        None, help="Parameters normalized in log10 (a,b | auto | none) [default: auto]."
    ),
    param_norm: str = typer.Option(None, help="zscore | minmax [default: zscore]."),
    kernel: str = typer.Option(None, help="Parameter similarity kernel: rbf | cosine."),
    width: float = typer.Option(None, help="rbf kernel width."),
    sampler: str = typer.Option(None, help="auto | random | m-per-class | m-per-system."),
    m: int = typer.Option(None, "--m", help="Images per class/system in a batch."),
    epochs: int = typer.Option(None, help="Maximum number of epochs."),
    batch_size: int = typer.Option(None, help="Images per batch (B(B-1)/2 pairs)."),
    lr: float = typer.Option(None, help="AdamW learning rate."),
    weight_decay: float = typer.Option(None, help="AdamW weight decay."),
    schedule: str = typer.Option(None, help="cosine | plateau | none."),
    early_stopping: int = typer.Option(None, help="Patience in epochs (0: off)."),
    val_fraction: float = typer.Option(None, help="Held out for validation without a val split."),
    image_size: int = typer.Option(None, help="Resize images to this square size."),
    channels: int = typer.Option(None, help="Input channels (1 or 3)."),
    normalize: str = typer.Option(None, help="minmax | standardize | none."),
    augment: str = typer.Option(None, help="auto | affine | telescope | none."),
    beam: float = typer.Option(None, help="Telescope augmentation: largest beam FWHM, pixels."),
    snr: float = typer.Option(None, help="Telescope augmentation: lowest peak SNR."),
    seed: int = typer.Option(None, help="Random seed (reproducible CPU runs)."),
    accelerator: str = typer.Option(None, help="auto | cpu | gpu | ... (Lightning)."),
    devices: str = typer.Option(None, help="Devices (Lightning): auto, 1, 4, '0,1'."),
    strategy: str = typer.Option(None, help="Lightning strategy: auto, ddp, ..."),
    num_nodes: int = typer.Option(None, help="Number of nodes (Lightning)."),
    precision: str = typer.Option(None, help="auto | 32-true | 16-mixed | bf16-mixed."),
    num_workers: int = typer.Option(None, help="Data-loader workers (on-disk data)."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Show progress."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the effective configuration as YAML and exit."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a Siamese similarity model on every pair of each batch."""
    from twinsight.api import resolve_config
    from twinsight.api import train as api_train
    from twinsight.config import config_to_yaml

    overrides = dict(
        encoder=encoder, embedding_dim=embedding_dim, weights=weights, loss=loss, margin=margin,
        targets=targets, params=_split_list(params), log10=_log10_option(log10),
        param_norm=param_norm, kernel=kernel, width=width, sampler=sampler, m=m, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
        early_stopping=early_stopping, val_fraction=val_fraction, image_size=image_size,
        channels=channels, normalize=normalize, augment=augment, beam=beam, snr=snr, seed=seed,
        accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
        precision=precision, num_workers=num_workers, progress=progress,
    )  # fmt: skip
    cfg = resolve_config(config, **overrides)
    if print_config:
        typer.echo(config_to_yaml(cfg), nl=False)
        return
    if data is None or out is None:
        raise TwinsightError(
            "train needs DATA and --out RUN (e.g. twinsight train mnist5k --out runs/mnist)"
        )
    api_train(data, out, cfg, resume=resume, overwrite=overwrite)
    metrics = json.loads((out / "metrics.json").read_text())
    summary = {
        "run": str(out),
        "model": str(out / "model"),
        "epochs_run": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "train_seconds": metrics["train_seconds"],
        "validation": metrics["final"],
    }
    if as_json:
        print_json(summary)
        return
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics["final"].items())
    console.print(
        f"[green]trained[/] {out / 'model'} in {metrics['train_seconds']:.0f} s, "
        f"{metrics['epochs_run']} epochs (best {metrics['best_epoch']}): {scores}"
    )
