"""Priors of the protostellar simulator: the seven seed-000 parameters of one system.

Every system follows an evolutionary sequence in log age (10^4 to 10^6 yr,
log-uniform): the envelope drains, the disk grows, accretion fades. Each
parameter has its own independent log-normal scatter on top of the trend, so
that no parameter is a deterministic function of the others: each one can be
changed alone and is identifiable from the image.

Random numbers come from one stream per system,
``np.random.default_rng([seed, system_index, stream])``, so a system's
parameters, viewing angles and noise never depend on how many systems were
drawn before it or on batch boundaries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from twinsight.data.schema import SIMULATOR_PARAMETERS, SIMULATOR_UNITS
from twinsight.validation import check_scalar

#: The seven physical parameters, named exactly as in the seed-000 files.
PARAMETERS: tuple[str, ...] = SIMULATOR_PARAMETERS

#: Units of the seven parameters (stored in the items meta, HDF5 and FITS headers).
UNITS: dict[str, str] = SIMULATOR_UNITS

#: One-line descriptions (docs, FITS header comments).
DESCRIPTIONS: dict[str, str] = {
    "Envelope_mass": "envelope mass",
    "accretion_rate": "disk-to-star accretion rate",
    "temperature": "bolometric temperature",
    "mass": "stellar mass",
    "disk_size": "disk outer radius",
    "luminosity": "total luminosity (photosphere + accretion)",
    "age": "age since collapse",
}

#: Random streams of one system (third entry of the seed sequence).
STREAM_PARAMS, STREAM_VIEWS, STREAM_NOISE = 0, 1, 2

#: Accretion luminosity G * Msun * (1e-6 Msun/yr) / Rsun, in Lsun.
L_ACC_UNIT = 31.4

#: Hard limits that keep every parameter physical (values are clipped to them).
LIMITS: dict[str, tuple[float, float]] = {
    "Envelope_mass": (1e-3, 10.0),
    "accretion_rate": (1e-10, 1e-4),
    "temperature": (10.0, 5000.0),
    "mass": (0.05, 5.0),
    "disk_size": (10.0, 500.0),
    "luminosity": (0.01, 1e4),
    "age": (1e3, 1e7),
}

#: Columns describing the optional companion (not parameters; nuisance of the scene).
COMPANION_COLUMNS = ("has_companion", "companion_separation", "companion_phase", "companion_ratio")


def system_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random generator of one system's ``stream`` (params, views or noise)."""
    return np.random.default_rng([int(seed), int(index), int(stream)])


def stellar_radius(mass: float, age: float) -> float:
    """Pre-main-sequence radius in Rsun: contracting with age, larger for massive stars."""
    return float(2.5 * mass**0.45 * (age / 1e5) ** -0.25)


def photospheric_luminosity(mass: float, age: float) -> float:
    """Photospheric luminosity in Lsun of a contracting young star (Hayashi-like track)."""
    return float(1.2 * mass**1.6 * (age / 1e5) ** -0.55)


def accretion_luminosity(mass: float, accretion_rate: float, radius: float) -> float:
    """Accretion luminosity G M Mdot / R in Lsun (mass Msun, rate Msun/yr, radius Rsun)."""
    return float(L_ACC_UNIT * mass * (accretion_rate / 1e-6) / radius)


def bolometric_temperature(luminosity: float, envelope_mass: float, mass: float) -> float:
    """A bolometric-temperature-like quantity in K.

    It rises as the envelope thins relative to the star (Class 0 below 70 K,
    Class I up to 650 K, Class II beyond) and mildly with luminosity.
    """
    ratio = envelope_mass / mass
    return float(70.0 * ratio**-0.6 * luminosity**0.1)


def parameters_on_track(
    log_age: float,
    mass: float,
    *,
    envelope_dex: float = 0.0,
    disk_dex: float = 0.0,
    accretion_dex: float = 0.0,
    luminosity_dex: float = 0.0,
    temperature_dex: float = 0.0,
) -> dict[str, float]:
    """The seven parameters on the evolutionary track, each offset by its own scatter (dex).

    With no offsets this is the prior's mean trend (used for the README figure); the
    values are not clipped to :data:`LIMITS`.
    """
    x = log_age - 4.0  # 0 (Class 0) ... 2 (Class II)
    age = 10.0**log_age
    env = 10.0 ** (-0.3 - 0.85 * x + 0.3 * np.log10(mass) + envelope_dex)
    disk = 10.0 ** (np.log10(25.0) + 0.55 * x + 0.2 * np.log10(mass) + disk_dex)
    mdot = 10.0 ** (-5.2 - 0.9 * x + 0.6 * np.log10(mass) + accretion_dex)
    radius = stellar_radius(mass, age)
    lum = photospheric_luminosity(mass, age) + accretion_luminosity(mass, mdot, radius)
    lum *= 10.0**luminosity_dex
    temp = bolometric_temperature(lum, env, mass) * 10.0**temperature_dex
    return {
        "Envelope_mass": env,
        "accretion_rate": mdot,
        "temperature": temp,
        "mass": mass,
        "disk_size": disk,
        "luminosity": lum,
        "age": age,
    }


def draw_parameters(rng: np.random.Generator) -> dict[str, float]:
    """Draw the seven parameters of one system (see module docstring for the model)."""
    log_age = rng.uniform(4.0, 6.0)
    mass = 10.0 ** rng.uniform(np.log10(0.1), np.log10(3.0))
    values = parameters_on_track(
        log_age,
        mass,
        envelope_dex=rng.normal(0.0, 0.3),
        disk_dex=rng.normal(0.0, 0.18),
        accretion_dex=rng.normal(0.0, 0.4),
        luminosity_dex=rng.normal(0.0, 0.12),
        temperature_dex=rng.normal(0.0, 0.12),
    )
    return {k: float(np.clip(v, *LIMITS[k])) for k, v in values.items()}


def draw_companion(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the optional companion: present in 30 % of systems.

    ``companion_separation`` in AU (log-uniform 60-450), ``companion_phase`` in
    degrees (its position on its orbit in the disk plane) and ``companion_ratio``
    its brightness relative to the primary star (0.1-0.6).
    """
    present = bool(rng.uniform() < 0.3)
    separation = float(10.0 ** rng.uniform(np.log10(60.0), np.log10(450.0)))
    phase = float(rng.uniform(0.0, 360.0))
    ratio = float(rng.uniform(0.1, 0.6))
    if not present:
        separation = phase = ratio = 0.0
    return {
        "has_companion": present,
        "companion_separation": separation,
        "companion_phase": phase,
        "companion_ratio": ratio,
    }


def system_name(index: int) -> str:
    """The system id of row ``index``: ``sys00000``, ``sys00001``, ..."""
    return f"sys{int(index):05d}"


def check_count(value: int, what: str, minimum: int = 1) -> int:
    """Validate a count option (systems, projections, size, ...) and return it as int."""
    return check_scalar(value, what, int, min_val=minimum)


def simulate_systems(n_systems: int, *, seed: int = 0, start: int = 0) -> pd.DataFrame:
    """One row per system: ``system`` id, the seven parameters and the companion columns.

    Row ``i`` is system ``start + i`` and depends only on ``(seed, start + i)``.
    """
    n_systems = check_count(n_systems, "number of systems")
    rows = []
    for index in range(start, start + n_systems):
        rng = system_rng(seed, index, STREAM_PARAMS)
        row: dict[str, Any] = {"system": system_name(index)}
        row.update(draw_parameters(rng))
        row.update(draw_companion(rng))
        rows.append(row)
    return pd.DataFrame(rows, columns=["system", *PARAMETERS, *COMPANION_COLUMNS])


def draw_views(n_projections: int, *, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Viewing angles of one system in degrees: inclination (cos i uniform) and PA (0-360)."""
    n_projections = check_count(n_projections, "number of projections")
    rng = system_rng(seed, index, STREAM_VIEWS)
    cos_i = rng.uniform(0.0, 1.0, n_projections)
    inclination = np.degrees(np.arccos(cos_i))
    position_angle = rng.uniform(0.0, 360.0, n_projections)
    return inclination, position_angle
