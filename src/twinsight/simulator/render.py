"""Rendering: one protostellar system, seen from K viewing angles, as float32 [K, S, S].

The scene (all lengths in AU; the field of view is fixed at
:data:`FIELD_OF_VIEW_AU`, so the pixel scale is ``FIELD_OF_VIEW_AU / S``):

* a **central star**, a point source blurred by a 0.7-pixel PSF, extincted by the
  envelope (less when the line of sight runs down an outflow cavity) and by the
  disk's dark lane when seen edge-on;
* a **flared disk** of outer radius ``disk_size`` with a sharp outer edge, whose
  flaring ``h ~ M^-1/2 L^1/8 (R/100 AU)^1/4`` (hydrostatic) sets both its projected
  thickness and how much starlight it catches; its radial profile steepens with
  ``temperature``; above ~65 degrees a dark lane crosses it;
* an **envelope** whose brightness and extent grow with ``Envelope_mass``, with a
  warm core whose radius grows as ``sqrt(luminosity)`` and a profile that steepens
  with ``temperature`` (more evolved, more compact);
* **bipolar outflow cavities** whose half-opening angle widens with ``age``; their
  walls shine in proportion to ``accretion_rate``; a knotty jet along the axis
  whose brightness follows ``accretion_rate`` and whose length grows with ``age``;
  the receding lobe is dimmed by the envelope;
* an optional **companion** on an orbit in the disk plane.

Every image gets Gaussian noise of :data:`NOISE_LEVEL` times its peak, drawn from
the ``rng`` passed in (one stream per system), so the same seed gives the same
bits. All work is vectorized over the K projections and the S x S pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from twinsight.errors import TwinsightError
from twinsight.simulator.priors import PARAMETERS
from twinsight.validation import check_scalar

#: Field of view of every image, in AU (the pixel scale is this divided by the size).
FIELD_OF_VIEW_AU = 1000.0
#: Smallest image size the renderer accepts.
MIN_SIZE = 16
#: Standard deviation of the per-image Gaussian noise, as a fraction of the image peak.
NOISE_LEVEL = 0.01
#: Width (sigma) of the point-spread function of the star, in pixels.
PSF_SIGMA_PIX = 0.7

_F = np.float32


def pixel_scale(size: int) -> float:
    """AU per pixel for an image of ``size`` x ``size`` pixels."""
    return FIELD_OF_VIEW_AU / size


def _check_params(params: Mapping[str, float]) -> dict[str, float]:
    missing = [p for p in PARAMETERS if p not in params]
    if missing:
        raise TwinsightError(
            f"render_system: missing parameter(s) {missing}; expected all of {list(PARAMETERS)}"
        )
    out = {}
    for name in PARAMETERS:
        value = float(params[name])
        if not np.isfinite(value) or value <= 0:
            raise TwinsightError(
                f"render_system: parameter '{name}' must be a positive finite number, "
                f"got {params[name]!r}"
            )
        out[name] = value
    return out


def _grid(size: int, pa_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Sky coordinates rotated by the position angle: ``u`` along the disk, ``v`` along the axis."""
    scale = pixel_scale(size)
    axis = (np.arange(size, dtype=_F) - size // 2) * _F(scale)
    y = axis[None, :, None]
    x = axis[None, None, :]
    pa = np.radians(pa_deg).astype(_F)[:, None, None]
    sin_pa, cos_pa = np.sin(pa), np.cos(pa)
    u = x * cos_pa - y * sin_pa
    v = x * sin_pa + y * cos_pa
    return u, v, scale


def _column(values: np.ndarray) -> np.ndarray:
    return values.astype(_F)[:, None, None]


def _disk_aspect(p: dict[str, float]) -> float:
    """Aspect ratio H/R at the disk edge: hydrostatic flaring."""
    h = 0.12 * (p["mass"] / 0.5) ** -0.5 * p["luminosity"] ** 0.125 * (p["disk_size"] / 100) ** 0.25
    return float(np.clip(h, 0.04, 0.35))


def _envelope_tau(p: dict[str, float]) -> float:
    """Optical depth of the envelope towards the star."""
    return float(min(2.0 * (p["Envelope_mass"] / 0.1) ** 0.5, 12.0))


def _cavity_angle(p: dict[str, float]) -> float:
    """Half-opening angle of the outflow cavities in degrees: widens with age."""
    return float(8.0 + 16.0 * (np.log10(p["age"]) - 4.0))


def _pow_even(x: np.ndarray, n: int) -> np.ndarray:
    """``x ** n`` for even ``n`` by repeated squaring (numpy's float pow is slow)."""
    x2 = x * x
    out = x2
    for _ in range(n // 2 - 1):
        out = out * x2
    return out


def _disk(p, u, v, cos_i, sin_i, h):
    """Disk surface brightness and the optical depth of its dark lane."""
    rd = _F(p["disk_size"])
    q = np.sqrt(cos_i**2 + (h * sin_i) ** 2)
    r = np.sqrt(u * u + (v / q) ** 2)
    slope = _F(np.clip(0.9 + 0.4 * np.log10(p["temperature"] / 300.0), 0.3, 1.8))
    amplitude = _F((h / 0.12) ** 0.7)
    # (1 + r / (0.25 rd)) ** -slope * exp(-(r / rd) ** 6), as one exp
    log_core = np.log1p(r * (_F(4.0) / rd))
    disk = np.exp(-slope * log_core - _pow_even(r * (_F(1.0) / rd), 6))
    disk *= amplitude / np.sqrt(q)
    lane_width = _F(0.35) * q * rd + _F(4.0)
    lane_depth = _F(5.0) * _pow_even(sin_i, 8)
    lane = lane_depth * np.exp(
        _F(-0.5) * (v / lane_width) ** 2 - _pow_even(u * (_F(1.0) / (_F(1.1) * rd)), 8)
    )
    return disk, lane


def _envelope(p, u, v, sin_i, radius):
    """Envelope brightness: flattened towards the disk plane, warm core ~ sqrt(L)."""
    menv = p["Envelope_mass"] / 0.1
    amplitude = _F(np.clip(0.6 * menv**0.8, 0.003, 6.0))
    extent = _F(np.clip(160.0 * menv**0.45, 50.0, 900.0))
    core = _F(np.clip(25.0 * p["luminosity"] ** 0.5, 8.0, 150.0))
    slope = _F(np.clip(0.8 + 0.5 * np.log10(p["temperature"] / 30.0), 0.4, 2.5))
    flat = _F(1.0) + _F(0.6) * sin_i
    r_flat = np.sqrt(u * u + (v * flat) ** 2)
    # amplitude * (1 + r / core) ** -slope * exp(-(r / extent) ** 2), as one exp
    env = np.exp(-slope * np.log1p(r_flat * (_F(1.0) / core)) - (r_flat * (_F(1.0) / extent)) ** 2)
    env *= amplitude
    return env, float(amplitude), float(extent), radius


def _cavities(p, u, v, sin_i, cos_i, radius, env_amplitude, extent, scale, tau_env):
    """Outflow cavities (evacuated interior, bright walls) and the jet along the axis."""
    theta = np.radians(_cavity_angle(p))
    tan_proj = np.float32(np.tan(theta)) / np.maximum(sin_i, _F(np.tan(theta)) * _F(0.2))
    abs_u, abs_v = np.abs(u), np.abs(v)
    t = abs_u / (abs_v * tan_proj + _F(2.0 * scale))
    # Seen down the cone (i < opening angle) the cavity projects as a round hole.
    down = np.clip(sin_i / _F(np.sin(theta)), 0.0, 1.0)
    t = down * t + (1 - down) * radius * _F(1.0 / (extent * np.tan(theta) + 2.0 * scale))
    interior = np.exp(-_pow_even(t, 4))
    mdot = p["accretion_rate"] / 1e-6
    wall_amp = _F(0.5 * mdot**0.45 * env_amplitude**0.5)
    reach = _F(1.2) * _F(extent) + _F(100.0)
    wall_arg = ((t - 1) * _F(1 / 0.3)) ** 2 + (radius * (_F(1.0) / reach)) ** 2
    walls = wall_amp * np.exp(-wall_arg) / (1 + radius * _F(1 / 40.0))
    jet_amp = _F(np.clip(0.2 * mdot**0.5, 0.0, 0.8))
    jet_len = _F(60.0 * (p["age"] / 1e4) ** 0.5) * sin_i + _F(scale)
    knots = _F(0.75) + _F(0.25) * np.cos(v * _F(2 * np.pi / 60.0))
    jet_arg = _F(-0.5) * (u * _F(1.0 / (0.8 * scale))) ** 2 - abs_v / jet_len
    jet = jet_amp * knots * np.exp(jet_arg)
    far_dim = np.exp(_F(-0.5 * tau_env) * cos_i) - _F(1.0)
    far = _F(1.0) + (v < 0) * far_dim
    return interior, (walls + jet) * far


def _gaussian_spot(size: int, scale: float, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
    """PSF-shaped spots [K, S, S] centred at sky offsets (x0, y0) in AU, built separably."""
    axis = (np.arange(size, dtype=_F) - size // 2) * _F(scale)
    inv = _F(1.0 / (2.0 * (PSF_SIGMA_PIX * scale) ** 2))
    gx = np.exp(-((axis[None, :] - x0.astype(_F)[:, None]) ** 2) * inv)
    gy = np.exp(-((axis[None, :] - y0.astype(_F)[:, None]) ** 2) * inv)
    return gy[:, :, None] * gx[:, None, :]


def _point_sources(p, companion, size, pa_deg, cos_i, inclination, scale, tau_env):
    """The star (extincted unless seen down a cavity) and the optional companion."""
    k = len(inclination)
    base = 1.2 * p["luminosity"] ** 0.15
    down_cavity = 1.0 / (1.0 + np.exp((inclination - _cavity_angle(p)) / 5.0))
    tau = tau_env * (1.0 - 0.7 * down_cavity)
    star = _gaussian_spot(size, scale, np.zeros(k), np.zeros(k))
    star *= _column(base * np.exp(-tau))
    if companion is not None:
        sep, phase, ratio = companion
        cu = sep * np.cos(np.radians(phase))
        cv = sep * np.sin(np.radians(phase)) * cos_i[:, 0, 0].astype(np.float64)
        pa = np.radians(pa_deg)
        x0 = cu * np.cos(pa) + cv * np.sin(pa)  # inverse of the rotation in _grid
        y0 = -cu * np.sin(pa) + cv * np.cos(pa)
        spot = _gaussian_spot(size, scale, x0, y0)
        star += _F(base * ratio * np.exp(-0.3 * tau_env)) * spot
    return star


def _companion(params: Mapping[str, float]) -> tuple[float, float, float] | None:
    if not bool(params.get("has_companion", False)):
        return None
    return (
        float(params["companion_separation"]),
        float(params["companion_phase"]),
        float(params["companion_ratio"]),
    )


def render_system(
    params: Mapping[str, float],
    inclinations: Sequence[float] | np.ndarray,
    position_angles: Sequence[float] | np.ndarray,
    size: int = 64,
    rng: np.random.Generator | None = None,
    *,
    noise: float = NOISE_LEVEL,
) -> np.ndarray:
    """Render one system from K viewing angles (degrees) as float32 [K, size, size].

    ``params`` holds the seven parameters (and optionally the companion columns
    of :func:`~twinsight.simulator.priors.simulate_systems`); ``rng`` draws the
    noise (none when ``rng`` is None or ``noise`` is 0).
    """
    p = _check_params(params)
    inclination = np.atleast_1d(np.asarray(inclinations, dtype=np.float64))
    pa = np.atleast_1d(np.asarray(position_angles, dtype=np.float64))
    if inclination.shape != pa.shape or inclination.ndim != 1:
        raise TwinsightError(
            f"render_system: inclinations {inclination.shape} and position angles {pa.shape} "
            "must be 1-D of the same length"
        )
    size = check_scalar(size, "image size", int, min_val=MIN_SIZE)
    u, v, scale = _grid(size, pa)
    cos_i = _column(np.cos(np.radians(inclination)))
    sin_i = _column(np.sin(np.radians(inclination)))
    radius = np.sqrt(u * u + v * v)
    h = _disk_aspect(p)
    tau_env = _envelope_tau(p)
    disk, lane = _disk(p, u, v, cos_i, sin_i, _F(h))
    env, env_amp, extent, radius = _envelope(p, u, v, sin_i, radius)
    interior, outflow = _cavities(p, u, v, sin_i, cos_i, radius, env_amp, extent, scale, tau_env)
    stars = _point_sources(p, _companion(params), int(size), pa, cos_i, inclination, scale, tau_env)
    image = (disk + env * (_F(1.0) - _F(0.85) * interior) + outflow + stars) * np.exp(-lane)
    if rng is not None and noise > 0:
        peak = image.reshape(len(image), -1).max(axis=1)[:, None, None]
        image = image + rng.standard_normal(image.shape, dtype=_F) * (_F(noise) * peak)
    return np.ascontiguousarray(image, dtype=_F)
