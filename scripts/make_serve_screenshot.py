"""Make docs/figures/serve.png: the page of ``twinsight serve`` in Debian's chromium.

Simulates a small set, trains a small CNN on it for a few epochs (or uses a random one
with ``--untrained``), indexes it, writes a simulated FITS observation, serves the page
on 127.0.0.1, uploads the observation, compares two images, and screenshots the page.

    python scripts/make_serve_screenshot.py [--out docs/figures/serve.png]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import twinsight
from twinsight.serve import create_app

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # fmt: skip


def build(root: Path, untrained: bool, epochs: int) -> dict:
    sims = twinsight.simulate(root / "sims.h5", n_systems=250, size=32, val_fraction=0.15)
    if untrained:
        import torch

        from twinsight.models.bundle import ModelBundle
        from twinsight.models.encoders import create_encoder

        torch.manual_seed(0)
        enc = create_encoder("small-cnn", in_channels=1, input_size=(32, 32))
        ModelBundle.from_encoder(enc).save(root / "run" / "model")
    else:
        twinsight.train(sims, root / "run", targets="params", encoder="small-cnn", epochs=epochs)
    twinsight.build_index(root / "run", sims).save(root / "idx")
    truth = twinsight.observe(root / "obs.fits", seed=3, size=32)
    pngs = []
    for i, row in enumerate((5, 6)):
        img = sims.images(np.array([row]))[0, 0]
        pngs.append(root / f"image{i}.png")
        Image.fromarray((255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)).save(pngs[-1])
    return {"idx": root / "idx", "obs": root / "obs.fits", "pngs": pngs, "truth": truth}


def screenshot(world: dict, out: Path) -> None:
    import uvicorn
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(world["idx"]), host="127.0.0.1",
                                           port=port, log_level="warning"))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/?k=12&top=50")
        expect(page.locator("body[data-ready=true]")).to_have_count(1, timeout=30_000)
        page.set_input_files("#compare-a", str(world["pngs"][0]))
        page.set_input_files("#compare-b", str(world["pngs"][1]))
        page.click("#compare-form button")
        expect(page.locator("#comparison")).to_be_visible(timeout=30_000)
        page.set_input_files("#query-file", str(world["obs"]))
        expect(page.locator("#histograms figure").first).to_be_visible(timeout=30_000)
        page.wait_for_function("document.getElementById('query-image').naturalWidth > 0")
        page.wait_for_timeout(500)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    server.should_exit = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "serve.png"))
    ap.add_argument("--untrained", action="store_true", help="A random model (fast).")
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="twinsight-screenshot-") as tmp:
        world = build(Path(tmp), args.untrained, args.epochs)
        screenshot(world, Path(args.out))
    print(f"screenshot -> {args.out}")


if __name__ == "__main__":
    main()
