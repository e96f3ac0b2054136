"""CLI commands: index, index-merge, search, compare, match, evaluate, fid.

Each command parses its options, calls one function of the façade
(:mod:`twinsight.api`) and prints its result: a rich table, or ``--json``
(the result's ``to_dict()``).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from twinsight.cli._app import app, console, err_console, print_json

# -- observation intake options (search, compare, match) ---------------------------------------
DISTANCE = typer.Option(
    None, help="Distance of the source in pc (with the FITS WCS: the pixel scale in AU)."
)
PIXEL_SCALE = typer.Option(
    None, help="Pixel scale of the observation in AU/pixel (instead of WCS + --distance)."
)
BEAM = typer.Option(
    None, help="Beam FWHM when the header has none: 0.1arcsec, 14au or 2px (number: arcsec)."
)
NOISE = typer.Option(
    None, help="Noise sigma in image units (default: header NOISE/RMS, else estimated)."
)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _warn_if_clamped(option: str, value: int | None, n: int) -> None:
    if value is not None and value > n:
        err_console.print(
            f"[yellow]{option} {value} is larger than the index ({n} items); using {n}[/]"
        )


# -- index ----------------------------------------------------------------------------------------
@app.command("index")
def index_cmd(
    run: str = typer.Argument(..., help="Trained model folder (from `twinsight train`)."),
    data: str = typer.Argument(..., help="Collection to index (path or built-in name)."),
    out: str = typer.Option(..., "--out", "-o", help="Index folder to write."),
    index_type: str = typer.Option(
        "Flat", help="Flat (exact), auto, or a FAISS factory string (HNSW32, IVF1024,Flat)."
    ),
    batch_size: int = typer.Option(256, help="Images per embedding batch."),
    shard: str | None = typer.Option(
        None, help="Index shard i/n of DATA only (1-based: 1/4 .. 4/4)."
    ),
    nprobe: int | None = typer.Option(None, help="IVF lists probed per query (default 32)."),
    ef_search: int | None = typer.Option(None, help="HNSW search depth (default 64)."),
    device: str = typer.Option("auto", help="Where the encoder runs: auto, cpu, cuda, cuda:1."),
    devices: int = typer.Option(
        1, min=1, help="Processes that embed (one per GPU; on cpu, N processes); rank 0 writes."
    ),
    precision: str = typer.Option(
        "auto", help="auto (fp16 autocast on a GPU, fp32 on CPU), fp32, fp16, bf16."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the index description as JSON."),
) -> None:
    """Embed a collection with a trained model and write a FAISS index folder."""
    import contextlib

    from twinsight.api import build_index
    from twinsight.distributed import is_rank_zero
    from twinsight.fsutil import check_output_path, output_lock

    main = is_rank_zero()  # with --devices N the other ranks only embed their share
    with output_lock(out) if main else contextlib.nullcontext():  # one writer per index folder
        if main:
            check_output_path(out, overwrite)
        index = build_index(
            run, data, index_type=index_type, batch_size=batch_size, shard=shard, nprobe=nprobe,
            ef_search=ef_search, progress=main and not as_json, device=device,
            precision=precision, devices=devices,
        )  # fmt: skip
        if index is None:
            return
        index.save(out, overwrite=overwrite)
    if as_json:
        print_json(index.to_dict() | {"path": str(out)})
        return
    console.print(
        f"indexed {len(index)} items of '{index.meta.get('source')}' "
        f"({index.meta['index_type']}, d={index.dim}) -> {out}"
    )


@app.command("index-merge")
def index_merge_cmd(
    shards: list[str] = typer.Argument(..., help="Index shard folders (from `index --shard`)."),
    out: str = typer.Option(..., "--out", "-o", help="Merged index folder to write."),
    index_type: str | None = typer.Option(
        None, help="Index type of the result (default: the shards')."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the index description as JSON."),
) -> None:
    """Join index shards built with the same model into one index."""
    from twinsight.api import merge_indexes
    from twinsight.fsutil import check_output_path, output_lock

    with output_lock(out):
        check_output_path(out, overwrite)
        merged = merge_indexes(shards, index_type=index_type)
        merged.save(out, overwrite=overwrite)
    if as_json:
        print_json(merged.to_dict() | {"path": str(out)})
        return
    console.print(f"merged {len(shards)} shards: {len(merged)} items -> {out}")


# -- search ---------------------------------------------------------------------------------------
@app.command("search")
def search_cmd(
    index_dir: str = typer.Argument(..., metavar="IDX", help="Index folder."),
    images: list[str] = typer.Argument(
        ..., metavar="IMAGE...", help="Query image files (any image, FITS)."
    ),
    k: int = typer.Option(10, "-k", help="Number of matches per query."),
    model: str | None = typer.Option(None, help="Model folder (default: the index's own)."),
    nprobe: int | None = typer.Option(None, help="IVF lists probed (approximate indexes)."),
    ef_search: int | None = typer.Option(None, help="HNSW search depth (approximate indexes)."),
    distance: float | None = DISTANCE,
    pixel_scale: float | None = PIXEL_SCALE,
    beam: str | None = BEAM,
    noise: float | None = NOISE,
    plot: str | None = typer.Option(None, help="Write a PNG of each query beside its matches."),
    overwrite: bool = typer.Option(False, help="Replace an existing --plot file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Find the most similar indexed images for one or more query images."""
    from twinsight.api import load_index, search
    from twinsight.fsutil import check_output_path

    if plot:
        check_output_path(plot, overwrite)
    index = load_index(index_dir)
    result = search(
        index, images, k, model=model, nprobe=nprobe, ef_search=ef_search, distance=distance,
        pixel_scale=pixel_scale, beam=beam, noise=noise,
    )  # fmt: skip
    _warn_if_clamped("k =", k, len(index))
    if plot:
        result.plot(plot, overwrite=overwrite)
        err_console.print(f"figure -> {plot}")
    if as_json:
        print_json(result.to_dict())
        return
    for q, name in enumerate(result.query_names):
        table = Table(title=f"query {name}")
        table.add_column("rank", justify="right")
        table.add_column("key")
        table.add_column("label" if "label" in result.items.columns else "parameters")
        table.add_column("similarity", justify="right")
        for r, m in enumerate(result.matches(q)):
            table.add_row(str(m["rank"]), m["key"], result.caption(q, r), f"{m['similarity']:.4f}")
        console.print(table)


# -- compare --------------------------------------------------------------------------------------
@app.command("compare")
def compare_cmd(
    run: str = typer.Argument(..., help="Trained model folder."),
    image_a: str = typer.Argument(..., help="First image."),
    image_b: str = typer.Argument(..., help="Second image."),
    distance: float | None = DISTANCE,
    pixel_scale: float | None = PIXEL_SCALE,
    beam: str | None = BEAM,
    noise: float | None = NOISE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Cosine similarity of two images, a calibrated probability and the decision."""
    from twinsight.api import compare

    result = compare(
        run, image_a, image_b, distance=distance, pixel_scale=pixel_scale, beam=beam, noise=noise
    )
    if as_json:
        print_json(result.to_dict())
        return
    console.print(f"similarity  {result.similarity:.4f}")
    if result.calibrated:
        verdict = "same" if result.same else "different"
        console.print(
            f"probability {result.probability:.3f}  (threshold {result.threshold:.4f}: {verdict})"
        )
    else:
        err_console.print(
            "[yellow]the model has no score calibration: no probability or decision[/]"
        )


# -- match ----------------------------------------------------------------------------------------
@app.command("match")
def match_cmd(
    index_dir: str = typer.Argument(
        ..., metavar="IDX", help="Index folder of simulations with parameters."
    ),
    image: str = typer.Argument(..., help="Observed image (FITS or image file)."),
    model: str | None = typer.Option(None, help="Model folder (default: the index's own)."),
    top: int | None = typer.Option(None, help="Use the best N matches (default: calibrated)."),
    threshold: float | None = typer.Option(None, help="Use the matches with similarity >= s."),
    weighting: str | None = typer.Option(None, help="uniform or softmax (default: calibrated)."),
    temperature: float | None = typer.Option(None, help="Softmax temperature on cosine."),
    exclude_system: list[str] | None = typer.Option(
        None, help="Leave out this system (repeatable)."
    ),
    param: list[str] | None = typer.Option(None, help="Only these parameters (repeatable)."),
    distance: float | None = DISTANCE,
    pixel_scale: float | None = PIXEL_SCALE,
    beam: str | None = BEAM,
    noise: float | None = NOISE,
    instrument: str | None = typer.Option(
        None, help="Calibrate for this instrument on the library grid, e.g. beam=2,snr=30."
    ),
    reembed: bool = typer.Option(
        False, help="Also see the library through the instrument (slower once, then cached)."
    ),
    plot: str | None = typer.Option(None, help="Write the per-parameter histogram figure (PNG)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --plot file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Best-match parameter estimate: per parameter median, 68/95 % intervals vs the prior.

    A FITS observation with a celestial WCS is brought onto the library's grid (pixel scale
    from the WCS and --distance, beam and noise from the header or estimated) and its
    intervals are calibrated for that instrument.
    """
    from twinsight.api import load_index, match
    from twinsight.errors import TwinsightError
    from twinsight.fsutil import check_output_path

    if plot:
        check_output_path(plot, overwrite)
    index = load_index(index_dir)
    estimates = match(
        index, [image], model=model, top=top, threshold=threshold, weighting=weighting,
        temperature=temperature, exclude_systems=exclude_system or None, params=param or None,
        instrument=instrument, distance=distance, pixel_scale=pixel_scale, beam=beam, noise=noise,
        reembed=reembed,
    )  # fmt: skip
    if len(estimates) != 1:
        raise TwinsightError(f"match takes one image; '{image}' holds {len(estimates)}")
    estimate = estimates[0]
    _warn_if_clamped("--top", top, len(index))
    if plot:
        estimate.plot(plot, overwrite=overwrite)
        err_console.print(f"figure -> {plot}")
    if as_json:
        print_json(estimate.to_dict())
        return
    _print_estimate(estimate)


def _print_estimate(est: Any) -> None:
    cal = "calibrated" if est.calibrated else "not calibrated"
    table = Table(title=f"{est.query}: best {est.n_matches} matches ({est.weighting}, {cal})")
    columns = ("parameter", "median", "68 %", "95 %", "prior median", "prior 68 %", "narrowing",
               "truth")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "parameter" else "right", overflow="fold")
    for name, p in est.parameters.items():
        table.add_row(
            name + (f" [{p.unit}]" if p.unit else ""),
            _fmt(p.median),
            f"{_fmt(p.interval_68[0])} .. {_fmt(p.interval_68[1])}",
            f"{_fmt(p.interval_95[0])} .. {_fmt(p.interval_95[1])}",
            _fmt(p.prior_median),
            f"{_fmt(p.prior_68[0])} .. {_fmt(p.prior_68[1])}",
            f"{p.narrowing:.2f}",
            _fmt(p.truth),
        )
    console.print(table)
    if est.observation:
        o = est.observation.get("original") or {}
        made = (est.observation.get("instrument") or {}).get("provenance")
        console.print(f"observation: {o.get('pixel_scale_au', float('nan')):.3g} AU/pixel, {made}")
        for note in est.observation.get("notes") or []:
            console.print(f"  {note}")
    if est.instrument:
        console.print(f"calibrated for: {est.instrument.get('key')}")
    if est.typicality:
        t = est.typicality
        console.print(
            f"typicality: best-match similarity {t['best_similarity']:.3f}, p = {t['p_value']:.3f}"
            f" against {t['reference']} validation images seen alike"
        )
    for w in est.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")


# -- evaluate -------------------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_cmd(
    run: str = typer.Argument(..., help="Trained model folder."),
    data: str = typer.Argument(..., help="Collection (path or built-in name)."),
    split: str = typer.Option(
        "test", help="Split to evaluate (all items when DATA has no splits)."
    ),
    batch_size: int = typer.Option(256, help="Images per embedding batch."),
    out: str | None = typer.Option(None, help="Folder for metrics.json and figures."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
    baseline: str = typer.Option(
        "auto", help="auto: also raw pixels and PCA by the same protocol; none: the model only."
    ),
    instrument: list[str] | None = typer.Option(
        None,
        help="Also measure recovery through this instrument, e.g. beam=2,snr=30 (repeatable; "
        "'grid' for beams 0-3 x SNR 10, 30, 100, inf).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Retrieval, verification, similarity ranking and parameter-recovery metrics."""
    from twinsight.api import evaluate
    from twinsight.fsutil import check_output_path

    if out:
        check_output_path(out, overwrite)
    result = evaluate(
        run, data, split=split, batch_size=batch_size, progress=not as_json, baseline=baseline,
        instruments=_instruments(instrument or []),
    )  # fmt: skip
    if out:
        result.save(out, overwrite=overwrite)
        err_console.print(f"metrics and figures -> {out}")
    if as_json:
        print_json(result.to_dict())
        return
    _print_metrics(result.to_dict())


def _instruments(texts: list[str]) -> list[Any]:
    """``--instrument`` values: ``beam=..,snr=..`` each, or ``grid`` (the standard 4 x 4)."""
    from twinsight.instrument import instrument_grid, parse_instrument

    out = []
    for text in texts:
        if text.strip().lower() == "grid":
            out += instrument_grid([0, 1, 2, 3], [10, 30, 100, float("inf")])
        else:
            out.append(parse_instrument(text))
    return out


def _fmt_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _metric_rows(metrics: dict) -> dict[str, float]:
    """The flat metric rows of one column: retrieval, recall@k, verification, Spearman."""
    rows = {}
    for key in ("precision_at_1", "r_precision", "mean_average_precision_at_r", "spearman"):
        if key in metrics:
            rows[key] = metrics[key]
    for key, value in (metrics.get("recall_at_k") or {}).items():
        rows[f"recall_at_{key}"] = value
    for key, value in (metrics.get("verification") or {}).items():
        if isinstance(value, float):
            rows[f"verification.{key}"] = value
    return rows


def _print_metrics(metrics: dict) -> None:
    table = Table(
        title=f"evaluation of '{metrics.get('data')}' split {metrics.get('split')} "
        f"({metrics.get('items')} items)"
    )
    baselines = metrics.get("baselines") or {}
    columns = {"model": _metric_rows(metrics)}
    columns.update({name: _metric_rows(m) for name, m in baselines.items()})
    table.add_column("metric")
    for name in columns:
        table.add_column(name if name == "model" else f"{name} (baseline)", justify="right")
    for key in columns["model"]:
        table.add_row(key, *(_fmt_cell(col.get(key)) for col in columns.values()))
    console.print(table)
    if metrics.get("worse_than_pca"):
        key = metrics.get("compared_on", "mean_average_precision_at_r")
        console.print(
            f"[bold red]the model is worse than PCA on this split[/] ({key} "
            f"{metrics[key]:.4f} < PCA's {baselines['pca'][key]:.4f}): training did not help here"
        )
    elif "worse_than_pca" in metrics:
        key = metrics["compared_on"]
        console.print(
            f"the model beats PCA on {key}: {metrics[key]:.4f} vs {baselines['pca'][key]:.4f}"
        )
    if "parameters" in metrics:
        pt = Table(
            title=f"parameter recovery ({metrics['matching']['top']} matches, "
            f"{'calibrated' if metrics['matching']['calibrated'] else 'not calibrated'})"
        )
        for col in ("parameter", "scale", "r2", "rmse", "coverage_68", "coverage_95", "narrowing"):
            pt.add_column(col, justify="left" if col in ("parameter", "scale") else "right")
        for name, m in metrics["parameters"].items():
            pt.add_row(
                name,
                m["scale"],
                *(f"{m[c]:.3f}" for c in ("r2", "rmse", "coverage_68", "coverage_95", "narrowing")),
            )
        console.print(pt)
    if metrics.get("instruments"):
        _print_instruments(metrics["instruments"])


def _print_instruments(by_instrument: dict) -> None:
    """One row per instrument: per parameter 68 % / 95 % coverage and R^2."""
    names = list(next(iter(by_instrument.values()))["parameters"])
    table = Table(title="through each instrument: coverage 68 % / 95 % and R^2 per parameter")
    table.add_column("instrument")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("atypical", justify="right")
    for key, m in by_instrument.items():
        cells = [
            f"{p['coverage_68']:.2f}/{p['coverage_95']:.2f} R2 {p['r2']:.2f}"
            for p in (m["parameters"][n] for n in names)
        ]
        table.add_row(key, *cells, f"{m['typicality_warning_rate']:.1%}")
    console.print(table)


# -- fid ------------------------------------------------------------------------------------------
@app.command("fid")
def fid_cmd(
    set_a: str = typer.Argument(..., help="First image set (path or built-in name)."),
    set_b: str = typer.Argument(..., help="Second image set."),
    model: str = typer.Option(..., help="Trained model folder whose embedding space is used."),
    batch_size: int = typer.Option(256, help="Images per embedding batch."),
    instrument: str | None = typer.Option(
        None, help="See SET_B through this instrument first, e.g. beam=2,snr=30."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Frechet distance between two image sets in the model's embedding space."""
    from twinsight.api import fid

    result = fid(model, set_a, set_b, batch_size=batch_size, instrument=instrument)
    if as_json:
        print_json(result.to_dict())
        return
    note = " (regularized: few images)" if result.regularized else ""
    console.print(
        f"FID {result.fid:.4f} between {result.n_a} and {result.n_b} images (d={result.dim}){note}"
    )
