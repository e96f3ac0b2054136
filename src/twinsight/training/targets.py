"""What a training run learns: labels or parameters, resolved against the collection.

:func:`resolve_targets` turns the configuration (``--targets``, ``--params``,
``--log10``, ``--kernel``) into a :class:`~twinsight.data.targets.TargetSpec`,
checking that the collection has what it names; :func:`target_arrays` gives
the per-image targets (class codes, or parameters normalized with statistics
of the training split). The kernel that turns them into pair targets is
:mod:`twinsight.data.targets`'s, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from twinsight.config import TrainConfig
from twinsight.data.collection import Collection
from twinsight.data.params import ParameterNormalizer
from twinsight.data.targets import TargetSpec, is_log_scaled, pair_targets, target_matrix
from twinsight.errors import TwinsightError

__all__ = [
    "TargetSpec",
    "auto_log10",
    "pair_targets",
    "resolve_targets",
    "target_arrays",
    "target_matrix",
]


def resolve_targets(config: TrainConfig, collection: Collection) -> TargetSpec:
    """Pick labels or parameters as targets, checking the collection has them."""
    data = config.data
    kind = data.targets
    if kind == "auto":
        kind = _auto_kind(config, collection)
    if kind == "labels":
        if not collection.has_labels:
            raise TwinsightError(
                f"--targets labels: collection '{collection.name}' has no 'label' column"
                + (
                    f" (it has parameters {collection.param_columns}: use --targets params)"
                    if collection.has_params
                    else ""
                )
            )
        return TargetSpec("labels")
    columns = tuple(data.params or collection.param_columns)
    if not columns:
        raise TwinsightError(
            f"--targets params: collection '{collection.name}' has no parameter columns; "
            "name them with --params a,b,c"
        )
    log10 = [] if data.log10 == "auto" else list(data.log10)
    missing = [c for c in (*columns, *log10) if c not in collection.items.columns]
    if missing:
        raise TwinsightError(
            f"parameter column(s) {missing} are not in collection '{collection.name}'; "
            f"available parameters: {collection.param_columns}"
        )
    if data.log10 == "auto":
        log10 = auto_log10(collection, columns)
    stray = [c for c in log10 if c not in columns]
    if stray:
        raise TwinsightError(f"--log10 names {stray}, which are not among --params {list(columns)}")
    return TargetSpec("params", columns, tuple(log10), data.kernel, float(data.width))


def _auto_kind(config: TrainConfig, collection: Collection) -> str:
    if config.data.params or (collection.has_params and not collection.has_labels):
        return "params"
    if collection.has_labels:
        return "labels"
    raise TwinsightError(
        f"collection '{collection.name}' has neither a 'label' column nor parameter "
        "columns, so there is nothing to learn similarity from; add labels (a folder "
        "per class or a 'label' column) or parameter columns"
    )


def auto_log10(collection: Collection, columns: Sequence[str]) -> list[str]:
    """The parameters to normalize in log10 (``--log10 auto``): the log-scaled ones.

    Physical parameters such as accretion rate or luminosity are spread over orders of
    magnitude; z-scored raw values would let a few extreme systems dominate the targets.
    The rule is :func:`twinsight.data.targets.is_log_scaled`, the one inference uses for
    its quantiles, so training and inference agree on a parameter's scale.
    """
    chosen = []
    for column in columns:
        values = pd.to_numeric(collection.items[column], errors="coerce").to_numpy(float)
        if is_log_scaled(values):
            chosen.append(column)
    return chosen


def target_arrays(
    spec: TargetSpec, train: Collection, val: Collection, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Per-image targets of the training and validation sides, and the normalizer (or None).

    Labels become int64 codes shared by both sides; parameters are normalized with
    statistics fitted on the training side only.
    """
    if spec.kind == "labels":
        labels = pd.concat([train.items["label"], val.items["label"]]).astype(str)
        codes = pd.factorize(labels)[0].astype(np.int64)
        return codes[: len(train)], codes[len(train) :], None
    normalizer = ParameterNormalizer.fit(
        train.items, list(spec.columns), log10=spec.log10, method=config.data.param_norm
    )
    y_train = np.asarray(normalizer.transform(train.items), dtype=np.float32)
    y_val = np.asarray(normalizer.transform(val.items), dtype=np.float32)
    for name, y in (("training", y_train), ("validation", y_val)):
        bad = ~np.isfinite(y).all(axis=0)
        if bad.any():
            cols = [c for c, b in zip(spec.columns, bad, strict=True) if b]
            raise TwinsightError(
                f"parameter column(s) {cols} have NaN/infinite (or non-positive under --log10) "
                f"values in the {name} rows of '{train.name}'; fix or drop those rows"
            )
    return y_train, y_val, normalizer
