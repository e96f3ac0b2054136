"""Hyperparameter search with Optuna: a search space over TrainConfig, pruning, shared storage.

Why Optuna and not Ray Tune: independent ``twinsight tune`` processes that share one
storage (an SQLite file, a journal file on a shared file system, a PostgreSQL server)
work on one study with no head node, no ports and no daemon, which is what a SLURM
array needs. Each trial is a real training run (the ``train`` callable, normally
:func:`twinsight.api.train`); its validation score is reported every epoch, so a
pruner (successive halving, Hyperband, median) can stop poor trials early.

The search space maps dotted TrainConfig fields to a range, a list of choices or a
fixed value; a sampled point is turned into a TrainConfig by the same validation as
``train --config``, so a field that does not exist is refused by pydantic, with the
valid keys named.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import yaml

from twinsight.config import (
    OVERRIDES,
    TrainConfig,
    apply_overrides,
    config_differences,
    config_to_yaml,
    validate_config,
)
from twinsight.data.collection import Collection
from twinsight.errors import TwinsightError
from twinsight.fsutil import write_text_atomic

log = logging.getLogger(__name__)

#: Keys a search-space entry may have.
SPEC_KEYS = ("low", "high", "log", "step", "choices", "value", "when")
PRUNERS = ("asha", "hyperband", "median", "none")
#: Figures written into STUDY_DIR (name -> file).
FIGURES = {
    "history": "optimization_history.png",
    "importances": "param_importances.png",
    "intermediate": "intermediate_values.png",
}

# -- the search space -------------------------------------------------------------------------

_LR = {"low": 1e-4, "high": 1e-2, "log": True}
_WD = {"low": 1e-6, "high": 1e-2, "log": True}

#: Labels: encoder width and depth, embedding, AdamW, batch, loss and its option.
LABELS_SPACE: dict[str, dict[str, Any]] = {
    "encoder.options.channels": {"choices": [[16, 32], [32, 64], [32, 64, 128]]},
    "encoder.embedding_dim": {"choices": [32, 64, 128]},
    "optim.lr": _LR,
    "optim.weight_decay": _WD,
    "trainer.batch_size": {"choices": [64, 128, 256]},
    "loss.name": {"choices": ["multi-similarity", "contrastive", "triplet", "ntxent"]},
    "loss.options.margin": {
        "low": 0.1,
        "high": 1.0,
        "when": {"loss.name": ["contrastive", "triplet"]},
    },
    "loss.options.temperature": {
        "low": 0.03,
        "high": 0.3,
        "log": True,
        "when": {"loss.name": ["ntxent"]},
    },
}

#: Parameters: seed 000's search (conv channels, FC width, kernel size, embedding, AdamW,
#: batch, loss and margin) plus the target kernel and its width.
PARAMS_SPACE: dict[str, dict[str, Any]] = {
    "encoder.name": {"value": "seed-cnn"},
    "encoder.options.channels": {"choices": [[8, 16, 32], [16, 32, 64], [16, 32, 64, 128]]},
    "encoder.options.hidden": {"choices": [128, 256, 512, 1024]},
    "encoder.options.kernel_size": {"choices": [3, 5]},
    "encoder.embedding_dim": {"choices": [16, 32, 64, 128]},
    "optim.lr": _LR,
    "optim.weight_decay": _WD,
    "trainer.batch_size": {"choices": [32, 64, 128]},
    "loss.name": {"choices": ["mse", "contrastive", "bce"]},
    "loss.options.margin": {"low": 0.1, "high": 1.0, "when": {"loss.name": ["contrastive"]}},
    "data.kernel": {"choices": ["cosine", "rbf"]},
    "data.width": {"low": 0.3, "high": 3.0, "log": True, "when": {"data.kernel": ["rbf"]}},
}


def default_space(kind: str) -> dict[str, dict[str, Any]]:
    """The default search space for ``labels`` or ``params`` targets (a deep copy)."""
    if kind not in ("labels", "params"):
        raise TwinsightError(f"no default search space for targets '{kind}'; use labels or params")
    return json.loads(json.dumps(LABELS_SPACE if kind == "labels" else PARAMS_SPACE))


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a YAML search space (``field: {low, high, log, step} | {choices} | {value}``)."""
    path = Path(path)
    if not path.is_file():
        raise TwinsightError(f"search space file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TwinsightError(f"search space file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise TwinsightError(
            f"search space file '{path}': expected a mapping of fields to ranges, e.g. "
            "'optim.lr: {low: 1e-4, high: 1e-2, log: true}'"
        )
    return data


def canonical_name(name: str) -> str:
    """``lr`` -> ``optim.lr``: flat override names become dotted field names."""
    if name in OVERRIDES:
        section, path = OVERRIDES[name]
        return f"{section}.{path}"
    return name


def check_space(
    space: dict[str, Any], base: TrainConfig, source: str = "the search space"
) -> dict[str, dict[str, Any]]:
    """The space with canonical names, or a TwinsightError naming the bad entry.

    Every value an entry can take (both ends of a range, every choice) is applied to
    ``base`` through the same pydantic validation as ``train --config``, so an unknown
    field or a value out of its field's bounds is refused before any trial runs.
    """
    out: dict[str, dict[str, Any]] = {}
    for raw, spec in space.items():
        name = canonical_name(str(raw))
        if not isinstance(spec, dict):
            spec = {"value": spec}
        _check_spec(name, spec, source)
        for value in _candidates(spec):
            _apply(base, name, value, source)
        out[name] = spec
    for name, spec in out.items():
        for other in spec.get("when") or {}:
            if canonical_name(other) not in out:
                raise TwinsightError(
                    f"{source}: '{name}' depends on '{other}', which is not in the space"
                )
    return out


def _check_spec(name: str, spec: dict[str, Any], source: str) -> None:
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise TwinsightError(
            f"{source}: '{name}' has unknown key(s) {unknown}; valid keys: {', '.join(SPEC_KEYS)}"
        )
    kinds = [k for k in ("choices", "value", "low") if k in spec]
    if len(kinds) != 1 or ("low" in spec) != ("high" in spec):
        raise TwinsightError(
            f"{source}: '{name}' needs exactly one of {{low, high}}, {{choices}} or {{value}}"
        )
    if "choices" in spec and not (isinstance(spec["choices"], list) and spec["choices"]):
        raise TwinsightError(f"{source}: '{name}' has an empty list of choices; give at least one")
    if "low" in spec:
        _check_range(name, spec, source)


def _check_range(name: str, spec: dict[str, Any], source: str) -> None:
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise TwinsightError(
            f"{source}: '{name}' low and high must be numbers, got {low!r}, {high!r}"
        )
    if not low < high:
        raise TwinsightError(
            f"{source}: '{name}' has an empty range (low {low} >= high {high}); "
            "make low < high, or pin it with {value: ...}"
        )
    if spec.get("log") and low <= 0:
        raise TwinsightError(
            f"{source}: '{name}' is on a log scale, so low must be > 0 (got {low})"
        )


def _candidates(spec: dict[str, Any]) -> list[Any]:
    if "value" in spec:
        return [spec["value"]]
    if "choices" in spec:
        return list(spec["choices"])
    return [spec["low"], spec["high"]]


def _apply(base: TrainConfig, name: str, value: Any, source: str) -> TrainConfig:
    """``base`` with one dotted field set; errors name the field and the valid keys."""
    if "." not in name:
        raise TwinsightError(
            f"{source}: unknown field '{name}'; use a dotted TrainConfig field such as "
            f"'optim.lr' (sections: {', '.join(TrainConfig.model_fields)}) or a flat option "
            f"({', '.join(sorted(OVERRIDES))})"
        )
    _check_option_key(base, name, source)
    try:
        return apply_overrides(base, {name: value})
    except TwinsightError as exc:
        raise TwinsightError(f"{source}: '{name}' = {value!r}: {exc}") from None


def _check_option_key(base: TrainConfig, name: str, source: str) -> None:
    """``encoder.options.X`` / ``loss.options.X``: X must be an option of some registered
    encoder / loss (the space may switch encoder or loss, so the union is the test; the
    builder refuses an option its encoder lacks when the trial runs, recorded FAIL)."""
    from twinsight.losses import list_losses, loss_options
    from twinsight.models.encoders import encoder_defaults, list_encoders

    parts = name.split(".")
    if len(parts) != 3 or parts[1] != "options" or parts[0] not in ("encoder", "loss"):
        return
    if parts[0] == "encoder" and base.encoder.name.startswith("timm:"):
        return  # a timm model's keyword arguments are timm's to check
    if parts[0] == "encoder":
        valid = {
            k
            for n in list_encoders()
            if not n.startswith("timm")
            for k in _safe(encoder_defaults, n)
        }
    else:
        valid = {k for n in list_losses() for k in _safe(loss_options, n)}
    if parts[2] not in valid:
        raise TwinsightError(
            f"{source}: unknown field '{name}'; valid {parts[0]} options: "
            + ", ".join(sorted(valid))
        )


def _safe(fn: Callable[[str], dict[str, Any]], name: str) -> dict[str, Any]:
    try:
        return fn(name)
    except Exception:  # an encoder whose options cannot be listed constrains nothing
        return {}


def sample_config(
    trial: optuna.Trial, base: TrainConfig, space: dict[str, dict[str, Any]]
) -> TrainConfig:
    """The TrainConfig of one trial: each entry of ``space`` suggested, then validated."""
    point: dict[str, Any] = {}
    for name, spec in space.items():
        when = spec.get("when") or {}
        if any(point.get(canonical_name(k), _MISSING) not in v for k, v in when.items()):
            continue
        point[name] = _suggest(trial, name, spec)
    cfg = base
    for name, value in point.items():
        cfg = _apply(cfg, name, value, f"trial {trial.number}")
    return cfg


_MISSING = object()


def _encode(choice: Any) -> Any:
    """Optuna's categorical values are scalars: lists (conv channels) travel as JSON text."""
    return json.dumps(choice) if isinstance(choice, list | dict) else choice


def baseline_point(
    base: TrainConfig, space: dict[str, dict[str, Any]], kind: str
) -> dict[str, Any]:
    """The base configuration's own values, as Optuna parameters (for ``enqueue_trial``).

    Run first, it is the "defaults" trial that the search has to beat in the same study.
    Fields whose base value is outside the space are left for the sampler.
    """
    point: dict[str, Any] = {}
    for name, spec in space.items():
        if "value" in spec:
            continue
        value = _base_value(base, name, kind)
        if "choices" in spec and value in spec["choices"]:
            point[name] = _encode(value)
        elif (
            "low" in spec
            and isinstance(value, int | float)
            and spec["low"] <= value <= spec["high"]
        ):
            point[name] = value
    return point


def _base_value(base: TrainConfig, name: str, kind: str) -> Any:
    from twinsight.losses import loss_options
    from twinsight.models.encoders import encoder_defaults
    from twinsight.training.module import learning_rate
    from twinsight.training.preparation import default_loss

    section, *path = name.split(".")
    if name == "loss.name":
        return default_loss(base, kind)
    if name == "optim.lr":
        return learning_rate(base, kind)  # None in the config: the target kind's default
    value: Any = base.model_dump(mode="json").get(section, {})
    for part in path:
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
    if value is not _MISSING:
        return value
    if path[:1] == ["options"] and len(path) == 2:
        owner = (
            _safe(encoder_defaults, base.encoder.name)
            if section == "encoder"
            else _safe(loss_options, default_loss(base, kind))
        )
        return owner.get(path[1])
    return None


def _suggest(trial: optuna.Trial, name: str, spec: dict[str, Any]) -> Any:
    if "value" in spec:
        return spec["value"]
    if "choices" in spec:
        # Optuna's categorical values are scalars: lists (conv channels) travel as JSON text
        decode = {_encode(c): c for c in spec["choices"]}
        return decode[trial.suggest_categorical(name, list(decode))]
    low, high, step, use_log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log"))
    if all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int)):
        return trial.suggest_int(name, low, high, step=step or 1, log=use_log)
    return trial.suggest_float(name, float(low), float(high), step=step, log=use_log)


# -- pruning ----------------------------------------------------------------------------------


class PruningCallback(pl.Callback):
    """Reports the validation ``metric`` to the trial after each epoch; stops pruned trials.

    Our own small callback rather than ``optuna_integration``'s: it needs no extra
    package and works with Lightning 2.x. It reports in ``on_validation_end``, after the
    module has logged the epoch's metrics, and raises :class:`optuna.TrialPruned`.
    """

    def __init__(self, trial: optuna.Trial, metric: str = "val_score") -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.reported = 0
        self.pruned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        epochs_done = int(trainer.current_epoch) + 1  # the resource the pruners count
        self.trial.report(value if math.isfinite(value) else -1.0, step=epochs_done)
        self.reported += 1
        if epochs_done < int(trainer.max_epochs or 0) and self.trial.should_prune():
            self.pruned = True
            message = (
                f"pruned after epoch {epochs_done}/{trainer.max_epochs}: {self.metric} {value:.4f}"
            )
            log.info("trial %d %s", self.trial.number, message)
            raise optuna.TrialPruned(message)


#: Epochs of each trial when neither ``--epochs`` nor the configuration says: a study
#: compares configurations at one short, equal budget, so that a 10-minute study on two
#: cores runs tens of trials instead of a few full-length ones (README, "Tuning").
TRIAL_EPOCHS = 8


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """asha (successive halving), hyperband, median, or none (never prune)."""
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TwinsightError(f"unknown pruner '{name}'; valid: {', '.join(PRUNERS)}")


# -- storage and study ------------------------------------------------------------------------


def storage_url(storage: str | None, study_dir: Path) -> str:
    """The storage URL: ``sqlite:///STUDY_DIR/study.db`` unless one is given."""
    return storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: ``journal:///path.log`` is a journal file (for shared
    file systems, no server); anything else an RDB URL (sqlite, postgresql, mysql).
    A storage that cannot be opened is one line naming it."""
    try:
        if url.startswith("journal://"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal://") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _rdb_storage(url)
    except Exception as exc:  # sqlalchemy, driver and OS errors alike: the URL is the news
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TwinsightError(
            f"cannot open the study storage '{redact(url)}': {reason}; check the URL and that "
            "the server is running"
        ) from None


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An RDB storage; retried when workers started together race to create the schema
    (PostgreSQL refuses the second ``CREATE TABLE`` with a unique violation)."""
    import random
    import time

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random())  # noqa: S311 - jitter, not security
    raise AssertionError("unreachable")


def redact(url: str) -> str:
    """The URL without its password (``postgresql://u:***@host/db``)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    signature: dict[str, Any],
    seed: int,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create or join study ``name``; a study made with another search space is refused."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
        pruner=pruner,
        load_if_exists=True,
    )
    stored = study.user_attrs.get("signature")
    if stored is None:
        study.set_user_attr("signature", signature)
    elif stored != json.loads(json.dumps(signature)):
        diffs = config_differences(stored, json.loads(json.dumps(signature)))
        raise TwinsightError(
            f"study '{name}' exists with another search space ({'; '.join(diffs)}); "
            "use another --study-name or the same --space"
        )
    return study


# -- the objective ----------------------------------------------------------------------------

TrainFn = Callable[..., Any]


@dataclass
class Objective:
    """One trial: sample a config, train it into ``trials/NNNN``, return its best score."""

    train: TrainFn
    collection: Collection
    base: TrainConfig
    space: dict[str, dict[str, Any]]
    trials_dir: Path
    metric: str = "val_score"
    keep_runs: bool = False

    def __call__(self, trial: optuna.Trial) -> float:
        out = self.trials_dir / f"{trial.number:04d}"
        try:
            cfg = sample_config(trial, self.base, self.space)
            trial.set_user_attr("config", cfg.model_dump(mode="json"))
            callback = PruningCallback(trial, self.metric)
            quiet = _QuietPruned(callback)
            logging.getLogger("twinsight.api").addFilter(quiet)
            try:
                quiet_cfg = apply_overrides(cfg, {"runtime.progress": False})  # one bar: trials
                result = self.train(
                    self.collection, out, quiet_cfg, overwrite=True, callbacks=[callback]
                )
            finally:
                logging.getLogger("twinsight.api").removeFilter(quiet)
                trial.set_user_attr("epochs_reported", callback.reported)
            return self._score(trial, result.metrics)
        except optuna.TrialPruned:
            raise
        except (TwinsightError, ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            trial.set_user_attr("error", reason)
            log.warning("trial %d failed: %s", trial.number, reason)
            raise TrialFailed(reason) from None
        finally:
            self._tidy(out)

    def _score(self, trial: optuna.Trial, metrics: dict[str, Any]) -> float:
        values = [r.get(self.metric) for r in metrics.get("history", [])]
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not values:
            raise TwinsightError(f"trial {trial.number}: no finite '{self.metric}' was logged")
        trial.set_user_attr("best_epoch", metrics.get("best_epoch"))
        trial.set_user_attr("epochs_run", len(metrics.get("history", [])))
        return max(values)

    def _tidy(self, out: Path) -> None:
        """Trials keep their metrics and config, not their checkpoints (disk stays small)."""
        for leftover in (out.with_name(out.name + ".partial"), out / "checkpoints"):
            shutil.rmtree(leftover, ignore_errors=True)
        if not self.keep_runs:
            shutil.rmtree(out / "model", ignore_errors=True)


class _QuietPruned(logging.Filter):
    """Drops train's "continue it with --resume" warning for a trial the pruner stopped."""

    def __init__(self, callback: PruningCallback) -> None:
        super().__init__()
        self.callback = callback

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.callback.pruned and "training stopped" in record.getMessage())


class TrialFailed(TwinsightError):
    """A trial that could not train (NaN loss, unbuildable config): recorded FAIL, study goes on."""


def resolve_metric(metric: str) -> str:
    """``auto`` is ``val_score`` (MAP@R for labels, Spearman for parameters)."""
    return "val_score" if metric in ("auto", "", None) else metric


# -- the result -------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """A study's outcome: counts, the best trial, and the files written into STUDY_DIR."""

    study_dir: Path
    study_name: str
    storage: str
    metric: str
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    best_config: Path | None
    trials_csv: Path
    figures: dict[str, Path] = field(default_factory=dict)
    best_run: Path | None = None
    best_run_score: float | None = None
    study: optuna.Study | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what ``twinsight tune --json`` prints)."""
        return {
            "study_dir": str(self.study_dir),
            "study_name": self.study_name,
            "storage": redact(self.storage),
            "metric": self.metric,
            "trials": {
                "total": self.n_trials,
                "complete": self.n_complete,
                "pruned": self.n_pruned,
                "failed": self.n_failed,
            },
            "best": {
                "value": self.best_value,
                "trial": self.best_trial,
                "params": self.best_params,
                "config": str(self.best_config) if self.best_config else None,
            },
            "trials_csv": str(self.trials_csv),
            "figures": {k: str(v) for k, v in self.figures.items()},
            "best_run": str(self.best_run) if self.best_run else None,
            "best_run_score": self.best_run_score,
        }

    def plot(self, out_dir: str | Path | None = None) -> dict[str, Path]:
        """Draw the study's figures into ``out_dir`` (default STUDY_DIR); returns the paths."""
        if self.study is None:
            raise TwinsightError("this TuneResult has no study attached; run twinsight.tune again")
        return write_figures(self.study, Path(out_dir or self.study_dir))


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state: total, complete, pruned, failed."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    S = optuna.trial.TrialState
    return {
        "total": len(states),
        "complete": states.count(S.COMPLETE),
        "pruned": states.count(S.PRUNED),
        "failed": states.count(S.FAIL),
    }


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial (pruned and failed trials never count), or None."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def final_config(trial: optuna.trial.FrozenTrial, final_epochs: int | None) -> TrainConfig:
    """The best trial's configuration for a full training: its searched values, and the
    base configuration's epochs (``None``: the planned default) in place of the trials'
    short budget, unless the epochs were searched.

    Why: trials are cut short so that a study compares many configurations (ASHA's
    budget); the kept configuration is then trained to the length a plain ``train`` would
    use. Measured on mnist5k (README, "Tuning"): the best trial's configuration at its
    8-epoch budget fell below the defaults on the test digits.
    """
    cfg = validate_config(trial.user_attrs["config"], source=f"trial {trial.number}")
    if "trainer.epochs" in trial.params:
        return cfg
    trainer = cfg.trainer.model_copy(update={"epochs": final_epochs})
    return cfg.model_copy(update={"trainer": trainer})


def write_outputs(
    study: optuna.Study, study_dir: Path, final_epochs: int | None = None
) -> tuple[Path | None, Path]:
    """``best.yaml`` (a config ``twinsight train --config`` takes, see :func:`final_config`)
    and ``trials.csv``."""
    best = best_trial(study)
    best_path = None
    if best is not None and "config" in best.user_attrs:
        cfg = final_config(best, final_epochs)
        epochs = best.user_attrs["config"].get("trainer", {}).get("epochs")
        header = (
            f"# twinsight tune: trial {best.number} ({study.study_name}), {epochs} epochs per "
            "trial;\n# trainer.epochs below is the full run's (null: planned, as `train` does)\n"
        )
        best_path = write_text_atomic(study_dir / "best.yaml", header + config_to_yaml(cfg))
    frame = study.trials_dataframe()
    csv = write_text_atomic(study_dir / "trials.csv", frame.to_csv(index=False))
    return best_path, csv


def write_figures(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """Optimization history, parameter importances (>= 2 complete trials), intermediate
    values (pruned trials visible), drawn by ``optuna.visualization.matplotlib``."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    n_complete = counts(study)["complete"]
    draw: dict[str, Callable[[optuna.Study], Any]] = {"history": ovm.plot_optimization_history}
    if n_complete >= 2 and study.best_params:
        draw["importances"] = ovm.plot_param_importances
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        draw["intermediate"] = ovm.plot_intermediate_values
    paths: dict[str, Path] = {}
    for key, fn in draw.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib API experimental
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of a constant space
                log.warning("figure %s skipped: %s", key, exc)
                continue
        fig = ax.figure
        fig.tight_layout()
        fig.savefig(out_dir / FIGURES[key], dpi=110)
        plt.close(fig)
        paths[key] = out_dir / FIGURES[key]
    return paths


def merge_val_into_train(collection: Collection) -> Collection:
    """The collection with its ``val`` rows relabelled ``train`` (for the final retraining)."""
    if "split" not in collection.items.columns:
        return collection
    items = collection.items.copy()
    split = items["split"].astype(str).str.lower()
    items.loc[split.isin(("val", "validation")), "split"] = "train"
    return Collection(
        items,
        collection._loader,  # noqa: SLF001 - the same images, relabelled rows
        collection.image_shape,
        name=collection.name,
        param_columns=collection.param_columns,
        rows=collection._rows,  # noqa: SLF001
        meta=collection.meta,
    )


# -- running ----------------------------------------------------------------------------------


class TrialProgress:
    """A rich progress bar of this process's trials on stderr: done / pruned / failed, best."""

    def __init__(self, total: int | None, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total = total
        self.seen = {"done": 0, "pruned": 0, "failed": 0}
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> TrialProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}" if self.total else "{task.completed}"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("trials", total=self.total, status="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        S = optuna.trial.TrialState
        key = {S.COMPLETE: "done", S.PRUNED: "pruned", S.FAIL: "failed"}.get(trial.state)
        if key:
            self.seen[key] += 1
        best = best_trial(study)
        status = (
            f"done {self.seen['done']} / pruned {self.seen['pruned']} / failed "
            f"{self.seen['failed']}" + (f", best {best.value:.4f} (#{best.number})" if best else "")
        )
        log.info("trial %d %s; %s", trial.number, trial.state.name.lower(), status)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=status)


def run_study(
    study: optuna.Study,
    objective: Objective,
    *,
    n_trials: int | None,
    timeout: float | None,
    progress: bool = True,
) -> None:
    """Run trials until ``n_trials`` (this process's) or ``timeout`` seconds; a failed trial
    is recorded FAIL with its reason and the study goes on."""
    with TrialProgress(n_trials, enabled=progress) as bar:
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=timeout,
            catch=(TwinsightError,),
            callbacks=[bar],
            gc_after_trial=True,
        )
