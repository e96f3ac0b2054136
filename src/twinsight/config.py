"""Pydantic configuration of a training run: YAML in, validated, clear errors out.

One :class:`TrainConfig` holds every choice of ``twinsight train``, in sections
that mirror the data flow (``data`` -> ``encoder`` -> ``loss`` / ``sampler`` ->
``optim`` -> ``trainer``) plus ``runtime`` (where and how fast it runs: devices,
workers, precision). Every CLI option is one field here, and a YAML file may
set any of them. Unknown keys are errors (``extra="forbid"``) so that a
misspelt key never silently falls back to a default.

Everything except ``runtime`` enters :func:`config_hash`: a checkpoint made
under one configuration is refused when resuming under another, while moving
a run to other hardware (devices, workers, precision) stays allowed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from twinsight.errors import TwinsightError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """What the network learns from and how images reach it."""

    targets: Literal["auto", "labels", "params"] = Field(
        "auto", description="labels (same class) or params (parameter similarity); auto picks"
    )
    params: list[str] = Field(
        default_factory=list, description="parameter columns (default: all of the collection's)"
    )
    log10: list[str] | Literal["auto"] = Field(
        "auto",
        description="parameters normalized in log10; auto: the log-distributed positive ones",
    )
    param_norm: Literal["zscore", "minmax"] = Field(
        "zscore", description="how parameters are normalized before the kernel"
    )
    kernel: Literal["cosine", "rbf"] = Field(
        "cosine", description="target similarity of two normalized parameter vectors"
    )
    width: float = Field(1.0, gt=0, description="rbf kernel width (normalized units)")
    val_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="share held out for validation when there is no 'val' split; default: 5 "
        "%, and for parameters with multi-view systems 20 % of the systems (at most 300), "
        "which the interval calibration needs",
    )
    val_split: Literal["auto", "by-class", "within-class"] = Field(
        "auto",
        description="labels: validate on held-out whole classes (by-class: the question about "
        "new classes) or on held-out images of the training classes (within-class); auto: "
        "by-class with at least 6 classes, else within-class",
    )
    group_column: str | None = Field(
        None,
        description="params with one image per system: hold out whole groups of this column "
        "for validation (default: a block of parameter space)",
    )
    image_size: int | None = Field(None, ge=4, description="square input size (default: data)")
    channels: int | None = Field(None, ge=1, description="input channels (default: data)")
    normalize: Literal["minmax", "standardize", "none"] | None = Field(
        None, description="per-image normalization (default: the encoder's)"
    )
    augment: Literal["auto", "none", "affine", "photo", "instrument", "telescope"] = Field(
        "auto",
        description="training-batch augmentation: affine (random shifts/rotations; auto: on "
        "for labels), photo (affine, horizontal flips and colour jitter; auto: for RGB "
        "labels) or instrument (random beams, noise and sub-pixel shifts, so that "
        "observations match the simulations; auto: for parameters; telescope: old name)",
    )
    rotate: float = Field(12.0, ge=0, le=180, description="augmentation rotation, degrees")
    shift: float = Field(0.1, ge=0, le=0.5, description="augmentation shift, image fraction")
    scale: float = Field(0.1, ge=0, lt=1, description="augmentation zoom range (+/-)")
    beam: float = Field(
        4.0, ge=0, le=20, description="instrument augmentation: largest beam FWHM, pixels"
    )
    snr: float = Field(
        5.0, gt=0, description="instrument augmentation: lowest peak signal-to-noise ratio"
    )


class EncoderConfig(_Section):
    """The twin network (one registry: seed-cnn, small-cnn, resnet*, timm:<name>)."""

    name: str = Field("small-cnn", description="encoder: small-cnn, seed-cnn, resnet18, timm:NAME")
    embedding_dim: int = Field(128, ge=2, description="embedding dimension")
    weights: str | None = Field(None, description="local pretrained weights file for the encoder")
    options: dict[str, Any] = Field(default_factory=dict, description="encoder-specific options")


class LossConfig(_Section):
    """The loss on the B x B similarity matrix (contrastive, bce, triplet, mse, ...)."""

    name: str = Field(
        "auto",
        description="loss: multi-similarity, contrastive, bce, mse, triplet, ...; auto: "
        "multi-similarity for labels, mse for params",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="e.g. {margin: 0.5}")
    projection: Literal["auto", "mlp", "none"] = Field(
        "auto",
        description="a training-only head between the embedding and the loss (mlp: "
        "linear-ReLU-linear, as in SimCLR and SupCon), dropped from the saved model, so that "
        "the embedding keeps what tells new classes apart; auto: mlp for labels, none for "
        "params",
    )


class SamplerConfig(_Section):
    """How batches are drawn."""

    kind: Literal["auto", "random", "m-per-class", "m-per-system"] = Field(
        "auto", description="auto: m-per-class for labels, m-per-system with systems"
    )
    m: int | None = Field(
        None, ge=1, description="images per class/system in a batch (default: the smallest fit)"
    )


class OptimConfig(_Section):
    """AdamW and its learning-rate schedule."""

    lr: float | None = Field(
        None,
        gt=0,
        description="AdamW learning rate; default: 1e-3 for labels (behind the projection "
        "head), 3e-3 for params",
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    schedule: Literal["cosine", "plateau", "none"] = Field(
        "cosine", description="learning-rate schedule"
    )
    warmup_epochs: int = Field(1, ge=0, description="linear warm-up before cosine decay")
    plateau_patience: int = Field(2, ge=0)


class TrainerConfig(_Section):
    """The training loop."""

    epochs: int | None = Field(
        None,
        ge=1,
        description="maximum number of epochs; default: enough for about 1,200 optimizer "
        "steps, between 5 and 30",
    )
    batch_size: int = Field(128, ge=2, description="images per batch (B(B-1)/2 pairs)")
    seed: int = Field(0, description="random seed (reproducible CPU runs)")
    min_steps_per_epoch: int | None = Field(
        None,
        ge=0,
        description="fewest optimizer steps per epoch (batches drawn with replacement); "
        "default: 50 for labels and one-image-per-system tables, off for multi-view systems",
    )
    early_stopping: int = Field(
        10, ge=0, description="epochs without validation gain before stopping (0: off)"
    )
    max_val_pairs: int = Field(200_000, ge=100, description="pairs for the Spearman metric")


class RuntimeConfig(_Section):
    """Where and how fast it runs; not part of the configuration hash."""

    accelerator: str = Field("auto", description="auto, cpu, gpu, ... (Lightning)")
    devices: str = Field("auto", description="devices (Lightning): auto, 1, 4, '0,1'")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ...")
    num_nodes: int = Field(1, ge=1, description="number of nodes (Lightning)")
    precision: str = Field(
        "auto", description="auto, 32-true, 16-mixed, bf16-mixed; auto: 16-mixed on GPU, 32 on CPU"
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        description="data-loader workers for streamed data; default: min(4, CPUs - 1), at "
        "least 1 (data held in memory needs none)",
    )
    in_memory_gb: float = Field(2.0, ge=0, description="load the data in memory below this")
    deterministic: bool = Field(True, description="deterministic algorithms where cheap")
    progress: bool = Field(True, description="show progress")


class TrainConfig(_Section):
    """Every choice of a training run."""

    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator(
        "data", "encoder", "loss", "sampler", "optim", "trainer", "runtime", mode="before"
    )
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        return {} if value is None else value


#: Flat override names (CLI options and ``train(**overrides)``) -> (section, field).
OVERRIDES: dict[str, tuple[str, str]] = {
    "targets": ("data", "targets"),
    "params": ("data", "params"),
    "log10": ("data", "log10"),
    "param_norm": ("data", "param_norm"),
    "kernel": ("data", "kernel"),
    "width": ("data", "width"),
    "val_fraction": ("data", "val_fraction"),
    "val_split": ("data", "val_split"),
    "group_column": ("data", "group_column"),
    "image_size": ("data", "image_size"),
    "channels": ("data", "channels"),
    "normalize": ("data", "normalize"),
    "augment": ("data", "augment"),
    "beam": ("data", "beam"),
    "snr": ("data", "snr"),
    "encoder": ("encoder", "name"),
    "embedding_dim": ("encoder", "embedding_dim"),
    "weights": ("encoder", "weights"),
    "loss": ("loss", "name"),
    "margin": ("loss", "options.margin"),
    "projection": ("loss", "projection"),
    "sampler": ("sampler", "kind"),
    "m": ("sampler", "m"),
    "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"),
    "schedule": ("optim", "schedule"),
    "epochs": ("trainer", "epochs"),
    "batch_size": ("trainer", "batch_size"),
    "seed": ("trainer", "seed"),
    "early_stopping": ("trainer", "early_stopping"),
    "min_steps_per_epoch": ("trainer", "min_steps_per_epoch"),
    "accelerator": ("runtime", "accelerator"),
    "devices": ("runtime", "devices"),
    "strategy": ("runtime", "strategy"),
    "num_nodes": ("runtime", "num_nodes"),
    "precision": ("runtime", "precision"),
    "num_workers": ("runtime", "num_workers"),
    "progress": ("runtime", "progress"),
}


#: Overrides that are not a field of their own (they set a key of an options dict).
_OPTION_OVERRIDES: dict[str, tuple[type, str]] = {
    "margin": (float, "loss margin (contrastive, triplet)"),
}


@dataclass(frozen=True)
class OverrideField:
    """One flat training option: its name, Python type, default and help (from the config)."""

    name: str
    type: Any
    default: Any
    help: str


def override_fields() -> list[OverrideField]:
    """Every flat training option, described by its pydantic field (what the CLI is built from)."""
    defaults = TrainConfig()
    out = []
    for name, (section, path) in OVERRIDES.items():
        if name in _OPTION_OVERRIDES:
            kind, text = _OPTION_OVERRIDES[name]
            out.append(OverrideField(name, kind, None, text))
            continue
        info = type(getattr(defaults, section)).model_fields[path]
        default = getattr(getattr(defaults, section), path)
        out.append(OverrideField(name, info.annotation, default, info.description or name))
    return out


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'{_valid_keys_hint(err['loc'])}")
        else:
            parts.append(f"'{where}': {err['msg']} (got {err.get('input')!r})")
    return f"invalid training configuration in {source}: " + "; ".join(parts)


def _valid_keys_hint(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return f"; valid keys here: {', '.join(model.model_fields)}"


def validate_config(data: dict[str, Any] | None, source: str = "the configuration") -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested dict, or raise a TwinsightError naming keys."""
    if data is not None and not isinstance(data, dict):
        raise TwinsightError(
            f"{source}: expected a mapping of sections (data, encoder, loss, sampler, optim, "
            f"trainer, runtime), got {type(data).__name__}"
        )
    try:
        return TrainConfig.model_validate(data or {})
    except ValidationError as exc:
        raise TwinsightError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML configuration file; errors name the file and the line or key."""
    path = Path(path)
    if not path.is_file():
        raise TwinsightError(f"configuration file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TwinsightError(
            f"configuration file '{path}' is not valid YAML{where}: {problem}"
        ) from None
    return validate_config(data, source=f"'{path}'")


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of ``config`` with flat overrides (``epochs=3``, ``encoder="small-cnn"``) applied.

    ``None`` values are skipped, so CLI options left unset keep the file's values.
    A name may also be dotted (``"optim.lr"``) to reach any field.
    """
    data = config.model_dump(mode="json")
    for name, value in overrides.items():
        if value is None:
            continue
        section, field = _resolve_override(name)
        target = data.setdefault(section, {})
        *path, last = field.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return validate_config(data, source="the options")


def _resolve_override(name: str) -> tuple[str, str]:
    if name in OVERRIDES:
        return OVERRIDES[name]
    if "." in name:
        section, field = name.split(".", 1)
        return section, field
    raise TwinsightError(
        f"unknown training option '{name}'; valid options: {', '.join(sorted(OVERRIDES))} "
        "(or a dotted 'section.field')"
    )


def config_to_yaml(config: TrainConfig) -> str:
    """The configuration as YAML, loadable again with :func:`load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def hashed_part(config: TrainConfig) -> dict[str, Any]:
    """The fields that define a run's results (everything except ``runtime``)."""
    data = config.model_dump(mode="json")
    data.pop("runtime", None)
    return data


def config_hash(config: TrainConfig) -> str:
    """A short stable hash of :func:`hashed_part` (stored in checkpoints)."""
    text = json.dumps(hashed_part(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (used to name the fields that differ)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable ``field: old -> new`` lines for two hashed configuration dicts."""
    a, b = flatten(old), flatten(new)
    return [
        f"{key}: {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]
