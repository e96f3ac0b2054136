"""The floors of DESIGN.md hold: no module imports a higher floor, and there are no cycles."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    """`lint-imports` (import-linter) checks the layers and acyclic-siblings contracts."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 kept, 0 broken" in run.stdout


def test_contracts_would_catch_an_upward_import(tmp_path):
    """The layers contract is not vacuous: a data module importing the CLI breaks it."""
    import grimp

    graph = grimp.build_graph("twinsight", cache_dir=None)
    graph.add_import(importer="twinsight.data.collection", imported="twinsight.cli")
    layers = [
        "twinsight.cli",
        "twinsight.api",
        "twinsight.data",
    ]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    assert any(d.importer == "twinsight.data" and d.imported == "twinsight.cli" for d in illegal)
