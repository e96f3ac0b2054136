"""No hidden or global state: backends, devices and working folders are the caller's.

Importing twinsight leaves matplotlib's backend alone (only the CLI picks Agg),
figures are made without pyplot, the embedding device is resolved per call, and an
index finds its model from any working folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

torch.set_num_threads(1)

SRC = Path(__file__).resolve().parents[1] / "src"


def _python(code: str, tmp_path: Path, backend: str = "svg") -> dict:
    """Run ``code`` in a fresh interpreter with MPLBACKEND=backend; it prints one JSON line."""
    env = os.environ | {"MPLBACKEND": backend, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_and_plotting_leaves_the_backend_alone(tmp_path):
    result = _python(
        """
        import json, sys
        import matplotlib
        before = matplotlib.get_backend()
        import numpy as np
        import twinsight, twinsight.plots as plots

        def draw():
            plots.plot_training_curves(
                [{"epoch": 0, "train_loss": 1.0, "val_p_at_1": 0.5},
                 {"epoch": 1, "train_loss": 0.5, "val_p_at_1": 0.7}], "curves.png")
            rng = np.random.default_rng(0)
            plots.plot_ranked_pairs(rng.random((6, 1, 8, 8)), rng.random((6, 1, 8, 8)),
                                    rng.random(6), rng.random(6), "pairs.png", n=2)
            plots.plot_coverage_calibration(
                {"levels": [0.5, 0.9], "observed": {"mass": [0.4, 0.8]}}, "coverage.svg")

        draw()
        pyplot_used = "matplotlib.pyplot" in sys.modules
        for name in twinsight.__all__:  # every public API module
            getattr(twinsight, name)
        draw()
        # a dependency (torchmetrics) imports pyplot; twinsight's figures never enter it
        plt = sys.modules.get("matplotlib.pyplot")
        figures = plt.get_fignums() if plt else []
        print(json.dumps({
            "before": before,
            "after": matplotlib.get_backend(),
            "pyplot": pyplot_used,
            "figures": figures,
        }))
        """,
        tmp_path,
    )
    assert result["before"] == "svg" and result["after"] == "svg"
    assert not result["pyplot"] and result["figures"] == []  # no pyplot global state
    for name in ("curves.png", "pairs.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "coverage.svg").read_bytes()[:500]


def test_the_command_line_picks_agg(tmp_path):
    result = _python(
        """
        import json, matplotlib
        from twinsight.cli import main
        try:
            main(["--version"])
        except SystemExit:
            pass
        print(json.dumps({"backend": matplotlib.get_backend()}))
        """,
        tmp_path,
    )
    assert result["backend"].lower() == "agg"
