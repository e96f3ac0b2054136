"""Figures, one function per figure (matplotlib's object API, no display needed).

Every function returns the :class:`matplotlib.figure.Figure` and, given a
``path``, also saves it atomically (PNG, PDF or SVG by the suffix). Other
modules add their figures at the end of this file.

Figures are built as ``Figure`` objects with an Agg canvas attached, never
through ``pyplot``: importing or using this module neither switches a
notebook's backend nor registers figures in pyplot's global list (so there is
nothing to close). Only the command line picks a backend (``twinsight.cli``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_file

#: Validation metrics drawn by :func:`plot_training_curves`, with their axis labels.
METRIC_LABELS = {
    "val_p_at_1": "validation precision@1",
    "val_map_at_r": "validation MAP@R",
    "val_spearman": "validation Spearman (pair similarity)",
}


def save_figure(fig: Figure, path: str | Path, *, overwrite: bool = True, dpi: int = 120) -> Path:
    """Save ``fig`` atomically to ``path`` (format from the suffix)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "pdf", "svg", "jpg", "jpeg"):
        raise TwinsightError(f"figure '{path}': unknown format '.{fmt}'; use .png, .pdf or .svg")
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def _figure(rows: int = 1, cols: int = 1, *, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A new figure with an Agg canvas and a rows x cols array of axes (pyplot-free).

    The Agg canvas renders PNGs without any backend being selected; the figure is
    not known to pyplot, so it is freed like any Python object.
    """
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _finish(fig: Figure, path: str | Path | None, overwrite: bool) -> Figure:
    if path is not None:
        save_figure(fig, path, overwrite=overwrite)
    return fig


def plot_training_curves(
    history: Sequence[Mapping[str, float]],
    path: str | Path | None = None,
    *,
    overwrite: bool = True,
) -> Figure:
    """Training loss (left) and the validation metrics (right) per epoch."""
    if not history:
        raise TwinsightError("no training history to plot (no epoch finished)")
    epochs = [int(r["epoch"]) + 1 for r in history]
    fig, axes = _figure(1, 2, figsize=(10, 3.8))
    ax_loss, ax_val = axes[0]
    ax_loss.plot(epochs, [r.get("train_loss", np.nan) for r in history], "o-", color="C0")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_loss.grid(alpha=0.3)
    for i, (key, label) in enumerate(METRIC_LABELS.items()):
        values = [r.get(key, np.nan) for r in history]
        if not np.all(np.isnan(np.asarray(values, dtype=float))):
            ax_val.plot(epochs, values, "o-", color=f"C{i + 1}", label=label)
    ax_val.set(xlabel="epoch", ylabel="score", title="validation")
    ax_val.grid(alpha=0.3)
    if ax_val.lines:
        ax_val.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _finish(fig, path, overwrite)


def select_ranked_pairs(predicted: np.ndarray, n: int = 8) -> dict[str, np.ndarray]:
    """Positions of the ``n`` top, middle and bottom pairs by predicted similarity."""
    predicted = np.asarray(predicted, dtype=float)
    order = np.argsort(-predicted, kind="stable")
    n = min(n, max(1, len(order) // 3))
    mid = max(0, len(order) // 2 - n // 2)
    return {"top": order[:n], "middle": order[mid : mid + n], "bottom": order[len(order) - n :]}


def _show(ax: Axes, image: np.ndarray) -> None:
    image = np.asarray(image, dtype=float)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    if image.ndim == 3:
        lo, hi = image.min(), image.max()
        image = (image - lo) / (hi - lo) if hi > lo else image * 0
        ax.imshow(image)
    else:
        ax.imshow(image, cmap="inferno" if image.min() >= 0 else "gray")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_ranked_pairs(
    images_a: np.ndarray,
    images_b: np.ndarray,
    predicted: np.ndarray,
    target: np.ndarray,
    path: str | Path | None = None,
    *,
    n: int = 8,
    overwrite: bool = True,
) -> Figure:
    """Seed 000's figure: the top, middle and bottom predicted pairs with their true similarity.

    ``images_a[k]``, ``images_b[k]`` ([C, H, W] or [H, W]) form candidate pair ``k`` with
    predicted similarity ``predicted[k]`` and target ``target[k]``; each pair is drawn as
    a column of two images titled ``pred / true``.
    """
    predicted = np.asarray(predicted, dtype=float)
    target = np.asarray(target, dtype=float)
    if not (len(images_a) == len(images_b) == len(predicted) == len(target)) or len(predicted) < 3:
        raise TwinsightError(
            f"ranked pairs: need >= 3 pairs with matching lengths, got {len(images_a)} / "
            f"{len(images_b)} images, {len(predicted)} predictions, {len(target)} targets"
        )
    groups = select_ranked_pairs(predicted, n)
    cols = max(len(v) for v in groups.values())
    fig, axes = _figure(6, cols, figsize=(1.6 * cols, 10.5))
    for g, (name, picks) in enumerate(groups.items()):
        for c in range(cols):
            top, bottom = axes[2 * g, c], axes[2 * g + 1, c]
            if c >= len(picks):
                top.axis("off")
                bottom.axis("off")
                continue
            k = picks[c]
            _show(top, images_a[k])
            _show(bottom, images_b[k])
            top.set_title(f"pred {predicted[k]:.2f}\ntrue {target[k]:.2f}", fontsize=8)
        axes[2 * g, 0].set_ylabel(name, fontsize=11, fontweight="bold")
    fig.suptitle("predicted vs true similarity: top, middle and bottom pairs")
    fig.tight_layout()
    return _finish(fig, path, overwrite)


def plot_recovery(
    names: Sequence[str],
    truth: np.ndarray,
    median: np.ndarray,
    scales: Sequence[str],
    path: str | Path | None = None,
    *,
    r2: Sequence[float] | None = None,
    overwrite: bool = True,
) -> Figure:
    """Parameter recovery: best-match median against the truth, one panel per parameter.

    ``truth`` and ``median`` are [Q, P] in each parameter's scale space (``log10``
    or ``linear``, as :func:`twinsight.evaluation.parameter_recovery` returns them);
    each panel shows the 1:1 line and its R^2 (``r2`` as reported elsewhere, else
    computed here the same way). Added by the demo engineer.
    """
    truth = np.asarray(truth, dtype=float)
    median = np.asarray(median, dtype=float)
    if truth.shape != median.shape or truth.ndim != 2 or truth.shape[1] != len(names):
        raise TwinsightError(
            f"recovery figure: truth {truth.shape} and median {median.shape} must both be "
            f"[queries, {len(names)} parameters]"
        )
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = _figure(rows, cols, figsize=(3.2 * cols, 3.0 * rows))
    flat = axes.ravel()
    for j, (ax, name) in enumerate(zip(flat, names, strict=False)):
        t, m = truth[:, j], median[:, j]
        ax.scatter(t, m, s=6, alpha=0.6, color="C0")
        lo, hi = np.nanmin([t.min(), m.min()]), np.nanmax([t.max(), m.max()])
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--")
        var = np.var(t)
        score = r2[j] if r2 is not None else (1 - np.mean((t - m) ** 2) / var if var else np.nan)
        unit = "log10 " if scales[j] in ("log", "log10") else ""
        ax.set_title(f"{name}  (R² {score:.2f})", fontsize=9)
        ax.set_xlabel(f"true {unit}{name}", fontsize=8)
        ax.set_ylabel(f"estimated {unit}{name}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in flat[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return _finish(fig, path, overwrite)


# -- search, matching and evaluation figures (added by the search engineer) -----------------------
def _show_image(ax: Axes, image: np.ndarray) -> None:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)
    lo, hi = np.nanmin(img), np.nanmax(img)
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    ax.imshow(img, cmap="inferno" if img.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_search_results(
    queries: Sequence[np.ndarray],
    matches: Sequence[np.ndarray],
    similarities: np.ndarray,
    captions: Sequence[Sequence[str]],
    path: str | Path | None = None,
    *,
    query_names: Sequence[str] | None = None,
    overwrite: bool = True,
) -> Figure:
    """Seed 004's figure: each query (left) beside its matches, titled with their similarity."""
    n_q = len(queries)
    k = max((len(m) for m in matches), default=0)
    fig, axes = _figure(n_q, k + 1, figsize=(1.8 * (k + 1), 2.3 * n_q))
    for q in range(n_q):
        _show_image(axes[q, 0], queries[q])
        name = query_names[q] if query_names else str(q)
        axes[q, 0].set_title(f"query\n{Path(name).name[:20]}", fontsize=8)
        for r in range(k):
            ax = axes[q, r + 1]
            if r < len(matches[q]):
                _show_image(ax, matches[q][r])
                ax.set_title(f"#{r + 1} {similarities[q][r]:.3f}\n{captions[q][r]}", fontsize=7)
            else:
                ax.axis("off")
    fig.tight_layout()
    return _finish(fig, path, overwrite)


def plot_parameter_matches(
    estimate: object, path: str | Path | None = None, *, best: int = 30, overwrite: bool = True
) -> Figure:
    """Seed 000's figure: per parameter, the matches' histogram against the prior (all
    simulations), the best ``best`` matches outlined, the median and 68 % band, the true
    value dashed when known. ``estimate`` is an :class:`twinsight.inference.ParameterEstimate`.
    """
    params = list(estimate.parameters.values())
    cols = min(4, len(params))
    rows = -(-len(params) // cols)
    fig, axes = _figure(rows, cols, figsize=(3.6 * cols, 2.8 * rows))
    flat = axes.ravel()
    for ax, p in zip(flat, params, strict=False):
        edges = p.histogram_edges
        # heights are fractions per bin (bins are log-spaced for log parameters)
        prior_w = np.full(len(p.prior_values), 1.0 / max(len(p.prior_values), 1))
        ax.hist(p.prior_values, bins=edges, weights=prior_w, color="0.78", label="all (prior)")
        ax.hist(
            p.values,
            bins=edges,
            weights=p.weights / p.weights.sum(),
            alpha=0.7,
            color="C0",
            label=f"best {len(p.values)}",
        )
        nb = min(best, len(p.values))
        ax.hist(
            p.values[:nb],
            bins=edges,
            weights=np.full(nb, 1.0 / max(len(p.values), 1)),
            histtype="step",
            lw=1.5,
            color="C1",
            label=f"best {nb}",
        )
        ax.axvline(p.median, color="C0", lw=1)
        ax.axvspan(*p.interval_68, color="C0", alpha=0.12)
        if p.truth is not None:
            ax.axvline(p.truth, color="k", ls="--", lw=1.2, label="true")
        if p.scale == "log":
            ax.set_xscale("log")
        unit = f" [{p.unit}]" if p.unit else ""
        ax.set_title(f"{p.name}{unit}  (narrowing {p.narrowing:.2f})", fontsize=9)
        ax.set_ylabel("fraction", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in flat[len(params) :]:
        ax.axis("off")
    flat[0].legend(fontsize=6)
    fig.tight_layout()
    return _finish(fig, path, overwrite)


def plot_coverage_calibration(
    curve: Mapping[str, object], path: str | Path | None = None, *, overwrite: bool = True
) -> Figure:
    """Expected vs observed coverage of the best-match intervals, one line per parameter.

    ``curve`` is evaluate's ``calibration_curve``: ``levels`` and ``observed`` {name: [...]}.
    """
    fig, axes = _figure(figsize=(4.5, 4.2))
    ax = axes[0, 0]
    levels = list(curve["levels"])
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="ideal")
    for name, observed in dict(curve["observed"]).items():
        ax.plot(levels, observed, marker="o", ms=3, lw=1, label=name)
    ax.set_xlabel("nominal interval level")
    ax.set_ylabel("observed coverage (held-out systems)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _finish(fig, path, overwrite)


# -- posterior diagnostics (TARP, SBC ranks) ------------------------------------------------------
def plot_tarp(
    diagnostics: Mapping[str, Any], path: str | Path | None = None, *, overwrite: bool = True
) -> Figure:
    """TARP's joint expected coverage (left) and the marginal expected coverage per parameter
    (right), both against the diagonal a calibrated posterior follows.

    ``diagnostics`` is evaluate's ``diagnostics`` (:mod:`twinsight.diagnostics`): ``tarp``
    (``alpha``, ``ecp``, ``atc``, ``ks_pvalue``) and ``coverage`` (``levels``,
    ``observed`` {name: [...]}, ``intervals``). A curve below the diagonal: too narrow.
    """
    tarp, cov = diagnostics["tarp"], diagnostics["coverage"]
    fig, axes = _figure(1, 2, figsize=(9, 4.2))
    ax_joint, ax_marg = axes[0]
    for ax in (ax_joint, ax_marg):
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
    ax_joint.plot(tarp["alpha"], tarp["ecp"], color="C0", lw=1.5, label="TARP")
    ax_joint.set(xlabel="credibility level", ylabel="expected coverage (joint)")
    ax_joint.set_title(f"TARP  ATC {tarp['atc']:+.3f}, KS p {tarp['ks_pvalue']:.2g}", fontsize=9)
    ax_joint.legend(fontsize=7, loc="upper left")
    for name, observed in dict(cov["observed"]).items():
        ax_marg.plot(cov["levels"], observed, marker="o", ms=3, lw=1, label=name)
    ax_marg.set(xlabel="nominal interval level", ylabel="observed coverage (marginal)")
    ax_marg.set_title(f"marginal coverage ({cov['intervals']} intervals)", fontsize=9)
    ax_marg.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _finish(fig, path, overwrite)


def plot_sbc_ranks(
    diagnostics: Mapping[str, Any], path: str | Path | None = None, *, overwrite: bool = True
) -> Figure:
    """SBC rank histograms, one panel per parameter, with the flat line of a calibrated
    posterior and its 99 % band for this many draws (systems; normal approximation).

    ``diagnostics`` is evaluate's ``diagnostics``: ``sbc`` {name: ``edges``, ``hist`` (share
    per bin), ``ks_pvalue``} and ``samples.draws``. A U shape: too narrow; a hump: too
    wide; a slope: biased.
    """
    sbc = dict(diagnostics["sbc"])
    if not sbc:
        raise TwinsightError("no SBC ranks to plot (no parameters)")
    draws = max(int(diagnostics.get("samples", {}).get("draws", 1)), 1)
    cols = min(4, len(sbc))
    rows = -(-len(sbc) // cols)
    fig, axes = _figure(rows, cols, figsize=(3.2 * cols, 2.8 * rows))
    flat = axes.ravel()
    for ax, (name, d) in zip(flat, sbc.items(), strict=False):
        edges, hist = np.asarray(d["edges"]), np.asarray(d["hist"])
        expected = 1.0 / len(hist)
        band = 2.576 * np.sqrt(expected * (1 - expected) / draws)
        ax.bar(edges[:-1], hist, width=np.diff(edges), align="edge", color="C0", alpha=0.7)
        ax.axhspan(max(expected - band, 0), expected + band, color="0.5", alpha=0.25, zorder=3,
                   label="99 % band")  # fmt: skip
        ax.axhline(expected, color="0.3", lw=1, ls="--", zorder=4)
        ax.set_title(f"{name}  (KS p {d['ks_pvalue']:.2g})", fontsize=9)
        ax.set_xlabel("normalized rank of the truth", fontsize=8)
        ax.set_ylabel("share of systems", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in flat[len(sbc) :]:
        ax.axis("off")
    flat[0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    return _finish(fig, path, overwrite)
