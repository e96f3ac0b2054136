"""Benchmark the protostellar simulator: rendered images per second on one core.

Renders the same systems two ways, in the same run:

* ``batched``: all K projections of a system in one vectorized call (what the
  writers do);
* ``baseline``: one projection per call (the straightforward loop over images).

Also times the packed writer end to end. Prints a table, rewrites the
"Simulator" section of BENCHMARKS.md (use ``--no-write`` to skip) and prints,
as its last line, one JSON object with the figures.

    OMP_NUM_THREADS=1 python benchmarks/simulate.py [--systems 125] [--size 64] [--runs 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: set before numpy is imported

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _bench import publish  # noqa: E402

from twinsight.simulator import draw_views, render_system, simulate_systems  # noqa: E402
from twinsight.simulator.priors import STREAM_NOISE, system_rng  # noqa: E402
from twinsight.simulator.writers import write_packed_simulation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _median_rate(fn, n_images: int, runs: int) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of this process (medians of runs).

    On a shared machine the wall-clock rate drops with other people's load; the
    CPU-time rate (one thread) is what one free core would do.
    """
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return n_images / statistics.median(wall), n_images / statistics.median(cpu)


def run(systems: int, projections: int, size: int, runs: int) -> dict:
    """Measure batched vs one-at-a-time rendering and the packed writer."""
    table = simulate_systems(systems, seed=0).to_dict("records")
    views = [draw_views(projections, seed=0, index=i) for i in range(systems)]
    n_images = systems * projections

    def batched() -> None:
        for i, (row, (incl, pa)) in enumerate(zip(table, views, strict=True)):
            render_system(row, incl, pa, size, system_rng(0, i, STREAM_NOISE))

    def one_at_a_time() -> None:
        for i, (row, (incl, pa)) in enumerate(zip(table, views, strict=True)):
            rng = system_rng(0, i, STREAM_NOISE)
            for k in range(projections):
                render_system(row, incl[k : k + 1], pa[k : k + 1], size, rng)

    batched()  # warm up
    rate, cpu_rate = _median_rate(batched, n_images, runs)
    base_rate, base_cpu_rate = _median_rate(one_at_a_time, n_images, max(1, runs // 2))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_packed_simulation(Path(tmp) / "b.h5", systems, projections, size, seed=0)
        write_rate = n_images / (time.perf_counter() - start)
    return {
        "benchmark": "simulate",
        "images": n_images,
        "systems": systems,
        "projections": projections,
        "size": size,
        "runs": runs,
        "images_per_s": round(rate, 1),
        "baseline_images_per_s": round(base_rate, 1),
        "speedup_vs_baseline": round(cpu_rate / base_cpu_rate, 2),
        "images_per_cpu_s": round(cpu_rate, 1),
        "baseline_images_per_cpu_s": round(base_cpu_rate, 1),
        "packed_write_images_per_s": round(write_rate, 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "load_average": _load(),
        "date": datetime.date.today().isoformat(),
    }


def section(r: dict) -> str:
    """The Markdown "Simulator" section of BENCHMARKS.md for one result."""
    cpu, wall = r["images_per_cpu_s"], r["images_per_s"]
    base_cpu, base_wall = r["baseline_images_per_cpu_s"], r["baseline_images_per_s"]
    return f"""## Simulator

Measured by `OMP_NUM_THREADS=1 python benchmarks/simulate.py` on {r["date"]}:
{r["cpu"]}, {r["cores"]} cores (one used), numpy {r["numpy"]}, Python {r["python"]},
load average at start {r["load_average"]} (the machine is shared; figures are medians of
{r["runs"]} runs of {r["images"]} images, {r["systems"]} systems x {r["projections"]} projections).

| what ({r["size"]}x{r["size"]}) | images per CPU s | images per wall s |
|---|---:|---:|
| `render_system`, all K projections per call | {cpu:,.0f} | {wall:,.0f} |
| baseline: one projection per call | {base_cpu:,.0f} | {base_wall:,.0f} |
| speed-up of batching (CPU time) | {r["speedup_vs_baseline"]:.2f}x | |
| `simulate OUT.h5` end to end (render, write) | | {r["packed_write_images_per_s"]:,.0f} |

Target: at least 1,000 images/s at 64x64 on one core.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=125)
    parser.add_argument("--projections", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    result = run(args.systems, args.projections, args.size, args.runs)
    text = section(result)
    publish(text, result, write=not args.no_write)


if __name__ == "__main__":
    main()
