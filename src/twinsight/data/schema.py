"""The bottom floor: names and constants that readers, collections and the simulator share.

Everything here is plain data (tuples, dicts, strings) and imports nothing of
twinsight, so any module may import it without pulling in a reader, h5py or
the simulator. It exists to break the cycle readers -> builtins -> simulate ->
priors -> readers: the simulator's parameter names live here, not in a reader.
"""

from __future__ import annotations

#: Column names with a fixed meaning; every other numeric column may be a parameter.
RESERVED_COLUMNS: tuple[str, ...] = (
    "key",
    "label",
    "system",
    "projection",
    "split",
    "source",
    "path",
)

#: The seven simulator parameters of seed 000, in the seed's order (their canonical names).
SIMULATOR_PARAMETERS: tuple[str, ...] = (
    "Envelope_mass",
    "accretion_rate",
    "temperature",
    "mass",
    "disk_size",
    "luminosity",
    "age",
)

#: Units of the seven parameters (stored in the items meta, HDF5 and FITS headers).
SIMULATOR_UNITS: dict[str, str] = {
    "Envelope_mass": "Msun",
    "accretion_rate": "Msun/yr",
    "temperature": "K",
    "mass": "Msun",
    "disk_size": "AU",
    "luminosity": "Lsun",
    "age": "yr",
}

#: Per-projection attributes of seed-layout intensity datasets, kept as item columns.
PROJECTION_ATTRIBUTES: tuple[str, ...] = ("inclination", "position_angle")

#: Projection ``k`` (1-based) of a seed-layout per-system HDF5 file is ``<prefix><k>``.
PROJECTION_PREFIX = "intensity_projection_"

#: Prefix of the FITS header cards that carry an observation's true parameter values.
TRUTH_PREFIX = "TRUE_"


def canonical_parameter(name: str) -> str | None:
    """The simulator's spelling of ``name`` when it is one of its parameters (any case)."""
    return _CANONICAL.get(name.lower())


_CANONICAL = {p.lower(): p for p in SIMULATOR_PARAMETERS}
