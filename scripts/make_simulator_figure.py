"""Make docs/figures/simulated_grid.png: simulated systems along age and inclination.

Columns step through age (10^4 to 10^6 yr) with the other parameters following
the prior's evolutionary trends (envelope draining, disk growing, accretion
fading); rows step through inclination (face-on to edge-on). Each panel is
min-max normalized, as the network sees it, and shown with an asinh stretch.

    python scripts/make_simulator_figure.py [--out docs/figures/simulated_grid.png]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from twinsight.fsutil import atomic_file  # noqa: E402
from twinsight.simulator import render_system  # noqa: E402
from twinsight.simulator.priors import parameters_on_track, system_rng  # noqa: E402

AGES = (1e4, 3e4, 1e5, 3e5, 1e6)
INCLINATIONS = (0.0, 40.0, 65.0, 80.0, 90.0)


def evolutionary_params(age: float, mass: float = 0.5) -> dict[str, float]:
    """Parameters on the prior's mean trend at ``age`` (no scatter), for a ``mass`` star."""
    return parameters_on_track(np.log10(age), mass)


def make_figure(out: Path, size: int = 64) -> Path:
    """Render the grid and save it as a small PNG."""
    fig, axes = plt.subplots(
        len(INCLINATIONS), len(AGES), figsize=(1.55 * len(AGES), 1.6 * len(INCLINATIONS))
    )
    for col, age in enumerate(AGES):
        params = evolutionary_params(age)
        images = render_system(
            params, INCLINATIONS, [30.0] * len(INCLINATIONS), size, system_rng(0, col, 2)
        )
        for row, image in enumerate(images):
            norm = (image - image.min()) / (image.max() - image.min())
            ax = axes[row, col]
            ax.imshow(np.arcsinh(norm / 0.05), origin="lower", cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(
                    f"age {age:.0e} yr\nMenv {params['Envelope_mass']:.2g}, "
                    f"R {params['disk_size']:.0f} AU",
                    fontsize=6,
                )
            if col == 0:
                ax.set_ylabel(f"i = {INCLINATIONS[row]:.0f} deg", fontsize=7)
    fig.suptitle("twinsight simulator: age (columns) x inclination (rows), 0.5 Msun", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    buffer.seek(0)
    # a 128-colour palette keeps the PNG small enough to commit
    image = Image.open(buffer).convert("RGB").quantize(colors=128)
    with atomic_file(out, overwrite=True) as tmp:
        image.save(tmp, format="png", optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument(
        "--out", type=Path, default=root / "docs" / "figures" / "simulated_grid.png"
    )
    args = parser.parse_args()
    path = make_figure(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
