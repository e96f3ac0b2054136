"""CLI command ``twinsight tune``: parse, call :func:`twinsight.api.tune`, print."""

from __future__ import annotations

from pathlib import Path

import typer

from twinsight.cli._app import app, console, print_json


@app.command()
def tune(
    data: str = typer.Argument(..., help="Images: a path or a built-in name (mnist5k, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Study folder to create (STUDY_DIR)."),
    trials: int | None = typer.Option(
        None, "--trials", "-n", help="Trials this process runs (default 20 without --timeout)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop after S seconds."),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna storage URL (default sqlite:///STUDY_DIR/study.db); "
        "journal:///path.log for a shared file system; postgresql://...",
    ),
    study_name: str = typer.Option("twinsight", "--study-name", help="Study to create or join."),
    space: Path | None = typer.Option(
        None, "--space", help="YAML search space overriding the default (dotted fields)."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Base YAML training configuration."
    ),
    metric: str = typer.Option("auto", "--metric", help="Validation metric (auto: val_score)."),
    pruner: str = typer.Option("asha", "--pruner", help="asha | hyperband | median | none."),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Epoch budget of each trial (default: the configuration's, else 8)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue or join STUDY_DIR's study."),
    retrain_best: bool = typer.Option(
        False, "--retrain-best", help="Train the best configuration into STUDY_DIR/best_run."
    ),
    on: str = typer.Option("train+val", "--on", help="Retrain on train+val or train."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed (give each worker its own)."),
    baseline: bool = typer.Option(
        True, "--baseline/--no-baseline", help="Run the base configuration as the first trial."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Search training hyperparameters with Optuna (pruning, shared storage for many workers)."""
    from twinsight.api import tune as tune_study

    result = tune_study(
        data,
        out,
        config,
        trials=trials,
        timeout=timeout,
        storage=storage,
        study_name=study_name,
        space=space,
        metric=metric,
        pruner=pruner,
        epochs=epochs,
        resume=resume,
        retrain_best=retrain_best,
        on=on,
        seed=seed,
        baseline=baseline,
        progress=not as_json,
    )
    summary = result.to_dict()
    if as_json:
        print_json(summary)
        return
    t, best = summary["trials"], summary["best"]
    score = "none" if best["value"] is None else f"{best['value']:.4f} (trial {best['trial']})"
    console.print(
        f"[green]study[/] {result.study_name}: {t['total']} trials ({t['complete']} done, "
        f"{t['pruned']} pruned, {t['failed']} failed); best {result.metric} {score}"
        + (f"; config {best['config']}" if best["config"] else "")
    )
