"""Training and validation sides of a collection: never one system on both sides."""

from __future__ import annotations

import numpy as np

from twinsight.config import TrainConfig
from twinsight.data.collection import Collection
from twinsight.errors import TwinsightError

#: ``split`` values that mark validation rows.
VAL_SPLITS = ("val", "validation")


def split_train_val(collection: Collection, config: TrainConfig) -> tuple[Collection, Collection]:
    """Training and validation collections.

    A ``split`` column is respected: ``train`` rows train, ``val``/``validation`` rows
    validate (other splits, e.g. ``test``, are left out). Without a validation split it is
    carved from the training rows: by system when there is a ``system`` column (never one
    system on both sides), stratified by class for labels, at random otherwise.
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
            return collection.subset(train_mask), collection.subset(val_mask)
        pool = collection.subset(train_mask)
    train_idx, val_idx = carve_validation(pool, config)
    return pool.subset(train_idx), pool.subset(val_idx)


def carve_validation(pool: Collection, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and validation rows carved from ``pool`` (seeded)."""
    rng = np.random.default_rng(config.trainer.seed)
    n = len(pool)
    if n < 4:
        raise TwinsightError(
            f"collection '{pool.name}' has only {n} training images; at least 4 are needed"
        )
    if pool.has_systems:
        val_mask = _by_system(pool, config.data.val_fraction, rng)
    elif pool.has_labels and config.data.targets != "params":
        val_mask = _by_class(pool, config.data.val_fraction, rng)
    else:
        val_mask = np.zeros(n, dtype=bool)
        size = max(1, round(config.data.val_fraction * n))
        val_mask[rng.choice(n, size=size, replace=False)] = True
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


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
