"""The design choice, measured: re-embed the library through the instrument, or only calibrate.

For each instrument, new systems are rendered through it (``observe_image``) and matched
two ways with the same model:

- **calibrate only** (twinsight's way): the library stays embedded clean; the intervals
  are calibrated on the validation systems seen through the instrument;
- **re-embed**: every library image is seen through the instrument too (seeded), embedded
  again and indexed; the calibration is fitted against that library.

It prints, per way and instrument, R^2 of the median (log10) and 68 % / 95 % coverage per
parameter, and the seconds the way costs for a new instrument; the last line is JSON.

    python scripts/reembed_vs_calibrate.py RUN DATA IDX --systems 400
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from instrument_grid import cell_figures, render

import twinsight
from twinsight.embedding import embed_images
from twinsight.index import SimilarityIndex
from twinsight.instrument import Instrument, degrade, parse_instrument


def reembedded(bundle, data, index: SimilarityIndex, inst: Instrument) -> SimilarityIndex:
    """The library seen through ``inst`` (one seeded draw per image), embedded and indexed."""
    rng = np.random.default_rng(12345)
    library_snr = index.meta.get("library_snr")
    parts = [
        embed_images(bundle.encoder, degrade(images, inst, seed=rng, library_snr=library_snr),
                     bundle.preprocessing)
        for _, images in data.iter_batches(512)
    ]  # fmt: skip
    keep = {k: index.meta[k] for k in ("pixel_scale_au", "library_snr", "source")}
    return SimilarityIndex.build(
        np.concatenate(parts), data.items, model_fingerprint=bundle.fingerprint,
        model_path=str(bundle.folder), param_columns=index.param_columns,
        normalizer=index.meta.get("normalizer"), units=index.meta.get("units"), extra=keep,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("index")
    ap.add_argument("--systems", type=int, default=400)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--instrument", action="append", default=None)
    args = ap.parse_args()
    bundle = twinsight.load_model(args.run)
    data = twinsight.open_collection(args.data)
    index = twinsight.load_index(args.index)
    seeds = list(range(args.seed, args.seed + args.systems))
    out = {}
    for text in args.instrument or ["beam=2,snr=30", "beam=0,snr=10", "beam=3,snr=100"]:
        inst = parse_instrument(text)
        images, truths = render(seeds, inst.beam_major, inst.snr or float("inf"), 64)
        ways = {}
        start = time.perf_counter()
        est = twinsight.match(index, images, model=bundle, instrument=inst)
        seconds = time.perf_counter() - start
        ways["calibrate only"] = {"seconds": seconds, **cell_figures(est, truths)}
        start = time.perf_counter()
        library = reembedded(bundle, data, index, inst)
        est = twinsight.match(library, images, model=bundle, instrument=inst)
        ways["re-embed"] = {"seconds": time.perf_counter() - start, **cell_figures(est, truths)}
        for way, fig in ways.items():
            params = fig["parameters"]
            print(f"{text:16s} {way:15s} {fig['seconds']:6.1f} s  " + "  ".join(
                f"{n[:8]} R2 {p['r2']:.2f} c68 {p['coverage_68']:.2f} c95 {p['coverage_95']:.2f}"
                for n, p in params.items()), flush=True)  # fmt: skip
        out[text] = ways
    print(json.dumps(out))


if __name__ == "__main__":
    main()
