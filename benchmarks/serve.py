"""Benchmark: ``twinsight serve`` under load, against the CLI one process per query.

A 10,000-image index (1,250 simulated systems x 8 projections, 32x32, a small untrained
CNN: the speed of serving does not depend on training) is served by ``twinsight serve``
on 127.0.0.1 in its own process. 8 concurrent clients send 200 ``POST /api/search``
requests (a PNG upload each, k = 10); per run we record requests/s, p50/p95 latency and
failed requests (must be 0), and the server's resident memory before and after (must
stay flat). The same queries through ``twinsight search --json`` (one process per query,
loading the model and index each time) are the baseline.

Localhost only, bounded in requests and in time (``--max-seconds``). Medians of several
runs. Prints a summary, updates the "Web server" section of BENCHMARKS.md (unless
--no-write), and prints one JSON object as its last line.

    python benchmarks/serve.py [--no-write] [--requests 200] [--clients 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from _bench import machine, update_section
from PIL import Image

import twinsight
from twinsight.models.bundle import ModelBundle
from twinsight.models.encoders import create_encoder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Web server"
HOST = "127.0.0.1"
CLI = [sys.executable, "-c", "from twinsight.cli import main; main()"]


def build_world(root: Path, n_systems: int, size: int, n_queries: int) -> dict:
    """Simulate the collection, save a random small-cnn model, index it, write query PNGs."""
    sims = twinsight.simulate(root / "sims.h5", n_systems=n_systems, n_projections=8, size=size)
    torch.manual_seed(0)
    enc = create_encoder("small-cnn", embedding_dim=64, in_channels=1, input_size=(size, size))
    ModelBundle.from_encoder(enc).save(root / "run")
    index = twinsight.build_index(root / "run", sims)
    index.save(root / "idx")
    rng = np.random.default_rng(1)
    queries = []
    for i, row in enumerate(rng.choice(len(sims), n_queries, replace=False)):
        img = sims.images(np.array([row]))[0, 0]
        img = (255 * (img - img.min()) / (np.ptp(img) or 1)).astype(np.uint8)
        queries.append(root / f"query{i}.png")
        Image.fromarray(img).save(queries[-1])
    return {"idx": root / "idx", "queries": queries, "items": len(index)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(idx: Path, port: int) -> subprocess.Popen:
    """``twinsight serve IDX`` on 127.0.0.1 in a subprocess; waits until it answers."""
    proc = subprocess.Popen([*CLI, "serve", str(idx), "--host", HOST, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server stopped: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def load(url: str, queries: list[Path], n: int, clients: int, max_seconds: float) -> dict:
    """``n`` search requests from ``clients`` threads; latency per request and failures."""
    payloads = [(q.name, q.read_bytes()) for q in queries]
    counter = iter(range(n))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = payloads[i % len(payloads)]
                t = time.perf_counter()
                try:
                    r = c.post("/api/search", files={"image": (name, data, "image/png")},
                               data={"k": "10"})  # fmt: skip
                    ok = r.status_code == 200 and r.json()["results"][0]["matches"]
                    error = None if ok else f"{r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as exc:
                    error = repr(exc)
                with lock:
                    latencies.append(time.perf_counter() - t)
                    if error:
                        failures.append(error)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {
        "requests": len(lat),
        "failed": len(failures) + (n - len(lat)),
        "first_failure": failures[0] if failures else None,
        "wall_s": wall,
        "requests_per_s": len(lat) / wall,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
    }


def cli_per_process(idx: Path, queries: list[Path], runs: int) -> float:
    """Median seconds of ``twinsight search IDX QUERY --json`` run as a fresh process."""
    times = []
    for q in queries[:runs]:
        t = time.perf_counter()
        subprocess.run([*CLI, "search", str(idx), str(q), "-k", "10", "--json"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(args: argparse.Namespace, root: Path) -> dict:
    world = build_world(root, args.systems, args.size, args.queries)
    port = free_port()
    server = start_server(world["idx"], port)
    url = f"http://{HOST}:{port}"
    try:
        rss = psutil.Process(server.pid)
        load(url, world["queries"], 2 * args.clients, args.clients, args.max_seconds)  # warm-up
        rss_before = rss.memory_info().rss
        runs = [load(url, world["queries"], args.requests, args.clients, args.max_seconds)
                for _ in range(args.runs)]  # fmt: skip
        rss_after = rss.memory_info().rss
    finally:
        server.terminate()
        server.wait(30)
    cli_s = cli_per_process(world["idx"], world["queries"], args.cli_runs)
    med = {k: statistics.median(r[k] for r in runs) for k in ("requests_per_s", "p50_ms", "p95_ms")}
    return {
        "items": world["items"],
        "requests": args.requests,
        "clients": args.clients,
        "runs": args.runs,
        **med,
        "failed": sum(r["failed"] for r in runs),
        "first_failure": next((r["first_failure"] for r in runs if r["first_failure"]), None),
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_growth_mb": (rss_after - rss_before) / 2**20,
        "cli_per_query_s": cli_s,
        "cli_requests_per_s": 1 / cli_s,
        "speedup_vs_cli": med["requests_per_s"] * cli_s,
        "per_run": runs,
    }


def _markdown(res: dict) -> str:
    s, env = res["serve"], res["machine"]
    return "\n".join(
        [
            SECTION,
            "",
            f"Measured by `benchmarks/serve.py` on {env['date']} ({env['machine']}, {env['cpus']} "
            f"CPUs, torch {env['torch']}; load average {env['load']} at the start, "
            f"{env['load_end']} at the end: the machine was shared with other jobs). "
            f"{s['requests']} `POST /api/search` requests (a PNG upload each, k = 10) from "
            f"{s['clients']} concurrent clients against a {s['items']:,}-image index (32x32, "
            f"small CNN), `twinsight serve` on 127.0.0.1; medians of {s['runs']} runs.",
            "",
            "| | requests/s | p50 latency | p95 latency | |",
            "|---|---:|---:|---:|---|",
            f"| `twinsight serve` (model and index loaded once) | {s['requests_per_s']:.1f} | "
            f"{s['p50_ms']:.0f} ms | {s['p95_ms']:.0f} ms | **{s['speedup_vs_cli']:.0f}x** |",
            f"| `twinsight search --json`, one process per query | {s['cli_requests_per_s']:.2f} | "
            f"{1000 * s['cli_per_query_s']:.0f} ms | | baseline |",
            "",
            f"Failed requests: {s['failed']} of {s['requests'] * s['runs']}. Server memory (RSS): "
            f"{s['rss_before_mb']:.0f} MiB after warm-up, {s['rss_after_mb']:.0f} MiB after "
            f"all runs ({s['rss_growth_mb']:+.1f} MiB).",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", type=int, default=1250, help="x 8 projections = items")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--cli-runs", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=300, help="Bound on each load run.")
    ap.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = ap.parse_args()
    env = machine(torch=torch.__version__)
    with tempfile.TemporaryDirectory(prefix="twinsight-bench-serve-") as tmp:
        res = {"machine": env, "serve": bench(args, Path(tmp))}
    res["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    s = res["serve"]
    print(f"serve: {s['requests_per_s']:.1f} requests/s, p50 {s['p50_ms']:.0f} ms, "
          f"p95 {s['p95_ms']:.0f} ms, {s['failed']} failed")  # fmt: skip
    print(f"memory: {s['rss_before_mb']:.0f} -> {s['rss_after_mb']:.0f} MiB")
    print(f"CLI per process: {s['cli_per_query_s']:.2f} s/query ({s['speedup_vs_cli']:.0f}x)")
    if not args.no_write:
        update_section(_markdown(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
