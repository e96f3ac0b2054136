"""What ``twinsight info`` shows: a JSON-ready summary of a collection."""

from __future__ import annotations

from typing import Any

import numpy as np

from twinsight.data.collection import Collection


def _sort_key(value: Any) -> tuple[int, Any]:
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def summarize_collection(collection: Collection, source: str | None = None) -> dict[str, Any]:
    """A JSON-ready summary: items, image shape, labels, parameter ranges, systems, splits."""
    items = collection.items
    labels = None
    if collection.has_labels:
        counts = items["label"].value_counts()
        labels = {str(k): int(counts[k]) for k in sorted(counts.index, key=_sort_key)}
    parameters = {}
    for column in collection.param_columns:
        values = items[column].to_numpy(dtype=np.float64)
        parameters[column] = {
            "min": float(np.min(values)),
            "median": float(np.median(values)),
            "max": float(np.max(values)),
        }
    n_systems = int(items["system"].nunique()) if "system" in items.columns else None
    n_projections = int(items["projection"].nunique()) if "projection" in items.columns else None
    splits = {}
    if "split" in items.columns:
        counts = items["split"].astype(str).value_counts()
        splits = {str(k): int(counts[k]) for k in sorted(counts.index)}
    return {
        "source": source if source is not None else collection.name,
        "n_items": len(collection),
        "image_shape": list(collection.image_shape),
        "dtype": "float32",
        "labels": labels,
        "parameters": parameters,
        "n_systems": n_systems,
        "n_projections": n_projections,
        "splits": splits,
    }
