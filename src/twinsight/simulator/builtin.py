"""The built-in collection ``protostars``: a small simulated set, made on the spot.

Declared as a ``twinsight.builtins`` entry point in ``pyproject.toml``, so that
``open_collection("protostars")`` finds it while the data floor never imports
the simulator.
"""

from __future__ import annotations

from twinsight.data.collection import Collection
from twinsight.simulator.writers import simulate_collection


def load_protostars() -> Collection:
    """100 protostellar systems x 8 projections, 64x64, seed 0."""
    collection = simulate_collection(n_systems=100, n_projections=8, size=64, seed=0)
    collection.name = "protostars"
    collection.meta.setdefault("builtin", "protostars")
    return collection
