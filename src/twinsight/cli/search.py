"""CLI commands: index, index-merge, search, compare, match, evaluate, fid.

Thin wrappers over :mod:`twinsight.index`, :mod:`twinsight.inference` and
:mod:`twinsight.evaluate`: parse, call, print a rich table or ``--json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from twinsight.cli._app import app, console, err_console, print_json
from twinsight.errors import TwinsightError
from twinsight.validation import check_positive_int

log = logging.getLogger(__name__)


# -- helpers --------------------------------------------------------------------------------------
def _bundle(path: str | Path):
    from twinsight.models.bundle import ModelBundle

    return ModelBundle.load(path)


def _collection(source: str):
    from twinsight.data.readers import open_collection

    return open_collection(source)


def _index_and_model(index_dir: str, model: str | None):
    """Load the index and its model (``--model`` overrides); refuse a foreign model."""
    from twinsight.index import SimilarityIndex

    idx = SimilarityIndex.load(index_dir)
    path = model or idx.meta.get("model_path")
    if not path:
        raise TwinsightError(
            f"index '{index_dir}' does not record its model's path; pass --model RUN"
        )
    if model is None and not Path(path).exists():
        raise TwinsightError(
            f"index '{index_dir}' was built with model '{path}', which no longer exists; "
            "pass --model RUN (a model with fingerprint " + idx.model_fingerprint + ")"
        )
    bundle = _bundle(path)
    idx.check_model(bundle.fingerprint, str(path))
    return idx, bundle


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    return str(x)


def _describe(idx, position: int) -> str:
    row = idx.items.iloc[int(position)]
    if "label" in idx.items.columns:
        return str(row["label"])
    cols = idx.param_columns[:4]
    return ", ".join(f"{c}={_fmt(row[c])}" for c in cols)


def _clamp_note(k: int, n: int) -> int:
    if k > n:
        err_console.print(f"[yellow]k = {k} is larger than the index ({n} items); showing {n}[/]")
        return n
    return k


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
    nprobe: int | None = typer.Option(None, help="IVF lists probed per query (default 16)."),
    ef_search: int | None = typer.Option(None, help="HNSW search depth (default 64)."),
    overwrite: bool = typer.Option(False, help="Replace an existing index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the index description as JSON."),
) -> None:
    """Embed a collection with a trained model and write a FAISS index folder."""
    from twinsight.fsutil import check_output_path
    from twinsight.index import build_index

    check_output_path(out, overwrite)
    bundle = _bundle(run)
    collection = _collection(data)
    idx = build_index(
        bundle,
        collection,
        model_path=str(Path(run).resolve()),
        index_type=index_type,
        batch_size=batch_size,
        shard=shard,
        nprobe=nprobe,
        ef_search=ef_search,
        progress=True,
    )
    idx.save(out, overwrite=overwrite)
    if as_json:
        print_json(idx.meta | {"path": str(out)})
    else:
        console.print(
            f"indexed {len(idx)} items of '{collection.name}' "
            f"({idx.meta['index_type']}, d={idx.dim}) -> {out}"
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
    from twinsight.fsutil import check_output_path
    from twinsight.index import SimilarityIndex, merge

    check_output_path(out, overwrite)
    merged = merge([SimilarityIndex.load(s) for s in shards], index_type=index_type)
    merged.save(out, overwrite=overwrite)
    if as_json:
        print_json(merged.meta | {"path": str(out)})
    else:
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
    plot: str | None = typer.Option(None, help="Write a PNG of each query beside its matches."),
    overwrite: bool = typer.Option(False, help="Replace an existing --plot file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Find the most similar indexed images for one or more query images."""
    from twinsight.inference import embed_queries, load_queries

    check_positive_int(k, "-k")
    idx, bundle = _index_and_model(index_dir, model)
    queries = load_queries(images, bundle.preprocessing)
    emb = embed_queries(bundle, queries)
    k_used = _clamp_note(k, len(idx))
    sims, pos = idx.search(emb, k_used, nprobe=nprobe, ef_search=ef_search)
    results = []
    for q, name in enumerate(queries.names):
        rows = []
        for r in range(sims.shape[1]):
            if pos[q, r] < 0:
                continue
            row = idx.items.iloc[int(pos[q, r])]
            entry = {"rank": r + 1, "key": str(row["key"]), "similarity": float(sims[q, r])}
            if "label" in idx.items.columns:
                entry["label"] = str(row["label"])
            for c in idx.param_columns:
                entry[c] = float(row[c])
            rows.append(entry)
        results.append({"query": name, "matches": rows})
    if plot:
        _search_plot(idx, queries, sims, pos, plot, overwrite)
    if as_json:
        print_json(
            {
                "k_requested": k,
                "k": k_used,
                "model_fingerprint": idx.model_fingerprint,
                "results": results,
            }
        )
        return
    for q, res in enumerate(results):
        table = Table(title=f"query {res['query']}")
        table.add_column("rank", justify="right")
        table.add_column("key")
        table.add_column("label" if "label" in idx.items.columns else "parameters")
        table.add_column("similarity", justify="right")
        for r, m in enumerate(res["matches"]):
            table.add_row(
                str(m["rank"]), m["key"], _describe(idx, pos[q, r]), f"{m['similarity']:.4f}"
            )
        console.print(table)


def _source_collection(idx):
    src = idx.meta.get("source")
    if not src:
        return None
    try:
        return _collection(src)
    except TwinsightError:
        return None


def _search_plot(idx, queries, sims, pos, out, overwrite) -> None:
    from twinsight.plots import plot_search_results

    source = _source_collection(idx)
    if source is None:
        raise TwinsightError(
            f"--plot needs the indexed images, but the index's source '{idx.meta.get('source')}' "
            "cannot be opened"
        )
    keys = source.items["key"].astype(str)
    where = dict(zip(keys, range(len(keys)), strict=True))
    matches, captions = [], []
    for q in range(len(pos)):
        ok = [p for p in pos[q] if p >= 0]
        rows = [where.get(str(idx.items["key"].iloc[p])) for p in ok]
        if any(r is None for r in rows):
            raise TwinsightError("--plot: the index's source no longer holds the indexed keys")
        matches.append(source.images(np.array(rows, dtype=np.int64)) if rows else np.zeros((0,)))
        captions.append([_describe(idx, p)[:24] for p in ok])
    plot_search_results(
        queries.raw, matches, sims, captions, out, query_names=queries.names, overwrite=overwrite
    )
    err_console.print(f"figure -> {out}")


# -- compare --------------------------------------------------------------------------------------
@app.command("compare")
def compare_cmd(
    run: str = typer.Argument(..., help="Trained model folder."),
    image_a: str = typer.Argument(..., help="First image."),
    image_b: str = typer.Argument(..., help="Second image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Cosine similarity of two images, a calibrated probability and the decision."""
    from twinsight.inference import decision_threshold, embed_queries, load_queries, probability

    bundle = _bundle(run)
    qa = load_queries([image_a], bundle.preprocessing)
    qb = load_queries([image_b], bundle.preprocessing)
    if len(qa.items) != 1 or len(qb.items) != 1:
        raise TwinsightError(
            f"compare takes one image per argument; '{image_a}' holds {len(qa.items)}, "
            f"'{image_b}' holds {len(qb.items)}"
        )
    ea, eb = embed_queries(bundle, qa), embed_queries(bundle, qb)
    score = float(np.sum(ea[0] * eb[0]) / (np.linalg.norm(ea[0]) * np.linalg.norm(eb[0])))
    cal = getattr(bundle, "calibration", None)
    out = {
        "similarity": score,
        "probability": None,
        "threshold": None,
        "same": None,
        "calibrated": bool(cal),
    }
    if cal:
        out["probability"] = float(probability(score, cal))
        out["threshold"] = decision_threshold(cal)
        out["same"] = bool(score >= out["threshold"])
    if as_json:
        print_json(out)
        return
    console.print(f"similarity  {score:.4f}")
    if cal:
        verdict = "same" if out["same"] else "different"
        console.print(
            f"probability {out['probability']:.3f}  (threshold {out['threshold']:.4f}: {verdict})"
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
    plot: str | None = typer.Option(None, help="Write the per-parameter histogram figure (PNG)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --plot file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Best-match parameter estimate: per parameter median, 68/95 % intervals vs the prior."""
    from twinsight.inference import embed_queries, estimate_parameters, load_queries, query_truths

    idx, bundle = _index_and_model(index_dir, model)
    columns = list(param) if param else idx.param_columns
    idx.check_params(columns)
    queries = load_queries([image], bundle.preprocessing)
    if len(queries.items) != 1:
        raise TwinsightError(f"match takes one image; '{image}' holds {len(queries.items)}")
    if top is not None and top > len(idx):
        err_console.print(
            f"[yellow]--top {top} is larger than the index ({len(idx)} items); using {len(idx)}[/]"
        )
        top = len(idx)
    emb = embed_queries(bundle, queries)
    matching = getattr(bundle, "matching", None) or idx.meta.get("matching")
    exclude = exclude_system[0] if exclude_system and len(exclude_system) == 1 else None
    if exclude_system and len(exclude_system) > 1:
        keep = ~idx.items["system"].astype(str).isin(exclude_system).to_numpy()
        idx = _restrict(idx, keep)
    est = estimate_parameters(
        idx,
        emb,
        top=top,
        threshold=threshold,
        weighting=weighting,
        temperature=temperature,
        exclude_systems=exclude,
        columns=columns,
        matching=matching,
        truths=query_truths(queries, columns),
        query_names=queries.names,
    )[0]
    if plot:
        from twinsight.plots import plot_parameter_matches

        plot_parameter_matches(est, plot, overwrite=overwrite)
        err_console.print(f"figure -> {plot}")
    if as_json:
        print_json(est.to_dict())
        return
    _print_estimate(est)


def _restrict(idx, keep: np.ndarray):
    from twinsight.index import SimilarityIndex

    if not keep.any():
        raise TwinsightError("--exclude-system left no items in the index")
    return SimilarityIndex.build(
        idx.vectors()[keep],
        idx.items[keep],
        model_fingerprint=idx.model_fingerprint,
        param_columns=idx.param_columns,
        units=idx.meta.get("units"),
        extra={"source": idx.meta.get("source")},
    )


def _print_estimate(est) -> None:
    cal = "calibrated" if est.calibrated else "not calibrated"
    table = Table(title=f"{est.query}: best {est.n_matches} matches ({est.weighting}, {cal})")
    for col in (
        "parameter",
        "median",
        "68 %",
        "95 %",
        "prior median",
        "prior 68 %",
        "narrowing",
        "truth",
    ):
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
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Retrieval, verification, similarity ranking and parameter-recovery metrics."""
    from twinsight.evaluate import evaluate, public

    if out:
        from twinsight.fsutil import check_output_path

        check_output_path(out, overwrite)
    bundle = _bundle(run)
    collection = _collection(data)
    result = evaluate(bundle, collection, split=split, batch_size=batch_size, progress=not as_json)
    metrics = public(result)
    if out:
        _write_eval(out, metrics, result, collection, split, overwrite)
    if as_json:
        print_json(metrics)
        return
    _print_metrics(metrics)


def _write_eval(out, metrics, result, collection, split, overwrite) -> None:
    from twinsight.fsutil import atomic_dir
    from twinsight.io import dumps
    from twinsight.plots import plot_coverage_calibration, plot_ranked_pairs, select_ranked_pairs

    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(dumps(metrics))
        if "calibration_curve" in metrics:
            plot_coverage_calibration(metrics["calibration_curve"], tmp / "calibration.png")
        if "_pairs" in result:
            i, j, pred, target = result["_pairs"]
            sub = (
                collection.split(split)
                if split and "split" in collection.items.columns
                else collection
            )
            sel = np.unique(np.concatenate(list(select_ranked_pairs(pred, 8).values())))
            plot_ranked_pairs(
                sub.images(i[sel]),
                sub.images(j[sel]),
                pred[sel],
                target[sel],
                tmp / "ranked_pairs.png",
            )
    err_console.print(f"metrics and figures -> {out}")


def _print_metrics(metrics: dict) -> None:
    table = Table(
        title=f"evaluation of '{metrics.get('data')}' split {metrics.get('split')} "
        f"({metrics.get('items')} items)"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("precision_at_1", "r_precision", "mean_average_precision_at_r", "spearman"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4f}")
    for key, value in (metrics.get("recall_at_k") or {}).items():
        table.add_row(f"recall_at_{key}", f"{value:.4f}")
    for key, value in (metrics.get("verification") or {}).items():
        if isinstance(value, float):
            table.add_row(f"verification.{key}", f"{value:.4f}")
    console.print(table)
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


# -- fid ------------------------------------------------------------------------------------------
@app.command("fid")
def fid_cmd(
    set_a: str = typer.Argument(..., help="First image set (path or built-in name)."),
    set_b: str = typer.Argument(..., help="Second image set."),
    model: str = typer.Option(..., help="Trained model folder whose embedding space is used."),
    batch_size: int = typer.Option(256, help="Images per embedding batch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Frechet distance between two image sets in the model's embedding space."""
    from twinsight.embedding import embed_collection
    from twinsight.evaluate import frechet_distance

    bundle = _bundle(model)
    ea = embed_collection(bundle, _collection(set_a), batch_size=batch_size)
    eb = embed_collection(bundle, _collection(set_b), batch_size=batch_size)
    res = frechet_distance(ea, eb)
    if as_json:
        print_json(res)
        return
    note = " (regularized: few images)" if res["regularized"] else ""
    console.print(
        f"FID {res['fid']:.4f} between {res['n_a']} and {res['n_b']} images (d={res['dim']}){note}"
    )
