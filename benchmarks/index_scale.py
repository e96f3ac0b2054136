"""Benchmark: FAISS index types at 100,000 real embeddings and at 1,000,000 vectors.

Embeds nothing. It reads the vectors of an index built by ``twinsight index`` (a trained
model's embeddings of simulated images, at least 100,000 of them), holds ``--queries`` of
them out as queries, and uses the rest as the "real" database. For the million, it fits a
Gaussian mixture (``--components``, full covariances, scikit-learn) to the real vectors
and draws ``--vectors`` from it, projected back onto the unit sphere; how closely that
matches the real neighbourhoods is reported (the queries' top-1 and 10th cosine against
the real database and against as many drawn vectors).

At each scale, through :class:`twinsight.index.SimilarityIndex` (what a user gets):

- Flat (exact), IVF{K},Flat (K = 4 sqrt(N), a power of two: what ``auto`` builds up to a
  million; nprobe 32, twinsight's default, and a sweep), HNSW32 (ef_search 64 and a sweep),
  the compressed scans SQfp16 and SQ8, and SQfp16,RFlat (the float16 scan, its best
  4 x k re-scored exactly in float32);
- recall@10 against Flat, queries per second for single queries (the median over
  ``--singles`` separate calls) and for batches of 100 (median of ``--runs``), build time
  and memory (the serialized FAISS index).

The memory-bandwidth floor: the fastest plain read of the ``--vectors`` x d float32
matrix (numpy on one thread, torch on all), median of ``--runs``; the single exact query of
each kind is given as a ratio to it (the README's goal: Flat within 1.5x).

Prints the tables, updates the "Index scale" section of BENCHMARKS.md (unless
--no-write), and prints one JSON object as its last line.

    twinsight simulate sims100k.h5 -n 12500 -k 8 --size 64
    twinsight index RUN sims100k.h5 --out idx100k
    python benchmarks/index_scale.py --index idx100k [--vectors 1000000] [--no-write]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from _bench import machine, publish

from twinsight.index import DEFAULT_NPROBE, REFINE_K_FACTOR, SimilarityIndex

SECTION = "## Index scale"
K = 10
FLOOR_GOAL = 1.5
NPROBES = (4, 8, 16, 32, 64)
EF_SEARCHES = (16, 32, 64, 128)


def _median_time(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _single_latency(index: SimilarityIndex, queries: np.ndarray, **params: Any) -> float:
    """The median time of one single-query search over separate calls, one per query."""
    index.search(queries[:1], K, **params)  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], K, **params)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def _index_bytes(index: SimilarityIndex) -> int:
    import faiss

    return int(faiss.serialize_index(index.index).nbytes)


def ivf_factory(n: int) -> str:
    """What ``auto`` builds up to a million vectors: IVF{K},Flat with K = 4 sqrt(N)."""
    k = 2 ** max(4, round(math.log2(4 * math.sqrt(n))))
    return f"IVF{k},Flat"


def read_real(index_dir: str, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = SimilarityIndex.load(index_dir)
    vectors = np.ascontiguousarray(index.vectors(), dtype=np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vectors))
    return vectors[order[n_queries:]], vectors[order[:n_queries]]


def draw_like(real: np.ndarray, n: int, components: int, seed: int) -> tuple[np.ndarray, dict]:
    """``n`` unit vectors from a Gaussian mixture fitted to ``real`` (at most 50,000 of them)."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    fit_rows = real[rng.permutation(len(real))[:50_000]].astype(np.float64)
    t = time.perf_counter()
    gm = GaussianMixture(components, covariance_type="full", random_state=seed, reg_covar=1e-5)
    gm.fit(fit_rows)
    fit_s = time.perf_counter() - t
    drawn, _ = gm.sample(n)
    drawn = drawn[rng.permutation(n)].astype(np.float32)
    drawn /= np.linalg.norm(drawn, axis=1, keepdims=True)
    return np.ascontiguousarray(drawn), {
        "components": components,
        "fit_rows": len(fit_rows),
        "fit_seconds": fit_s,
        "converged": bool(gm.converged_),
    }


def neighbourhood(database: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """The queries' median top-1 and 10th cosine against ``database`` (exact)."""
    index = _build(database, "Flat")
    sims, _ = index.search(queries, K)
    return {
        "top1_cosine": float(np.median(sims[:, 0])),
        "top10_cosine": float(np.median(sims[:, -1])),
    }


def _build(vectors: np.ndarray, factory: str) -> SimilarityIndex:
    items = pd.DataFrame({"key": np.arange(len(vectors)).astype(str)})
    return SimilarityIndex.build(vectors, items, model_fingerprint="bench", index_type=factory)


def bandwidth_floor(matrix: np.ndarray, runs: int) -> dict[str, float]:
    """The fastest plain read of ``matrix``: a sum of all its values by numpy (one thread)
    and by torch (one thread, all threads)."""
    tensor = torch.from_numpy(matrix)
    threads = torch.get_num_threads()

    def torch_one_thread() -> None:
        torch.set_num_threads(1)
        try:
            tensor.sum()
        finally:
            torch.set_num_threads(threads)

    reads = {
        "numpy_sum_1_thread_s": matrix.sum,
        "torch_sum_1_thread_s": torch_one_thread,
        "torch_sum_all_threads_s": tensor.sum,
    }
    out = {name: _median_time(fn, runs) for name, fn in reads.items()}
    out["floor_s"] = min(out.values())
    out["gb_per_s"] = matrix.nbytes / out["floor_s"] / 1e9
    out["matrix_mb"] = matrix.nbytes / 2**20
    return out


def _numpy_topk(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    s = x @ q
    part = np.argpartition(-s, K)[:K]
    return part[np.argsort(-s[part])]


def reference_single(matrix: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Single exact queries outside twinsight, for reference: FAISS Flat on 1 and all threads,
    numpy's matrix-vector product."""
    import faiss

    flat = faiss.IndexFlatIP(matrix.shape[1])
    flat.add(matrix)
    search = getattr(flat, "search_numpy", flat.search)
    threads = faiss.omp_get_max_threads()
    out = {}
    for n in sorted({1, threads}):
        faiss.omp_set_num_threads(n)
        out[f"faiss_flat_{n}_threads_s"] = statistics.median(
            _median_time(lambda q=q: search(q[None], K), 1) for q in queries
        )
    faiss.omp_set_num_threads(threads)
    out["numpy_matvec_s"] = statistics.median(
        _median_time(lambda q=q: _numpy_topk(matrix, q), 1) for q in queries
    )
    return out


def measure_scale(
    database: np.ndarray, queries: np.ndarray, singles: int, runs: int, label: str
) -> dict[str, Any]:
    """Every index type at one scale: recall@10, QPS, build time, memory."""
    n = len(database)
    kinds = {
        "Flat": "Flat",
        "IVF": ivf_factory(n),
        "HNSW32": "HNSW32",
        "SQfp16": "SQfp16",
        "SQfp16,RFlat": "SQfp16,RFlat",
        "SQ8": "SQ8",
    }
    batch = queries[:100]
    single_queries = queries[:singles]
    out: dict[str, Any] = {"vectors": n, "label": label}
    truth = None
    for name, factory in kinds.items():
        print(f"[{label}] building {factory} over {n:,} vectors", file=sys.stderr, flush=True)
        t = time.perf_counter()
        index = _build(database, factory)
        build_s = time.perf_counter() - t
        _, found = index.search(queries, K)
        if truth is None:
            truth = found
        row: dict[str, Any] = {
            "factory": factory,
            "build_s": build_s,
            "memory_mb": _index_bytes(index) / 2**20,
            "recall_at_10": _recall(found, truth),
            "single_s": _single_latency(index, single_queries),
            "batch100_s": _median_time(lambda index=index: index.search(batch, K), runs),
        }
        if name == "IVF":
            row["sweep"] = _sweep(index, queries, truth, single_queries, "nprobe", NPROBES)
        if name == "HNSW32":
            row["sweep"] = _sweep(index, queries, truth, single_queries, "ef_search", EF_SEARCHES)
        row["single_qps"] = 1.0 / row["single_s"]
        row["batch100_qps"] = 100.0 / row["batch100_s"]
        out[name] = row
        print(
            f"[{label}] {factory}: recall@10 {row['recall_at_10']:.3f}, single "
            f"{1000 * row['single_s']:.2f} ms, batch100 {1000 * row['batch100_s']:.1f} ms, "
            f"build {build_s:.1f} s, {row['memory_mb']:.0f} MB",
            file=sys.stderr,
            flush=True,
        )
        del index
    return out


def _sweep(index, queries, truth, singles, name: str, values) -> list[dict[str, float]]:
    rows = []
    for value in values:
        _, found = index.search(queries, K, **{name: value})
        rows.append(
            {
                name: value,
                "recall_at_10": _recall(found, truth),
                "single_s": _single_latency(index, singles[:100], **{name: value}),
            }
        )
    return rows


def _default_setting(name: str) -> str:
    """The search setting a table row ran with: twinsight's default for that kind."""
    if name == "IVF":
        return f" (nprobe {DEFAULT_NPROBE})"
    return " (ef_search 64)" if name == "HNSW32" else ""


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f} ms" if seconds < 0.01 else f"{1000 * seconds:.1f} ms"


def _scale_table(res: dict[str, Any]) -> list[str]:
    lines = [
        f"**{res['label']}: {res['vectors']:,} vectors**",
        "",
        "| index | recall@10 | single query | QPS (single) | batch of 100 | QPS (batches) "
        "| build | memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("Flat", "IVF", "HNSW32", "SQfp16", "SQfp16,RFlat", "SQ8"):
        r = res[name]
        lines.append(
            f"| {r['factory']}{_default_setting(name)} | {r['recall_at_10']:.3f} | "
            f"{_ms(r['single_s'])} | "
            f"{r['single_qps']:,.0f} | {_ms(r['batch100_s'])} | {r['batch100_qps']:,.0f} | "
            f"{r['build_s']:.1f} s | {r['memory_mb']:,.0f} MB |"
        )
    for name, key in (("IVF", "nprobe"), ("HNSW32", "ef_search")):
        cells = ", ".join(
            f"{s[key]}: {s['recall_at_10']:.3f} / {_ms(s['single_s'])}" for s in res[name]["sweep"]
        )
        lines += ["", f"{res[name]['factory']} by {key} (recall@10 / single query): {cells}."]
    return lines + [""]


def _markdown(res: dict[str, Any]) -> str:
    env, floor, ref = res["machine"], res["floor"], res["reference_single"]
    real, big = res["scales"]
    flat_ratio = big["Flat"]["single_s"] / floor["floor_s"]
    near = res["neighbourhoods"]
    mix = res["mixture"]
    lines = [
        SECTION,
        "",
        f"Measured by `benchmarks/index_scale.py` on {env['date']} ({env['machine']}, "
        f"{env['cpus']} CPUs, faiss {env['faiss']}, load average {env['load']} at the start, "
        f"{env['load_end']} at the end). Real vectors: {res['source']}. Queries: "
        f"{res['queries']:,} held-out real vectors; single-query times are the median over "
        f"{res['singles']} separate calls, batches the median of {res['runs']} runs. "
        f"Recall@10 is against Flat at the same scale.",
        "",
        *_scale_table(real),
        f"The {big['vectors']:,} are drawn from a {mix['components']}-component Gaussian "
        "mixture (full covariances) fitted to the real vectors, then normalized. Median "
        f"cosine of the queries' top-1 / 10th neighbour: real {near['real']['top1_cosine']:.3f}"
        f" / {near['real']['top10_cosine']:.3f}, as many drawn "
        f"{near['drawn']['top1_cosine']:.3f} / {near['drawn']['top10_cosine']:.3f}.",
        "",
        *_scale_table(big),
        f"**The single exact query against the memory-bandwidth floor** ({floor['matrix_mb']:.0f} "
        f"MB float32 matrix; floor = its fastest plain read, {_ms(floor['floor_s'])}, "
        f"{floor['gb_per_s']:.1f} GB/s; a sum of all values by numpy on one thread "
        f"{_ms(floor['numpy_sum_1_thread_s'])}, torch on one thread "
        f"{_ms(floor['torch_sum_1_thread_s'])}, on all threads "
        f"{_ms(floor['torch_sum_all_threads_s'])}):",
        "",
        "| single query over the million | recall@10 | time | / floor | memory |",
        "|---|---|---|---|---|",
    ]
    for name in ("Flat", "SQfp16,RFlat", "SQfp16"):
        r = big[name]
        lines.append(
            f"| twinsight `{r['factory']}` | {r['recall_at_10']:.3f} | {_ms(r['single_s'])} | "
            f"**{r['single_s'] / floor['floor_s']:.2f}x** | {r['memory_mb']:,.0f} MB |"
        )
    for key, value in ref.items():
        name = key.removesuffix("_s").replace("_", " ")
        lines.append(
            f"| {name} (outside twinsight) | 1.000 | {_ms(value)} | "
            f"{value / floor['floor_s']:.2f}x | |"
        )
    refined = big["SQfp16,RFlat"]["single_s"] / floor["floor_s"]

    def verdict(ratio: float) -> str:
        return "met" if ratio <= FLOOR_GOAL else "missed"

    lines += [
        "",
        f"Goal: the single exact query within {FLOOR_GOAL}x of the floor. `Flat` (exact by "
        f"construction): {flat_ratio:.2f}x, {verdict(flat_ratio)}. `SQfp16,RFlat` (a float16 "
        f"scan, its best {REFINE_K_FACTOR} x k re-scored exactly in float32; recall@10 "
        f"{big['SQfp16,RFlat']['recall_at_10']:.3f} here, exact unless a true neighbour falls "
        f"outside those candidates): {refined:.2f}x, {verdict(refined)}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="an index of >= 100,000 real embeddings")
    ap.add_argument("--vectors", type=int, default=1_000_000, help="vectors drawn for scale")
    ap.add_argument("--components", type=int, default=32, help="mixture components")
    ap.add_argument("--queries", type=int, default=1000, help="held-out real queries")
    ap.add_argument("--singles", type=int, default=200, help="single-query calls timed")
    ap.add_argument("--runs", type=int, default=5, help="runs of each batch / read timing")
    ap.add_argument("--min-real", type=int, default=100_000, help="fewest vectors in --index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    import faiss

    env = machine(faiss=faiss.__version__, faiss_threads=faiss.omp_get_max_threads())
    real, queries = read_real(args.index, args.queries, args.seed)
    if len(real) + len(queries) < args.min_real:
        sys.exit(
            f"error: '{args.index}' holds {len(real) + len(queries):,} vectors; this benchmark "
            f"needs at least {args.min_real:,} (see the commands in its docstring)"
        )
    drawn, mixture = draw_like(real, args.vectors, args.components, args.seed)
    res: dict[str, Any] = {
        "machine": env,
        "source": f"'{args.index}' ({SimilarityIndex.load(args.index).meta.get('count'):,})",
        "queries": len(queries),
        "singles": args.singles,
        "runs": args.runs,
        "mixture": mixture,
        "neighbourhoods": {
            "real": neighbourhood(real, queries),
            "drawn": neighbourhood(drawn[: len(real)], queries),
        },
    }
    res["floor"] = bandwidth_floor(drawn, args.runs * 2)
    res["reference_single"] = reference_single(drawn, queries[: args.singles])
    res["scales"] = [
        measure_scale(real, queries, args.singles, args.runs, "Real embeddings"),
        measure_scale(drawn, queries, args.singles, args.runs, "Drawn to match"),
    ]
    big = res["scales"][1]
    res["flat_single_over_floor"] = big["Flat"]["single_s"] / res["floor"]["floor_s"]
    env["load_end"] = round(os.getloadavg()[0], 2)
    text = _markdown(res)
    publish(text, res, write=not args.no_write)


if __name__ == "__main__":
    main()
