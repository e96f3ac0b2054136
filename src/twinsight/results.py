"""Typed results of the façade (``twinsight.search``, ``compare``, ``evaluate``, ``fid`` ...).

Every result is a dataclass with ``to_dict()``, which is exactly what the
matching CLI command prints with ``--json``, and ``plot()`` where the command
draws a figure. The parameter estimate of ``twinsight.match`` is
:class:`twinsight.inference.ParameterEstimate`, which follows the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinsight.data.collection import Collection
from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_dir


def _format_value(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    return str(x)


def describe_item(items: pd.DataFrame, param_columns: list[str], position: int) -> str:
    """A short caption of one indexed item: its label, or its first parameters."""
    row = items.iloc[int(position)]
    if "label" in items.columns:
        return str(row["label"])
    return ", ".join(f"{c}={_format_value(row[c])}" for c in param_columns[:4])


@dataclass
class CollectionInfo:
    """What a collection holds (``twinsight info --json``): items, shape, labels, parameters."""

    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)


@dataclass
class SearchResult:
    """The top-k indexed items of each query: similarities, positions and their items rows."""

    query_names: list[str]
    similarities: np.ndarray  # [Q, k]
    positions: np.ndarray  # [Q, k], -1 where the index had fewer items
    items: pd.DataFrame = field(repr=False)
    param_columns: list[str]
    k_requested: int
    model_fingerprint: str
    source: str | None = None
    query_images: list[np.ndarray] = field(default_factory=list, repr=False)
    #: Per query, what the intake derived from an observation's file (None: taken as is).
    observations: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(self.similarities.shape[1])

    def matches(self, query: int) -> list[dict[str, Any]]:
        """The ranked matches of one query as JSON-able rows."""
        rows = []
        for r in range(self.k):
            p = int(self.positions[query, r])
            if p < 0:
                continue
            row = self.items.iloc[p]
            entry: dict[str, Any] = {
                "rank": r + 1,
                "key": str(row["key"]),
                "similarity": float(self.similarities[query, r]),
            }
            if "label" in self.items.columns:
                entry["label"] = str(row["label"])
            for c in self.param_columns:
                entry[c] = float(row[c])
            rows.append(entry)
        return rows

    def caption(self, query: int, rank: int) -> str:
        """Label or parameters of the match at ``rank`` (0-based) of ``query``."""
        return describe_item(self.items, self.param_columns, self.positions[query, rank])

    def to_dict(self) -> dict[str, Any]:
        return {
            "k_requested": self.k_requested,
            "k": self.k,
            "model_fingerprint": self.model_fingerprint,
            "results": [
                {"query": name, "matches": self.matches(q)}
                | ({"observation": self.observations[q]} if self._observed(q) else {})
                for q, name in enumerate(self.query_names)
            ],
        }

    def _observed(self, query: int) -> bool:
        return query < len(self.observations) and self.observations[query] is not None

    def plot(
        self,
        path: str | Path | None = None,
        *,
        overwrite: bool = True,
        query_names: list[str] | None = None,
        caption: str | None = None,
    ) -> Any:
        """Seed 004's figure: each query beside its matches (reads the indexed images).

        Matches are captioned with their label or parameters, or with the items column
        ``caption`` (e.g. ``"system"``); ``query_names`` replaces the queries' names.
        """
        from twinsight.plots import plot_search_results

        source = self._source_collection()
        keys = source.items["key"].astype(str)
        where = dict(zip(keys, range(len(keys)), strict=True))
        matches, captions = [], []
        for q in range(len(self.positions)):
            ranks = [r for r in range(self.k) if self.positions[q, r] >= 0]
            rows = [where.get(str(self.items["key"].iloc[self.positions[q, r]])) for r in ranks]
            if any(r is None for r in rows):
                raise TwinsightError(
                    f"plot: the index's source '{self.source}' no longer holds the indexed keys"
                )
            matches.append(source.images(np.array(rows, dtype=np.int64)) if rows else np.zeros(0))
            captions.append([self._caption(q, r, caption)[:24] for r in ranks])
        return plot_search_results(
            self.query_images,
            matches,
            self.similarities,
            captions,
            path,
            query_names=query_names or self.query_names,
            overwrite=overwrite,
        )

    def _caption(self, query: int, rank: int, column: str | None) -> str:
        if column is None:
            return self.caption(query, rank)
        return str(self.items[column].iloc[int(self.positions[query, rank])])

    def _source_collection(self) -> Collection:
        from twinsight.data.readers import open_collection

        if not self.source:
            raise TwinsightError("plot needs the indexed images, but the index records no source")
        try:
            return open_collection(self.source)
        except TwinsightError:
            raise TwinsightError(
                f"plot needs the indexed images, but the index's source '{self.source}' "
                "cannot be opened"
            ) from None


@dataclass
class Comparison:
    """Are two images the same? Cosine similarity, calibrated probability and the decision."""

    similarity: float
    probability: float | None = None
    threshold: float | None = None
    same: bool | None = None

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity": self.similarity,
            "probability": self.probability,
            "threshold": self.threshold,
            "same": self.same,
            "calibrated": self.calibrated,
        }


@dataclass
class Evaluation:
    """The metrics of a model on one split, and the arrays behind its figures."""

    metrics: dict[str, Any]
    collection: Collection = field(repr=False)
    split: str | None
    arrays: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.metrics)

    def evaluated(self) -> Collection:
        """The evaluated items (the split, or the whole collection when it has none)."""
        if self.split and "split" in self.collection.items.columns:
            return self.collection.split(self.split)
        return self.collection

    def plot(self, out: str | Path) -> list[Path]:
        """Write the figures into folder ``out``; returns their paths.

        ``coverage.png`` (expected vs observed coverage of the intervals), ``recovery.png``
        (median vs truth), ``tarp.png`` (TARP's joint and the marginal expected coverage),
        ``sbc.png`` (rank histograms of the truths) and ``pairs.png`` (top, middle and
        bottom predicted pairs), where the evaluation has what they need.
        """
        from twinsight.plots import (
            plot_coverage_calibration,
            plot_ranked_pairs,
            plot_recovery,
            plot_sbc_ranks,
            plot_tarp,
            select_ranked_pairs,
        )

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        if "calibration_curve" in self.metrics:
            written.append(out / "coverage.png")
            plot_coverage_calibration(self.metrics["calibration_curve"], written[-1])
        params = self.metrics.get("parameters") or {}
        if "recovery" in self.arrays and params:
            rec = self.arrays["recovery"]
            written.append(out / "recovery.png")
            plot_recovery(
                list(params),
                rec["truth"],
                rec["median"],
                [p.get("scale", "linear") for p in params.values()],
                written[-1],
                r2=[p["r2"] for p in params.values()],
            )
        if "diagnostics" in self.metrics:
            written.append(out / "tarp.png")
            plot_tarp(self.metrics["diagnostics"], written[-1])
            written.append(out / "sbc.png")
            plot_sbc_ranks(self.metrics["diagnostics"], written[-1])
        if "pairs" in self.arrays:
            i, j, predicted, target = self.arrays["pairs"]
            pick = np.unique(np.concatenate(list(select_ranked_pairs(predicted, 8).values())))
            held_out = self.evaluated()
            written.append(out / "pairs.png")
            plot_ranked_pairs(
                held_out.images(i[pick]),
                held_out.images(j[pick]),
                predicted[pick],
                target[pick],
                written[-1],
            )
        return written

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``metrics.json`` and the figures into a new folder ``out``, atomically."""
        from twinsight.io import dumps

        with atomic_dir(out, overwrite=overwrite) as tmp:
            (tmp / "metrics.json").write_text(dumps(self.to_dict()) + "\n")
            self.plot(tmp)
        return Path(out)


@dataclass
class FidResult:
    """Fréchet distance between two image sets in a model's embedding space."""

    fid: float
    n_a: int
    n_b: int
    dim: int
    regularized: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "fid": self.fid,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "dim": self.dim,
            "regularized": self.regularized,
        }


@dataclass
class TrainResult:
    """A finished training run: where it is and how it went (``twinsight train --json``)."""

    run: Path
    bundle: Any = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)

    @property
    def model(self) -> Path:
        return self.run / "model"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run),
            "model": str(self.model),
            "epochs_run": self.metrics["epochs_run"],
            "best_epoch": self.metrics["best_epoch"],
            "train_seconds": self.metrics["train_seconds"],
            "validation": self.metrics["final"],
        }
