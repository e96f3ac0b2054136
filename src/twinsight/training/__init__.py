"""Siamese training on every pair of a batch, with Lightning.

Each image of a batch goes through the encoder once; the B x B matrix of
cosine similarities ``S = E E^T`` (embeddings are unit-norm) is compared with
the B x B target matrix ``T`` (class equality, or the similarity of normalized
physical parameters) over all B(B-1)/2 off-diagonal pairs. That is the
seeds' Siamese network and loss, B times more pairs per forward pass.

One module per job:

- :mod:`.targets`: labels or parameters as targets (``--targets``, ``--log10``);
- :mod:`.splits`: the training and validation sides (whole systems per side);
- :mod:`.augment`: batch augmentations (affine, photo, instrument);
- :mod:`.data`: the dataset, the batch sampler and the loaders;
- :mod:`.metrics`: validation metrics (retrieval, pair Spearman);
- :mod:`.module`: the Lightning module and its schedule;
- :mod:`.calibration`: the score calibration of class-target models;
- :mod:`.preparation`: every check before any file is written (:func:`prepare`);
- :mod:`.fitting`: the trainer, checkpoints, resuming (:func:`fit`).

The names below are importable from ``twinsight.training`` and load their
module on first use, so that importing one light module (evaluation imports
:mod:`.metrics`) does not import Lightning.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports are the lazy exports, for type checkers)
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "TargetSpec": "targets",
    "auto_log10": "targets",
    "pair_targets": "targets",
    "resolve_targets": "targets",
    "target_arrays": "targets",
    "target_matrix": "targets",
    "VAL_SPLITS": "splits",
    "carve_validation": "splits",
    "split_train_val": "splits",
    "split_with_info": "splits",
    "validation_shape": "splits",
    "augment_choice": "augment",
    "random_affine": "augment",
    "random_photo": "augment",
    "random_instrument": "augment",
    "instrument_range": "augment",
    "BatchDataset": "data",
    "auto_m": "data",
    "build_sampler": "data",
    "loaders": "data",
    "pair_spearman": "metrics",
    "retrieval_metrics": "metrics",
    "validation_metrics": "metrics",
    "NAN_MESSAGE": "module",
    "SiameseModule": "module",
    "WarmupCosine": "module",
    "score_calibration": "calibration",
    "Prepared": "preparation",
    "build_encoder": "preparation",
    "check_input_size": "preparation",
    "data_fingerprint": "preparation",
    "default_loss": "preparation",
    "prepare": "preparation",
    "LAST_CHECKPOINT": "fitting",
    "build_trainer": "fitting",
    "check_resume": "fitting",
    "fit": "fitting",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from twinsight.training.augment import (
        augment_choice,
        instrument_range,
        random_affine,
        random_instrument,
        random_photo,
    )
    from twinsight.training.calibration import score_calibration
    from twinsight.training.data import BatchDataset, auto_m, build_sampler, loaders
    from twinsight.training.fitting import LAST_CHECKPOINT, build_trainer, check_resume, fit
    from twinsight.training.metrics import pair_spearman, retrieval_metrics, validation_metrics
    from twinsight.training.module import NAN_MESSAGE, SiameseModule, WarmupCosine
    from twinsight.training.preparation import (
        Prepared,
        build_encoder,
        check_input_size,
        data_fingerprint,
        default_loss,
        prepare,
    )
    from twinsight.training.splits import (
        VAL_SPLITS,
        carve_validation,
        split_train_val,
        split_with_info,
        validation_shape,
    )
    from twinsight.training.targets import (
        TargetSpec,
        auto_log10,
        pair_targets,
        resolve_targets,
        target_arrays,
        target_matrix,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
