"""The protostellar simulator: parameters -> images, like the astronomer's simulation set.

``simulate_systems`` draws the seven seed-000 parameters from correlated priors
(:mod:`.priors`), ``render_system`` draws one system from K viewing angles
(:mod:`.render`), ``simulate_collection`` gives an in-memory
:class:`~twinsight.data.collection.Collection`, the writers produce the seed-000
per-system HDF5 layout or one packed file (:mod:`.writers`), and ``observe``
writes one telescope-like FITS observation (:mod:`.observe`). The physical
model is documented in the README ("The protostellar simulator").
"""

from __future__ import annotations

from twinsight.simulator.observe import observe, observe_image
from twinsight.simulator.priors import PARAMETERS, UNITS, draw_views, simulate_systems
from twinsight.simulator.render import FIELD_OF_VIEW_AU, pixel_scale, render_system
from twinsight.simulator.writers import (
    SIMULATOR_VERSION,
    simulate_collection,
    split_by_system,
    write_packed_simulation,
    write_seed_layout,
    write_simulation,
)

__all__ = [
    "FIELD_OF_VIEW_AU",
    "PARAMETERS",
    "SIMULATOR_VERSION",
    "UNITS",
    "draw_views",
    "observe",
    "observe_image",
    "pixel_scale",
    "render_system",
    "simulate_collection",
    "simulate_systems",
    "write_packed_simulation",
    "write_seed_layout",
    "split_by_system",
    "write_simulation",
]
