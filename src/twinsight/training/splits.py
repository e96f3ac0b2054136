"""Training and validation sides of a collection: never one system on both sides."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from twinsight.config import TrainConfig
from twinsight.data.collection import Collection
from twinsight.errors import TwinsightError

log = logging.getLogger(__name__)

#: ``split`` values that mark validation rows.
VAL_SPLITS = ("val", "validation")


#: Fewest classes for which ``--val-split auto`` holds out whole classes.
MIN_CLASSES_BY_CLASS = 6


def split_train_val(collection: Collection, config: TrainConfig) -> tuple[Collection, Collection]:
    """Training and validation collections (see :func:`split_with_info`)."""
    train, val, _ = split_with_info(collection, config)
    return train, val


def split_with_info(
    collection: Collection, config: TrainConfig
) -> tuple[Collection, Collection, dict[str, Any]]:
    """Training and validation collections, and the validation set's shape.

    A ``split`` column is respected: ``train`` rows train, ``val``/``validation`` rows
    validate (other splits, e.g. ``test``, are left out). Without a validation split it is
    carved from the training rows (:func:`carve_validation`). The shape (``how``, images,
    classes, systems) is logged and goes into ``metrics.json``: validation should ask the
    question the user asks, and the shape says which one it asked.
    """
    pool = collection
    if "split" in collection.items.columns:
        split = collection.items["split"].astype(str).str.lower().to_numpy()
        val_mask = np.isin(split, VAL_SPLITS)
        train_mask = split == "train"
        if not train_mask.any():
            raise TwinsightError(
                f"collection '{collection.name}' has a 'split' column without 'train' rows "
                f"(splits: {collection.splits}); mark the training rows split=train"
            )
        if val_mask.any():
            train, val = collection.subset(train_mask), collection.subset(val_mask)
            return train, val, validation_shape(val, "the collection's 'val' split")
        pool = collection.subset(train_mask)
    train_idx, val_idx, how = carve_with_reason(pool, config)
    train, val = pool.subset(train_idx), pool.subset(val_idx)
    return train, val, validation_shape(val, how)


def validation_shape(val: Collection, how: str) -> dict[str, Any]:
    """How the validation set was made and its size: images, classes, systems (logged)."""
    items = val.items
    shape: dict[str, Any] = {"how": how, "images": len(val)}
    if val.has_labels:
        shape["classes"] = int(items["label"].astype(str).nunique())
    shape["systems"] = int(items["system"].astype(str).nunique()) if val.has_systems else len(val)
    log.info(
        "validation: %s; %d images%s, %d systems",
        how,
        shape["images"],
        f", {shape['classes']} classes" if "classes" in shape else "",
        shape["systems"],
    )
    return shape


#: The validation share when ``--val-fraction`` is not given.
DEFAULT_VAL_FRACTION = 0.05
#: Parameters with multi-view systems: the validation share of the systems, and its cap.
CALIBRATION_VAL_FRACTION = 0.2
CALIBRATION_VAL_SYSTEMS = 300


def calibration_val_fraction(n_systems: int) -> float:
    """The default validation share for parameter targets with multi-view systems.

    Why larger than 5 %: the validation systems are what the intervals are calibrated on
    (half choose the number of matches, half fit the inflation, for each instrument), and a
    conformal coverage fitted on n systems scatters by about sqrt(0.68 * 0.32 / n): 0.09
    for 25 systems, 0.045 for 100.
    """
    n_val = min(CALIBRATION_VAL_SYSTEMS, CALIBRATION_VAL_FRACTION * n_systems)
    return max(DEFAULT_VAL_FRACTION, n_val / max(1, n_systems))


def carve_validation(pool: Collection, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and validation rows carved from ``pool`` (seeded)."""
    train_idx, val_idx, _ = carve_with_reason(pool, config)
    return train_idx, val_idx


def carve_with_reason(pool: Collection, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and validation positions carved from ``pool``, and how they were chosen.

    Labels: whole held-out classes (``--val-split by-class``, the default with at least
    6 classes: the question a new class asks) or images of every class (within-class).
    Systems with several images: whole held-out systems. One image per system (or no
    system column) with parameter targets: whole groups of ``--group-column``, else a
    contiguous block of parameter space (the top of the first principal direction), so
    that validation asks about new parameter values, not neighbours of training images.
    """
    rng = np.random.default_rng(config.trainer.seed)
    n = len(pool)
    if n < 4:
        raise TwinsightError(
            f"collection '{pool.name}' has only {n} training images; at least 4 are needed"
        )
    labels = pool.has_labels and config.data.targets != "params"
    singletons = not pool.has_systems or pool.items["system"].astype(str).nunique() == n
    frac = config.data.val_fraction or DEFAULT_VAL_FRACTION
    if pool.has_systems and not singletons:
        if config.data.val_fraction is None and not labels:
            frac = calibration_val_fraction(pool.items["system"].astype(str).nunique())
        mask, how = _by_system(pool, frac, rng), "held-out systems"
    elif labels:
        mask, how = _labels_split(pool, config, rng)
    elif config.data.group_column:
        mask, how = _by_group(pool, config.data.group_column, frac, rng)
    elif pool.has_params:
        mask, how = _by_block(pool, config, frac)
    else:
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=max(1, round(frac * n)), replace=False)] = True
        how = "random images"
    return np.flatnonzero(~mask), np.flatnonzero(mask), how


def _labels_split(
    pool: Collection, config: TrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    mode = config.data.val_split
    n_classes = pool.items["label"].astype(str).nunique()
    if mode == "auto":
        mode = "by-class" if n_classes >= MIN_CLASSES_BY_CLASS else "within-class"
    if mode == "by-class":
        if n_classes < 4:
            raise TwinsightError(
                f"--val-split by-class: collection '{pool.name}' has {n_classes} classes; "
                "holding out whole classes needs at least 4 (use --val-split within-class)"
            )
        return _whole_classes(
            pool, config.data.val_fraction or DEFAULT_VAL_FRACTION, rng
        ), "held-out classes"
    return _by_class(
        pool, config.data.val_fraction or DEFAULT_VAL_FRACTION, rng
    ), "held-out images of every class"


def _whole_classes(pool: Collection, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Whole classes held out: ``frac`` of them, at least 2 (3 from 15 classes), 2 kept."""
    labels = pool.items["label"].astype(str).to_numpy()
    names = np.unique(labels)
    floor = 2 if len(names) < 15 else 3
    n_val = min(len(names) - 2, max(floor, round(frac * len(names))))
    return np.isin(labels, rng.choice(names, size=n_val, replace=False))


def _by_group(
    pool: Collection, column: str, frac: float, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    if column not in pool.items.columns:
        raise TwinsightError(
            f"--group-column '{column}': collection '{pool.name}' has no such column "
            f"(columns: {', '.join(map(str, pool.items.columns))})"
        )
    groups = pool.items[column].astype(str).to_numpy()
    names = np.unique(groups)
    if len(names) < 2:
        raise TwinsightError(
            f"--group-column '{column}' has a single value; at least 2 groups are needed"
        )
    n_val = min(len(names) - 1, max(1, round(frac * len(names))))
    mask = np.isin(groups, rng.choice(names, size=n_val, replace=False))
    return mask, f"held-out groups of '{column}' ({n_val} of {len(names)})"


def _by_block(pool: Collection, config: TrainConfig, frac: float) -> tuple[np.ndarray, str]:
    """The top ``frac`` of the first principal direction of the z-scored parameters."""
    columns = config.data.params or pool.param_columns
    values = pool.items[list(columns)].to_numpy(dtype=np.float64)
    sd = values.std(axis=0)
    z = (values - values.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    score = z @ vt[0]
    n_val = min(len(z) - 2, max(2, round(frac * len(z))))
    mask = np.zeros(len(z), dtype=bool)
    mask[np.argsort(score, kind="stable")[-n_val:]] = True
    return mask, "a block of parameter space (top of the first principal direction)"


def _by_system(pool: Collection, frac: float, rng: np.random.Generator) -> np.ndarray:
    groups = pool.items["system"].astype(str).to_numpy()
    names = np.unique(groups)
    if len(names) < 2:
        raise TwinsightError(
            f"collection '{pool.name}' has a single system; the validation set is made of "
            "held-out systems, so at least 2 are needed"
        )
    # at least 2 held-out systems when possible: pairs within one system all have target 1
    n_val = min(len(names) - 1, max(2 if len(names) >= 4 else 1, round(frac * len(names))))
    val_names = rng.choice(names, size=n_val, replace=False)
    return np.isin(groups, val_names)


def _by_class(pool: Collection, frac: float, rng: np.random.Generator) -> np.ndarray:
    labels = pool.items["label"].astype(str).to_numpy()
    val_mask = np.zeros(len(pool), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        # 2 per class when the class can spare them, so every query has a true neighbour
        k = max(2 if len(members) >= 6 else 1, int(round(frac * len(members))))
        if len(members) >= 2:
            val_mask[rng.choice(members, size=k, replace=False)] = True
    return val_mask
