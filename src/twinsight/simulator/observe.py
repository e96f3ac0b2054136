"""Observation mode: one new system as a telescope would see it, written as FITS.

The system is rendered without the simulator's own noise, convolved with a
Gaussian beam (FWHM in pixels), multiplied by a random flux scale and given
Gaussian noise such that peak / sigma equals the chosen SNR (``snr=inf``: no
noise at all, sigma 0).

The header is what an archive's would be: a celestial WCS (``RA---TAN`` /
``DEC--TAN`` at a fixed sky position, ``CRPIX`` on the source, ``CDELT`` in
degrees = pixel scale in AU / distance in pc / 3600, ``CDELT1`` negative so east
is left), the beam as ``BMAJ`` / ``BMIN`` / ``BPA`` in degrees (when it is not a
point), ``BUNIT = 'Jy/beam'`` (the flux scale is arbitrary) and ``DISTANCE`` (pc,
140 by default), so :func:`twinsight.intake.read_observation` reads it back like
a real one.

The primary HDU's header carries the truth: ``HIERARCH TRUE_<name>`` for each
of the seven parameters with their exact names (e.g. ``TRUE_Envelope_mass``,
the units in the comment), plus ``INCL`` and ``PA`` (degrees), ``BEAM`` (FWHM,
pixels), ``SNR`` (``'inf'`` for no noise), ``NOISE`` (sigma), ``SEED``, ``FLUXSCL``,
``PIXSCALE`` (AU/pixel), ``FOV_AU`` and ``COMPANIO`` (companion present).

Its random numbers come from streams of their own (``[seed, 0, 100 + k]``), so
an observation is never one of the systems of a simulated set of the same seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.ndimage import gaussian_filter

from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_file, check_output_path
from twinsight.simulator.priors import (
    PARAMETERS,
    UNITS,
    check_count,
    draw_companion,
    draw_parameters,
)
from twinsight.simulator.render import FIELD_OF_VIEW_AU, MIN_SIZE, pixel_scale, render_system

#: FWHM to Gaussian sigma.
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_OBSERVATION_STREAM = 100
#: Distance of a simulated observation when none is given, in pc (nearby star-forming regions).
DEFAULT_DISTANCE_PC = 140.0
#: Where on the sky the simulated observations lie (degrees; a Taurus-like field).
SKY_POSITION_DEG = (68.0, 25.0)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0, _OBSERVATION_STREAM + stream])


def _observed_params(params: Mapping[str, float] | None, seed: int) -> dict[str, Any]:
    """The prior draw of the observation's seed, with any given parameters put in its place."""
    rng = _rng(seed, 0)
    drawn: dict[str, Any] = draw_parameters(rng)
    drawn.update(draw_companion(rng))
    for name, value in (params or {}).items():
        if name not in PARAMETERS:
            raise TwinsightError(
                f"observe: unknown parameter '{name}'; expected one of {list(PARAMETERS)}"
            )
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TwinsightError(
                f"observe: parameter '{name}' must be a number, got {value!r}"
            ) from None
        if not np.isfinite(value) or value <= 0:
            raise TwinsightError(
                f"observe: parameter '{name}' must be positive and finite, got {value!r}"
            )
        drawn[name] = value
    return drawn


def _check_distance(distance: float) -> float:
    if not (np.isfinite(distance) and distance > 0):
        raise TwinsightError(f"observe: distance must be a positive number of pc, got {distance}")
    return float(distance)


def _check_angle(value: float | None, name: str, low: float, high: float) -> None:
    if value is not None and not (np.isfinite(value) and low <= value <= high):
        raise TwinsightError(f"observe: {name} must be in [{low}, {high}] degrees, got {value}")


def observe_image(
    params: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    size: int = 64,
    inclination: float | None = None,
    position_angle: float | None = None,
    snr: float = 30.0,
    beam_fwhm: float = 2.0,
    flux_scale: float | None = None,
    distance: float = DEFAULT_DISTANCE_PC,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one observation; returns the float32 [S, S] image and what was true of it.

    Parameters not given in ``params`` (and the viewing angles and flux scale
    when None) are drawn from the prior with ``seed``. ``snr=float('inf')`` adds no
    noise (``noise_sigma`` 0). ``distance`` (pc) only labels the observation: it sets
    the header's angular scale, not the image.
    """
    size = check_count(size, "image size (--size)", minimum=MIN_SIZE)
    if np.isnan(snr) or snr <= 0:
        raise TwinsightError(
            f"observe: SNR (--snr) must be a positive number (or inf for no noise), got {snr}"
        )
    distance = _check_distance(distance)
    if not (np.isfinite(beam_fwhm) and beam_fwhm >= 0):
        raise TwinsightError(f"observe: beam FWHM (--beam) must be >= 0 pixels, got {beam_fwhm}")
    if flux_scale is not None and not (np.isfinite(flux_scale) and flux_scale > 0):
        raise TwinsightError(f"observe: flux scale must be positive, got {flux_scale}")
    _check_angle(inclination, "inclination", 0.0, 180.0)
    _check_angle(position_angle, "position angle", -360.0, 360.0)
    truth = _observed_params(params, seed)
    rng = _rng(seed, 1)
    drawn_incl = float(np.degrees(np.arccos(rng.uniform(0.0, 1.0))))
    drawn_pa = float(rng.uniform(0.0, 360.0))
    drawn_scale = float(10.0 ** rng.uniform(-1.0, 1.0))
    incl = drawn_incl if inclination is None else float(inclination)
    pa = drawn_pa if position_angle is None else float(position_angle)
    scale = drawn_scale if flux_scale is None else float(flux_scale)
    image = render_system(truth, [incl], [pa], size, None)[0].astype(np.float64)
    if beam_fwhm > 0:
        image = gaussian_filter(image, beam_fwhm * FWHM_TO_SIGMA, mode="constant")
    image *= scale
    sigma = 0.0 if np.isinf(snr) else image.max() / snr
    if sigma > 0:
        image += _rng(seed, 2).normal(0.0, sigma, image.shape)
    truth.update(
        inclination=incl,
        position_angle=pa,
        flux_scale=scale,
        snr=float(snr),
        beam_fwhm=float(beam_fwhm),
        seed=int(seed),
        noise_sigma=float(sigma),
        distance=distance,
    )
    return image.astype(np.float32), truth


def _sky_header(header: fits.Header, size: int, distance: float, beam_fwhm: float) -> None:
    """A celestial TAN WCS centred on the source, and the beam in degrees (FITS convention)."""
    deg_per_pixel = pixel_scale(size) / distance / 3600.0  # 1 AU at 1 pc is 1 arcsec
    centre = size // 2 + 1  # the renderer's centre pixel (0-based size // 2), 1-based
    for axis, ctype, value, sign in ((1, "RA---TAN", SKY_POSITION_DEG[0], -1.0),
                                     (2, "DEC--TAN", SKY_POSITION_DEG[1], 1.0)):  # fmt: skip
        header[f"CTYPE{axis}"] = ctype
        header[f"CRPIX{axis}"] = (float(centre), "the source's pixel (1-based)")
        header[f"CRVAL{axis}"] = (value, "[deg]")
        header[f"CDELT{axis}"] = (sign * deg_per_pixel, "[deg/pixel]")
        header[f"CUNIT{axis}"] = "deg"
    header["RADESYS"] = "ICRS"
    header["EQUINOX"] = 2000.0
    if beam_fwhm > 0:
        header["BMAJ"] = (beam_fwhm * deg_per_pixel, "[deg] beam FWHM, major axis")
        header["BMIN"] = (beam_fwhm * deg_per_pixel, "[deg] beam FWHM, minor axis")
        header["BPA"] = (0.0, "[deg] beam position angle, east of north")
    header["DISTANCE"] = (distance, "[pc] distance of the source")


def observation_header(
    truth: Mapping[str, Any], size: int, *, distance: float = DEFAULT_DISTANCE_PC
) -> fits.Header:
    """The FITS header of an observation (see the module docstring for its keys)."""
    distance = _check_distance(distance)
    header = fits.Header()
    header["OBJECT"] = ("twinsight simulated observation", "rendered by twinsight observe")
    header["BUNIT"] = ("Jy/beam", "surface brightness; the flux scale is arbitrary")
    _sky_header(header, size, distance, float(truth["beam_fwhm"]))
    for name in PARAMETERS:
        header[f"HIERARCH TRUE_{name}"] = (float(truth[name]), f"[{UNITS[name]}]")
    header["INCL"] = (float(truth["inclination"]), "[deg] inclination, 0 = face-on")
    header["PA"] = (float(truth["position_angle"]), "[deg] position angle of the outflow axis")
    header["BEAM"] = (float(truth["beam_fwhm"]), "[pixel] FWHM of the Gaussian beam")
    snr = float(truth["snr"])
    header["SNR"] = ("inf" if np.isinf(snr) else snr, "peak signal / noise sigma; inf: no noise")
    header["NOISE"] = (float(truth["noise_sigma"]), "noise sigma, in image units")
    header["SEED"] = (int(truth["seed"]), "random seed of the observation")
    header["FLUXSCL"] = (float(truth["flux_scale"]), "random flux scale applied")
    header["PIXSCALE"] = (pixel_scale(size), "[AU/pixel] pixel scale")
    header["FOV_AU"] = (FIELD_OF_VIEW_AU, "[AU] field of view")
    header["COMPANIO"] = (bool(truth["has_companion"]), "a companion star is present")
    return header


def observe(
    out_path: str | Path,
    params: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    size: int = 64,
    inclination: float | None = None,
    position_angle: float | None = None,
    snr: float = 30.0,
    beam_fwhm: float = 2.0,
    flux_scale: float | None = None,
    distance: float = DEFAULT_DISTANCE_PC,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write one simulated observation as a FITS file; returns what is true of it.

    ``distance`` (pc) sets the header's WCS and beam in degrees (see the module docstring).
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".fits", ".fit", ".fts"):
        raise TwinsightError(f"observation output '{out_path}' must end in .fits")
    check_output_path(out_path, overwrite)
    image, truth = observe_image(
        params,
        seed=seed,
        size=size,
        inclination=inclination,
        position_angle=position_angle,
        snr=snr,
        beam_fwhm=beam_fwhm,
        flux_scale=flux_scale,
        distance=distance,
    )
    header = observation_header(truth, image.shape[-1], distance=truth["distance"])
    hdu = fits.PrimaryHDU(image, header=header)
    with atomic_file(out_path, overwrite=overwrite) as tmp:
        hdu.writeto(tmp, overwrite=True)
    truth["path"] = str(out_path)
    return truth
