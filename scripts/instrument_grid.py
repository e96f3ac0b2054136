"""Coverage and recovery of best-match estimates for new systems seen through each instrument.

New systems (never in the library: ``observe_image`` draws from streams of its own) are
rendered through every instrument of the grid, beam in {0, 1, 2, 3} px x peak SNR in
{10, 30, 100, no noise}, and matched with ``twinsight.match(..., instrument=...)``: the
intervals are calibrated for each instrument on the model's validation systems. Per cell
and parameter it reports the 68 % and 95 % coverage and R^2 of the median (log10 for the
log-scaled parameters), and the share of observations warned as atypical.

    python scripts/instrument_grid.py IDX --systems 400 --markdown grid.md

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

import twinsight
from twinsight.instrument import Instrument
from twinsight.simulator.observe import observe_image

BEAMS = (0.0, 1.0, 2.0, 3.0)
SNRS = (10.0, 30.0, 100.0, math.inf)
TARGET_68 = (0.60, 0.76)
TARGET_95 = (0.90, 0.98)


def render(seeds: list[int], beam: float, snr: float, size: int) -> tuple[np.ndarray, list]:
    images, truths = [], []
    for seed in seeds:
        image, truth = observe_image(seed=seed, size=size, snr=snr, beam_fwhm=beam)
        images.append(image[None])
        truths.append(truth)
    return np.stack(images), truths


def cell_figures(estimates: list, truths: list) -> dict:
    names = list(estimates[0].parameters)
    out = {}
    for name in names:
        log = estimates[0].parameters[name].scale == "log"
        f = np.log10 if log else (lambda x: x)
        truth = np.array([t[name] for t in truths], dtype=float)
        med = np.array([e.parameters[name].median for e in estimates])
        i68 = np.array([e.parameters[name].interval_68 for e in estimates])
        i95 = np.array([e.parameters[name].interval_95 for e in estimates])
        resid = f(truth) - f(med)
        out[name] = {
            "coverage_68": float(np.mean((truth >= i68[:, 0]) & (truth <= i68[:, 1]))),
            "coverage_95": float(np.mean((truth >= i95[:, 0]) & (truth <= i95[:, 1]))),
            "r2": float(1 - np.mean(resid**2) / np.var(f(truth))),
        }
    warned = np.mean([bool(e.typicality and e.typicality["atypical"]) for e in estimates])
    return {"parameters": out, "atypical": float(warned)}


def markdown(cells: dict, names: list[str]) -> str:
    head = "| beam / SNR | " + " | ".join(names) + " | atypical |"
    rule = "|---" * (len(names) + 2) + "|"
    rows = [head, rule]
    for key, cell in cells.items():
        parts = []
        for n in names:
            p = cell["parameters"][n]
            ok = TARGET_68[0] <= p["coverage_68"] <= TARGET_68[1] and (
                TARGET_95[0] <= p["coverage_95"] <= TARGET_95[1]
            )
            mark = "" if ok else " ✗"
            parts.append(f"{p['coverage_68']:.2f} / {p['coverage_95']:.2f}, R² {p['r2']:.2f}{mark}")
        rows.append(f"| {key} | " + " | ".join(parts) + f" | {cell['atypical']:.1%} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", help="index folder of the library (built with its model)")
    ap.add_argument("--systems", type=int, default=400, help="new systems per cell")
    ap.add_argument("--seed", type=int, default=10_000, help="first observation seed")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--markdown", help="write the grid as a Markdown table here")
    ap.add_argument("--beams", type=float, nargs="+", default=list(BEAMS))
    ap.add_argument("--snrs", type=float, nargs="+", default=list(SNRS), help="inf: none")
    args = ap.parse_args()
    index = twinsight.load_index(args.index)
    seeds = list(range(args.seed, args.seed + args.systems))
    cells, seconds = {}, {}
    for beam in args.beams:
        for snr in args.snrs:
            key = f"{beam:g} px / {'none' if math.isinf(snr) else f'{snr:g}'}"
            images, truths = render(seeds, beam, snr, args.size)
            start = time.perf_counter()
            estimates = twinsight.match(index, images, instrument=Instrument(beam, snr=snr))
            seconds[key] = time.perf_counter() - start
            cells[key] = cell_figures(estimates, truths)
            worst = min(p["coverage_68"] for p in cells[key]["parameters"].values())
            print(f"{key}: worst 68 % coverage {worst:.2f} ({seconds[key]:.1f} s)", flush=True)
    names = list(next(iter(cells.values()))["parameters"])
    table = markdown(cells, names)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    inside = [
        TARGET_68[0] <= p["coverage_68"] <= TARGET_68[1]
        and TARGET_95[0] <= p["coverage_95"] <= TARGET_95[1]
        for c in cells.values()
        for p in c["parameters"].values()
    ]
    summary = {"cells": cells, "seconds": seconds, "checks_inside": int(sum(inside)),
               "checks": len(inside), "systems": args.systems}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
