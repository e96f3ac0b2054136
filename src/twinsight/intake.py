"""The observation intake: a telescope's FITS image brought onto the library's grid.

An observation is never matched raw (DESIGN.md). :func:`read_observation` reads a FITS
image and what its header says (a celestial WCS, the beam, maybe the noise) and returns
an :class:`Observation`: the image resampled onto the library's grid (``library_size``
pixels square of ``library_pixel_scale`` AU), centred on the source, background
subtracted, and the :class:`~twinsight.instrument.Instrument` it was seen through, stated
in library pixels. :func:`observation_from_array` runs the same steps on an array whose
pixel scale is given. Nothing is written to disk.

The steps (on the observation's own grid unless said otherwise):

1. **Geometry.** The WCS's pixel matrix (degrees per pixel; CDELT, CD or PC x CDELT)
   times the distance (1 arcsec at 1 pc is 1 AU) gives AU per pixel along each image
   axis, rotations, flips and non-square pixels included. The library's frame has north
   up and east left, as a FITS image with ``CDELT1 < 0``. A given ``pixel_scale``
   overrides the scale (the WCS's orientation, if any, is kept).
2. **Beam.** ``BMAJ``/``BMIN``/``BPA`` (degrees) or ``beam`` given, in AU.
3. **Background and noise.** The sigma-clipped median and standard deviation of the
   pixels away from the source (the beam-smoothed image above 3 sigma, dilated). The
   median is subtracted. The noise may instead be read (``NOISE``, ``RMS``, ``SIGMA``,
   ``NOISERMS``) or given.
4. **Blanks.** NaN pixels become background noise (seeded).
5. **Centre.** The brightest peak of the beam-smoothed image, refined by the
   intensity-weighted centroid of its connected part above half that peak (or given).
6. **Resampling.** Along each image axis shrunk by a factor ``f > 1``, a Gaussian
   anti-alias filter of sigma ``(f - 1) / 2`` pixels; then cubic-spline interpolation at
   the library pixels' positions, the source at pixel ``library_size // 2`` (the
   renderer's centre). Where the library's field extends past the observation: Gaussian
   noise of the library-grid sigma (seeded).
7. **On the library grid.** The noise is the observation's noise times the factor by
   which step 6 changes it, measured by resampling the observation's own background in
   the same way (so correlated noise, such as an interferometer's, counts as it is), or,
   where there is too little background, computed for white noise. SNR = the resampled
   peak / that noise. The beam in library pixels includes the anti-alias filter (added in
   quadrature, as covariances).

Pixel positions are 0-based ``(x, y)``, ``image[y, x]``. Every bad input raises
:class:`~twinsight.errors.TwinsightError` in one line naming the file, the key or value,
and the option that fixes it.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from twinsight.data.readers.common import first_line
from twinsight.data.readers.fits import fits_open, pick_hdu
from twinsight.errors import TwinsightError
from twinsight.instrument import FWHM_TO_SIGMA, Instrument
from twinsight.validation import check_scalar

log = logging.getLogger(__name__)

#: Header keys that may hold the noise sigma (image units), tried in this order.
NOISE_KEYS: tuple[str, ...] = ("NOISE", "RMS", "SIGMA", "NOISERMS")
#: Header key of the distance in pc (``twinsight observe`` writes it); ``distance`` overrides.
DISTANCE_KEY = "DISTANCE"
#: More than this share of blanked (NaN) pixels and the observation is refused.
MAX_BLANK_FRACTION = 0.5
#: Fewest background pixels a noise measurement is trusted on.
MIN_BACKGROUND_PIXELS = 100
#: Smallest image side accepted, in pixels.
MIN_IMAGE_SIZE = 8

_SCALE_KEYS = ("CDELT1", "CD1_1", "PC1_1")
_WCS_KEYS = "CDELT1/CD1_1/PC1_1 and CTYPE1"
_COPIED_FROM_PRIMARY = ("BMAJ", "BMIN", "BPA", "BUNIT", DISTANCE_KEY, *NOISE_KEYS)
_NOISE_GRID_MAX = 256  # library-scale samples per axis when measuring the noise transfer
_NOISE_FLOOR = 1e-6  # a background sigma below this share of the peak is rounding: no noise
_MAX_TRANSFER = 1.5  # resampling cannot raise the noise more; a larger measure is contaminated
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BEAM_PATTERN = re.compile(
    rf"^\s*(?P<major>{_NUMBER})\s*(?:[x*]\s*(?P<minor>{_NUMBER}))?\s*"
    rf"(?P<unit>[^\d\s@.+-][^@]*?)?\s*(?:@\s*(?P<pa>{_NUMBER})\s*(?:deg)?)?\s*$"
)
_UNIT_ALIASES = {
    "": "arcsec",
    '"': "arcsec",
    "''": "arcsec",
    "as": "arcsec",
    "px": "pix",
    "pixel": "pix",
    "pixels": "pix",
}
_BEAM_EXAMPLES = 'e.g. 0.1arcsec, 0.1", 14au, 2px or 0.3x0.2arcsec@30 (a bare number is arcsec)'


# ----------------------------------------------------------------------------- the result
@dataclass
class Observation:
    """An observation on the library's grid and the instrument it was seen through.

    ``image``: float32 ``[library_size, library_size]``, centred on the source, background
    subtracted, in the observation's units. ``instrument``: beam (FWHM, library pixels,
    anti-aliasing included), peak SNR and noise on the library grid, ``pixel_scale`` the
    library's AU per pixel, ``provenance`` saying where each came from. ``original``:
    what was derived on the observation's own grid. ``notes``: sentences for the user.
    """

    image: np.ndarray
    instrument: Instrument
    source: str
    original: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the image, JSON-ready (tuples as lists, non-finite floats as None)."""
        return _jsonable(
            {
                "source": self.source,
                "image_shape": list(self.image.shape),
                "instrument": self.instrument.to_dict(),
                "original": self.original,
                "notes": list(self.notes),
            }
        )


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars, arrays and tuples made plain JSON (NaN/inf as None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------- checks
def _positive(value: Any, option: str, name: str, unit: str) -> float:
    """``value`` as a positive finite float, else an error naming the file and the option."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise TwinsightError(
            f"observation '{name}': {option} must be a positive, finite number ({unit}), "
            f"got {value!r}"
        )
    return number


def _check_library(pixel_scale: Any, size: Any) -> tuple[float, int]:
    """The library grid's AU per pixel (> 0, finite) and side in pixels (>= MIN_IMAGE_SIZE)."""
    scale = check_scalar(
        pixel_scale,
        "library_pixel_scale (AU per pixel)",
        float,
        min_val=0.0,
        include_boundaries="neither",
    )
    if not math.isfinite(scale):
        raise TwinsightError(f"library_pixel_scale must be finite, got {pixel_scale!r}")
    return scale, check_scalar(size, "library_size (pixels)", int, min_val=MIN_IMAGE_SIZE)


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Geometry:
    """Where the observation's pixels lie: ``matrix @ (dx, dy)`` pixels is AU in the
    library's frame (x to the west, so east is left; y to the north)."""

    matrix: np.ndarray
    provenance: str
    distance: float | None
    sky: np.ndarray | None  # the same in arcsec, from the WCS

    @property
    def au_per_pixel(self) -> float:
        """The geometric mean of the two axes' scales (AU per pixel)."""
        return math.sqrt(abs(float(np.linalg.det(self.matrix))))

    @property
    def axis_scales(self) -> tuple[float, float]:
        """AU per pixel along the image's x and y axes."""
        sx, sy = np.linalg.norm(self.matrix, axis=0)
        return float(sx), float(sy)

    @property
    def arcsec_per_pixel(self) -> float | None:
        """The geometric-mean angular scale: the WCS's, else AU per pixel over the distance."""
        if self.sky is not None:
            return math.sqrt(abs(float(np.linalg.det(self.sky))))
        return None if self.distance is None else self.au_per_pixel / self.distance

    def field_au(self, shape: tuple[int, int]) -> tuple[float, float]:
        """The observation's extent along x and y, in AU."""
        sx, sy = self.axis_scales
        return shape[1] * sx, shape[0] * sy


def _sky_matrix(header: Any) -> tuple[np.ndarray | None, str | None]:
    """Arcsec per pixel in the library's frame from a celestial WCS, or why there is none."""
    if header is None:
        return None, "no header"
    if "CTYPE1" not in header or not any(k in header for k in _SCALE_KEYS):
        return None, "missing"
    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(header)
        except Exception as exc:  # noqa: BLE001 - wcslib raises many types on bad headers
            return None, f"its WCS cannot be read ({first_line(exc)})"
    ctypes = ", ".join(repr(c) for c in wcs.wcs.ctype)
    if not wcs.has_celestial:
        return None, f"its WCS axes ({ctypes}) are not celestial (RA/Dec, GLON/GLAT)"
    lng, lat = wcs.wcs.lng, wcs.wcs.lat
    matrix = np.asarray(wcs.pixel_scale_matrix, dtype=np.float64)
    if {lng, lat} != {0, 1} or (matrix.shape[0] > 2 and np.any(matrix[2:, :2])):
        return None, f"its sky axes ({ctypes}) are not the image's first two axes"
    deg = matrix[[lng, lat]][:, :2]  # rows: intermediate world (east, north), columns: x, y
    sky = np.diag([-1.0, 1.0]) @ deg * 3600.0
    if not (np.all(np.isfinite(sky)) and abs(np.linalg.det(sky)) > 0):
        return None, "its pixel scale (CDELT/CD/PC) is zero or not finite"
    return sky, None


def _geometry(
    header: Any, name: str, distance: float | None, pixel_scale: float | None
) -> tuple[_Geometry, list[str]]:
    """The pixel geometry from the WCS and distance, or from a given AU-per-pixel scale."""
    sky, problem = _sky_matrix(header)
    notes: list[str] = []
    if pixel_scale is not None:
        scale = _positive(pixel_scale, "--pixel-scale", name, "AU per pixel")
        if sky is None:
            return _Geometry(np.diag([scale, scale]), "given", distance, None), notes
        sky_scale = math.sqrt(abs(float(np.linalg.det(sky))))
        if distance is not None:
            notes.append(
                f"pixel scale given as {scale:.4g} AU/px (the WCS at {distance:g} pc says "
                f"{sky_scale * distance:.4g} AU/px)"
            )
        return _Geometry(sky / sky_scale * scale, "given", distance, sky), notes
    if problem == "missing" or problem == "no header":
        raise TwinsightError(
            f"observation '{name}' has no celestial WCS to read its pixel scale from (looked "
            f"for {_WCS_KEYS}): give --pixel-scale AU (AU per pixel)"
        )
    if sky is None:
        raise TwinsightError(
            f"observation '{name}': {problem}; give --pixel-scale AU (AU per pixel)"
        )
    if distance is None:
        raise TwinsightError(
            f"observation '{name}' has a sky WCS ({math.sqrt(abs(np.linalg.det(sky))):.4g} "
            "arcsec/px) but no distance: give --distance PC (or --pixel-scale AU)"
        )
    return _Geometry(sky * distance, "read", distance, sky), notes


def _distance(given: Any, header: Any, name: str) -> tuple[float | None, str | None]:
    """The distance in pc: given, else the header's DISTANCE key, else None."""
    if given is not None:
        return _positive(given, "--distance", name, "pc"), "given"
    value = None if header is None else header.get(DISTANCE_KEY)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return float(value), "read"
    return None, None


# ----------------------------------------------------------------------------- beam
def beam_covariance(major: float, minor: float, pa_deg: float) -> np.ndarray:
    """The 2 x 2 covariance of a Gaussian of FWHM ``major`` x ``minor`` at ``pa_deg``.

    The position angle is east of north in the library's frame: the major axis turns
    from +y towards -x, as :func:`twinsight.instrument.beam_kernel` draws it.
    """
    t = math.radians(pa_deg)
    along = np.array([-math.sin(t), math.cos(t)])
    across = np.array([math.cos(t), math.sin(t)])
    s_major, s_minor = major * FWHM_TO_SIGMA, minor * FWHM_TO_SIGMA
    return s_major**2 * np.outer(along, along) + s_minor**2 * np.outer(across, across)


def beam_axes(cov: np.ndarray) -> tuple[float, float, float]:
    """FWHM major, minor and position angle (degrees in [0, 180)) of a covariance."""
    values, vectors = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    minor = math.sqrt(max(float(values[0]), 0.0)) / FWHM_TO_SIGMA
    major = math.sqrt(max(float(values[1]), 0.0)) / FWHM_TO_SIGMA
    if major - minor <= 1e-9 * max(major, 1e-300):
        return major, major, 0.0
    ux, uy = vectors[:, 1]
    return major, minor, math.degrees(math.atan2(-ux, uy)) % 180.0


def _arcsec_to_au(arcsec: float, geometry: _Geometry, name: str, what: str) -> float:
    """An angle in AU: with the distance, else through the WCS's pixels and the given scale."""
    if geometry.distance is not None:
        return arcsec * geometry.distance
    if geometry.sky is not None:
        return arcsec / float(geometry.arcsec_per_pixel) * geometry.au_per_pixel
    raise TwinsightError(
        f"observation '{name}': {what} is an angle; give --distance PC to turn it into AU, "
        "or give --beam in au or px (e.g. 14au)"
    )


def _header_beam(header: Any, geometry: _Geometry, name: str) -> tuple[float, float, float] | None:
    """BMAJ/BMIN/BPA (degrees; also a CASA/AIPS history card) in AU, or None without one."""
    if header is None:
        return None
    import radio_beam
    from astropy import units as u

    cards = "/".join(repr(header.get(k)) for k in ("BMAJ", "BMIN", "BPA"))
    bad = TwinsightError(
        f"observation '{name}': its beam BMAJ/BMIN/BPA = {cards} (degrees) cannot be read; fix "
        f"those keys or give --beam ({_BEAM_EXAMPLES})"
    )
    try:
        beam = radio_beam.Beam.from_fits_header(header)
    except radio_beam.beam.NoBeamException:
        return None
    except Exception:  # noqa: BLE001 - radio-beam raises many types on bad cards
        raise bad from None
    major, minor = beam.major.to_value(u.arcsec), beam.minor.to_value(u.arcsec)
    pa = beam.pa.to_value(u.deg)
    if not all(math.isfinite(v) for v in (major, minor, pa)) or min(major, minor) < 0:
        raise bad
    if major == 0:
        return None
    what = "the header's beam (BMAJ/BMIN, degrees)"
    return (
        _arcsec_to_au(major, geometry, name, what),
        _arcsec_to_au(minor, geometry, name, what),
        pa,
    )


def _parse_beam(beam: str | float, name: str) -> tuple[float, float, str, float]:
    """``beam`` as (major, minor, unit name, PA): a number (arcsec) or ``MAJ[xMIN]UNIT[@PA]``."""
    bad = TwinsightError(
        f"observation '{name}': --beam {beam!r} is not a beam size; give {_BEAM_EXAMPLES}"
    )
    if isinstance(beam, bool):
        raise bad
    if isinstance(beam, int | float | np.integer | np.floating):
        return float(beam), float(beam), "arcsec", 0.0
    match = _BEAM_PATTERN.match(str(beam))
    if match is None:
        raise bad
    major = float(match["major"])
    minor = major if match["minor"] is None else float(match["minor"])
    unit = (match["unit"] or "").strip()
    pa = 0.0 if match["pa"] is None else float(match["pa"])
    return major, minor, _UNIT_ALIASES.get(unit.lower(), unit), pa


def _given_beam(beam: str | float, geometry: _Geometry, name: str) -> tuple[float, float, float]:
    """A beam given with its unit (angle, length or observation pixels), in AU."""
    from astropy import units as u

    major, minor, unit_name, pa = _parse_beam(beam, name)
    if not all(math.isfinite(v) for v in (major, minor, pa)) or min(major, minor) < 0:
        raise TwinsightError(
            f"observation '{name}': --beam {beam!r} must be >= 0 and finite ({_BEAM_EXAMPLES})"
        )
    try:
        unit = u.Unit(unit_name)
    except ValueError:
        raise TwinsightError(
            f"observation '{name}': --beam {beam!r}: unknown unit '{unit_name}'; give "
            f"{_BEAM_EXAMPLES}"
        ) from None
    if unit.is_equivalent(u.arcsec):
        f = (1.0 * unit).to_value(u.arcsec)
        what = f"--beam {beam!r}"
        return (
            _arcsec_to_au(major * f, geometry, name, what),
            _arcsec_to_au(minor * f, geometry, name, what),
            pa,
        )
    if unit.is_equivalent(u.AU):
        f = (1.0 * unit).to_value(u.AU)
        return major * f, minor * f, pa
    if unit == u.pix:
        return major * geometry.au_per_pixel, minor * geometry.au_per_pixel, pa
    raise TwinsightError(
        f"observation '{name}': --beam {beam!r}: '{unit_name}' is not an angle, a length or "
        f"px; give {_BEAM_EXAMPLES}"
    )


@dataclass(frozen=True)
class _Beam:
    """The beam's covariance in AU^2 (library frame), or None for none."""

    cov: np.ndarray | None
    provenance: str

    @property
    def axes(self) -> tuple[float, float, float] | None:
        return None if self.cov is None else beam_axes(self.cov)


def _beam(
    beam: str | float | None,
    header: Any,
    geometry: _Geometry,
    shape: tuple[int, int],
    library_field: float,
    name: str,
) -> _Beam:
    """The beam given, else read, else none; refused when wider than the field of view."""
    if beam is not None:
        axes, provenance = _given_beam(beam, geometry, name), "given"
    else:
        axes, provenance = _header_beam(header, geometry, name), "read"
    if axes is None:
        return _Beam(None, "none")
    major, minor, pa = axes
    fov = min(*geometry.field_au(shape), library_field)
    if max(major, minor) > fov:
        origin = f"--beam {beam!r}" if beam is not None else "BMAJ/BMIN in the header"
        raise TwinsightError(
            f"observation '{name}': the beam ({max(major, minor):.4g} AU FWHM, from {origin}) "
            f"is wider than the field of view ({fov:.4g} AU); check the beam's unit "
            "(BMAJ is in degrees) or give --beam"
        )
    return _Beam(beam_covariance(max(major, minor), min(major, minor), pa), provenance)


# ----------------------------------------------------------------------------- background
@dataclass(frozen=True)
class _Background:
    """The background level and noise sigma, from the pixels outside ``source_mask``."""

    level: float
    sigma: float
    source_mask: np.ndarray
    pixels: int
    limited: bool  # too few background pixels: the whole image's clipped statistics


def _clipped(values: np.ndarray) -> tuple[float, float]:
    """Sigma-clipped (3 sigma) median and standard deviation."""
    from astropy.stats import sigma_clipped_stats

    _, median, std = sigma_clipped_stats(values, sigma=3.0, maxiters=10)
    return float(median), float(std)


def _background(image: np.ndarray, finite: np.ndarray, smooth_px: float) -> _Background:
    """Background level and noise away from the source (smoothed image above 3 sigma, dilated)."""
    level0, sigma0 = _clipped(image[finite])
    smooth = ndimage.gaussian_filter(np.where(finite, image, level0) - level0, smooth_px)
    s_level, s_sigma = _clipped(smooth[finite])
    source = ndimage.binary_dilation(
        smooth > s_level + 3.0 * s_sigma, iterations=max(1, math.ceil(2.0 * smooth_px))
    )
    use = finite & ~source
    count = int(use.sum())
    limited = count < max(MIN_BACKGROUND_PIXELS, 0.05 * finite.sum())
    level, sigma = (level0, sigma0) if limited else _clipped(image[use])
    if sigma <= _NOISE_FLOOR * float(np.abs(image[finite]).max()):
        sigma = 0.0  # rounding, not noise: a noise-free image
    return _Background(level, sigma, source, int(finite.sum()) if limited else count, limited)


def _noise(noise: Any, header: Any, background: _Background, name: str) -> tuple[float, str, str]:
    """The noise sigma on the observation's grid: given, read (which key), or estimated."""
    if noise is not None:
        return _positive(noise, "--noise", name, "the noise sigma in image units"), "given", ""
    for key in NOISE_KEYS if header is not None else ():
        if key not in header:
            continue
        value = header[key]
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or number < 0:
            raise TwinsightError(
                f"observation '{name}': header key {key} = {value!r} is not a noise sigma; "
                "fix it or give --noise SIGMA"
            )
        return float(number), "read", key
    return background.sigma, "estimated", ""


# ----------------------------------------------------------------------------- centre
def _find_centre(image: np.ndarray, smooth_px: float) -> tuple[float, float]:
    """The brightest peak of the smoothed image, refined by its half-maximum centroid."""
    smooth = ndimage.gaussian_filter(image, smooth_px)
    iy, ix = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    peak = float(smooth[iy, ix])
    if peak <= 0:
        return float(ix), float(iy)
    labels, _ = ndimage.label(smooth > 0.5 * peak)
    blob = labels == labels[iy, ix]
    weights = np.where(blob, smooth - 0.5 * peak, 0.0)
    cy, cx = ndimage.center_of_mass(weights)
    return float(cx), float(cy)


def _given_centre(
    centre: Sequence[float], shape: tuple[int, int], name: str
) -> tuple[float, float]:
    """A given ``(x, y)`` (0-based pixels), refused unless it lies on the image."""
    try:
        x, y = (float(v) for v in centre)
    except (TypeError, ValueError):
        x = y = math.nan
    ny, nx = shape
    if not (
        math.isfinite(x) and math.isfinite(y) and -0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5
    ):
        raise TwinsightError(
            f"observation '{name}': --centre {centre!r} must be X,Y pixel coordinates (0-based) "
            f"inside the {nx} x {ny} image"
        )
    return x, y


# ----------------------------------------------------------------------------- resampling
def _antialias_sigma(geometry: _Geometry, library_pixel_scale: float) -> np.ndarray:
    """Anti-alias Gaussian sigma (observation pixels) along x and y: (shrink - 1) / 2."""
    shrink = library_pixel_scale / np.asarray(geometry.axis_scales)
    return np.where(shrink > 1.0 + 1e-6, (shrink - 1.0) / 2.0, 0.0)


def _smooth(image: np.ndarray, sigma_xy: np.ndarray) -> np.ndarray:
    if not np.any(sigma_xy > 0):
        return image
    return ndimage.gaussian_filter(image, (float(sigma_xy[1]), float(sigma_xy[0])), mode="nearest")


def _positions(
    geometry: _Geometry,
    centre: tuple[float, float],
    offsets_x: np.ndarray,
    offsets_y: np.ndarray,
    library_pixel_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Observation-pixel (x, y) of the library pixels at these offsets from the centre."""
    step = np.linalg.inv(geometry.matrix) * library_pixel_scale  # obs pixels per library pixel
    gx, gy = np.meshgrid(offsets_x.astype(np.float64), offsets_y.astype(np.float64))
    return (
        centre[0] + step[0, 0] * gx + step[0, 1] * gy,
        centre[1] + step[1, 0] * gx + step[1, 1] * gy,
    )


def _sample(
    image: np.ndarray, xs: np.ndarray, ys: np.ndarray, order: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated values at (xs, ys) and whether each lies inside the observation."""
    ny, nx = image.shape
    values = ndimage.map_coordinates(image, [ys, xs], order=order, mode="nearest")
    inside = (xs >= -0.5) & (xs <= nx - 0.5) & (ys >= -0.5) & (ys <= ny - 0.5)
    return values, inside


def _field_offsets(
    geometry: _Geometry, centre: tuple[float, float], shape: tuple[int, int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Integer library-pixel offsets covering the whole observation (strided when many)."""
    ny, nx = shape
    corners = np.array([[-0.5, -0.5], [nx - 0.5, -0.5], [-0.5, ny - 0.5], [nx - 0.5, ny - 0.5]])
    lib = (geometry.matrix @ (corners - np.asarray(centre)).T) / scale
    axes = []
    for row in lib:
        lo, hi = math.floor(row.min()), math.ceil(row.max())
        stride = max(1, math.ceil((hi - lo + 1) / _NOISE_GRID_MAX))
        axes.append(np.arange(lo, hi + 1, stride))
    return axes[0], axes[1]


def _noise_transfer(
    image: np.ndarray,
    background: _Background,
    sigma_aa: np.ndarray,
    geometry: _Geometry,
    centre: tuple[float, float],
    scale: float,
    rng: np.random.Generator,
) -> tuple[float, str]:
    """By what factor resampling changes the noise sigma, and how that was found.

    ``measured``: the observation's background (the source replaced by noise) resampled
    as the image is, at the same sub-pixel phase over the whole field, its clipped sigma
    over the background's; ``white``: the same for white noise, where there is too little
    background, none (a noise-free image) or the measure is implausible (above
    ``_MAX_TRANSFER``: the background holds source).
    """
    xs, ys = _positions(
        geometry, centre, *_field_offsets(geometry, centre, image.shape, scale), scale
    )
    if background.sigma > 0 and not background.limited:
        mask = background.source_mask
        field_ = np.where(mask, rng.normal(0.0, background.sigma, image.shape), image)
        values, inside = _sample(_smooth(field_, sigma_aa), xs, ys)
        wide = ndimage.binary_dilation(mask, iterations=2).astype(np.float64)
        near, _ = _sample(_smooth(wide, sigma_aa), xs, ys, order=1)
        use = inside & (near < 0.01)
        if use.sum() >= MIN_BACKGROUND_PIXELS:
            ratio = _clipped(values[use])[1] / background.sigma
            if ratio <= _MAX_TRANSFER:
                return ratio, "measured"
    values, inside = _sample(_smooth(rng.standard_normal(image.shape), sigma_aa), xs, ys)
    return float(np.std(values[inside])), "white"


# ----------------------------------------------------------------------------- reading
def _read_fits(path: Path, hdu: int | str | None) -> tuple[Any, np.ndarray, str]:
    """The chosen HDU's header (beam, noise, distance and unit keys filled in from the
    primary's), its data as float64, and its name."""
    if not path.is_file():
        raise TwinsightError(f"observation '{path}' does not exist (or is not a file)")
    with fits_open(path) as hdul:
        chosen = pick_hdu(hdul, path, hdu)
        try:
            header = chosen.header.copy()
            for key in _COPIED_FROM_PRIMARY:
                if key not in header and key in hdul[0].header:
                    header[key] = hdul[0].header[key]
            data = np.asarray(chosen.data, dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - hostile files make astropy raise many types
            raise TwinsightError(
                f"cannot read the image of FITS file '{path}' ({first_line(exc)}); "
                "it may be truncated or damaged"
            ) from None
        return header, data, chosen.name or str(hdul.index_of(chosen))


def _as_image(data: Any, name: str) -> np.ndarray:
    """A 2-D float64 image (length-1 axes dropped) of at least MIN_IMAGE_SIZE a side."""
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise TwinsightError(f"observation '{name}': the image is not numeric") from None
    squeezed = array.reshape([s for s in array.shape if s != 1])
    if squeezed.ndim != 2:
        raise TwinsightError(
            f"observation '{name}': the image has shape {array.shape}; expected one 2-D plane "
            "(a cube needs length-1 extra axes); pick another HDU with --hdu"
        )
    if min(squeezed.shape) < MIN_IMAGE_SIZE:
        raise TwinsightError(
            f"observation '{name}': the image is {squeezed.shape[1]} x {squeezed.shape[0]} "
            f"pixels; at least {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} are needed"
        )
    return squeezed


def _check_blanks(finite: np.ndarray, name: str) -> int:
    blank = int(finite.size - finite.sum())
    if blank > MAX_BLANK_FRACTION * finite.size:
        raise TwinsightError(
            f"observation '{name}': {blank} of {finite.size} pixels are blank (NaN/inf); more "
            f"than {MAX_BLANK_FRACTION:.0%} cannot be matched: crop or pick another HDU (--hdu)"
        )
    return blank


def _smoothing_px(beam: _Beam, geometry: _Geometry) -> float:
    """Gaussian sigma (observation pixels) to find the source with: the beam's, at least 1."""
    if beam.cov is None:
        return 1.5
    inv = np.linalg.inv(geometry.matrix)
    cov_px = inv @ beam.cov @ inv.T
    return max(1.0, math.sqrt(math.sqrt(max(float(np.linalg.det(cov_px)), 0.0))))


# ----------------------------------------------------------------------------- the pipeline
@dataclass(frozen=True)
class _Request:
    """What the caller asked for (one bundle, so that the steps stay short)."""

    name: str
    library_pixel_scale: float
    library_size: int
    beam: str | float | None
    noise: float | None
    centre: Sequence[float] | None
    seed: int


def _intake(
    data: Any, header: Any, geometry: _Geometry, request: _Request, notes: list[str]
) -> Observation:
    """The steps of the module docstring, from the observation's pixels to the library's."""
    name = request.name
    image = _as_image(data, name)
    shape = (int(image.shape[0]), int(image.shape[1]))
    finite = np.isfinite(image)
    blank = _check_blanks(finite, name)
    library_field = request.library_size * request.library_pixel_scale
    beam = _beam(request.beam, header, geometry, shape, library_field, name)
    smooth_px = _smoothing_px(beam, geometry)
    background = _background(image, finite, smooth_px)
    noise, noise_from, noise_key = _noise(request.noise, header, background, name)
    rngs = [np.random.default_rng([int(request.seed), k]) for k in (1, 2, 3)]
    image = _fill_blanks(image, finite, background.level, noise, rngs[0], notes)
    image = image - background.level
    if request.centre is not None:
        centre, centre_from = _given_centre(request.centre, shape, name), "given"
    else:
        centre, centre_from = _find_centre(image, smooth_px), "found"
    grid = _resample(image, geometry, centre, background, noise, request, rngs[1:], notes)
    snr = _snr(grid.peak, grid.noise, noise_from, name, notes)
    _step_notes(geometry, beam, grid, background, notes)
    major, minor, pa = _library_beam(beam, geometry, grid.antialias, request.library_pixel_scale)
    provenance = {
        "pixel_scale": geometry.provenance,
        "beam": beam.provenance,
        "noise": noise_from,
        "centre": centre_from,
    }
    instrument = Instrument(
        major, minor, pa, snr, request.library_pixel_scale, grid.noise, provenance
    )
    original = _original(geometry, shape, centre, beam, header)
    original.update(
        noise=noise,
        noise_key=noise_key or None,
        noise_background=background.sigma,
        background=background.level,
        background_pixels=background.pixels,
        noise_transfer=grid.transfer,
        noise_transfer_from=grid.transfer_from,
        antialias_sigma_px=[float(v) for v in grid.antialias],
        blank_pixels=blank,
        padded=grid.padded > 0,
        padded_pixels=grid.padded,
        peak=grid.peak,
    )
    for note in notes:
        log.info("%s: %s", name, note)
    return Observation(grid.image.astype(np.float32), instrument, name, original, notes)


def _fill_blanks(
    image: np.ndarray,
    finite: np.ndarray,
    level: float,
    sigma: float,
    rng: np.random.Generator,
    notes: list[str],
) -> np.ndarray:
    """NaN/inf pixels replaced by background noise (level + Gaussian of ``sigma``), seeded."""
    blank = int(finite.size - finite.sum())
    if not blank:
        return image
    image = image.copy()
    image[~finite] = rng.normal(level, sigma, blank)
    notes.append(f"{blank} blank (NaN) pixels replaced by background noise")
    return image


@dataclass(frozen=True)
class _Resampled:
    """The image on the library grid and what resampling did to it."""

    image: np.ndarray
    peak: float  # over the pixels inside the observation
    noise: float  # sigma on the library grid
    transfer: float  # noise on the library grid / noise on the observation's
    transfer_from: str  # "measured" or "white"
    antialias: np.ndarray  # Gaussian sigma along x, y, observation pixels
    padded: int  # library pixels outside the observation (noise)


def _resample(
    image: np.ndarray,
    geometry: _Geometry,
    centre: tuple[float, float],
    background: _Background,
    noise: float,
    request: _Request,
    rngs: Sequence[np.random.Generator],
    notes: list[str],
) -> _Resampled:
    """Anti-alias, interpolate onto the library grid around ``centre``, pad with noise."""
    scale, size = request.library_pixel_scale, request.library_size
    sigma_aa = _antialias_sigma(geometry, scale)
    transfer, how = _noise_transfer(image, background, sigma_aa, geometry, centre, scale, rngs[0])
    noise_lib = noise * transfer
    offsets = np.arange(size) - size // 2
    xs, ys = _positions(geometry, centre, offsets, offsets, scale)
    resampled, inside = _sample(_smooth(image, sigma_aa), xs, ys)
    if not inside.any():
        raise TwinsightError(
            f"observation '{request.name}': the centre {centre} lies off the image; "
            "give --centre X,Y"
        )
    padded = int((~inside).sum())
    if padded:
        resampled[~inside] = rngs[1].normal(0.0, noise_lib, padded) if noise_lib > 0 else 0.0
        field_ = geometry.field_au(image.shape)
        notes.append(_padding_note(field_, size * scale, padded, size, noise_lib))
    if how == "white" and noise_lib > 0:
        notes.append(
            "noise on the library grid computed as for white noise (too little background to "
            "measure how resampling changes it)"
        )
    peak = float(resampled[inside].max())
    return _Resampled(resampled, peak, noise_lib, transfer, how, sigma_aa, padded)


def _library_beam(
    beam: _Beam, geometry: _Geometry, sigma_aa: np.ndarray, library_pixel_scale: float
) -> tuple[float, float, float]:
    """The beam on the library grid (FWHM library pixels, PA): the beam and the anti-alias
    filter added as covariances."""
    aa_cov = geometry.matrix @ np.diag(sigma_aa**2) @ geometry.matrix.T
    total = aa_cov if beam.cov is None else beam.cov + aa_cov
    return beam_axes(total / library_pixel_scale**2)


def _snr(
    peak: float, noise_lib: float, noise_from: str, name: str, notes: list[str]
) -> float | None:
    """Peak over noise on the library grid; None (noise-free) when the noise is 0."""
    if noise_lib <= 0:
        how = "the header says 0" if noise_from == "read" else "the background is constant"
        notes.append(f"no noise ({how}): treated as noise-free")
        return None
    if peak <= 0:
        raise TwinsightError(
            f"observation '{name}': no positive signal after background subtraction (peak "
            f"{peak:.3g}); is the image empty or inverted?"
        )
    snr = peak / noise_lib
    if snr < 5:
        notes.append(f"peak SNR {snr:.2g} on the library grid: the source is barely detected")
    return snr


def _padding_note(
    field_au: tuple[float, float], library_field: float, padded: int, size: int, noise: float
) -> str:
    """Why and where the library's field was padded with noise."""
    fx, fy = field_au
    fov = f"{fx:.0f} AU" if abs(fx - fy) < 0.5 else f"{fx:.0f} x {fy:.0f} AU"
    where = (
        f"field {fov} < library {library_field:.0f} AU"
        if min(fx, fy) < library_field
        else f"the library's {library_field:.0f} AU around the source passes the edge of the "
        f"field ({fov})"
    )
    return (
        f"{where}: padded with noise (sigma {noise:.3g}) in {padded} of {size * size} "
        "library pixels"
    )


def _step_notes(
    geometry: _Geometry, beam: _Beam, grid: _Resampled, background: _Background, notes: list[str]
) -> None:
    """Sentences on what the steps did that the user should know."""
    sx, sy = geometry.axis_scales
    if abs(sx - sy) > 1e-3 * max(sx, sy):
        notes.append(f"non-square pixels ({sx:.4g} x {sy:.4g} AU): each axis resampled")
    if beam.cov is None:
        notes.append("no beam in the header or given: beam 0 (the anti-alias filter only)")
    if np.any(grid.antialias > 0):
        ax, ay = grid.antialias
        notes.append(
            f"downsampled: anti-alias Gaussian of sigma {ax:.2g} x {ay:.2g} observation pixels, "
            "included in the beam"
        )
    if background.limited:
        notes.append(
            "little background around the source: background and noise taken from the whole "
            "image (they may be too high)"
        )


def _original(
    geometry: _Geometry,
    shape: tuple[int, int],
    centre: tuple[float, float],
    beam: _Beam,
    header: Any,
) -> dict[str, Any]:
    """What was derived on the observation's own grid (JSON-ready values)."""
    arcsec = geometry.arcsec_per_pixel
    axes = beam.axes
    beam_arcsec = None
    if axes is not None and geometry.distance is not None:
        beam_arcsec = [axes[0] / geometry.distance, axes[1] / geometry.distance, axes[2]]
    return {
        "pixel_scale_au": geometry.au_per_pixel,
        "pixel_scale_au_xy": list(geometry.axis_scales),
        "pixel_scale_arcsec": arcsec,
        "distance_pc": geometry.distance,
        "shape": list(shape),
        "field_au": list(geometry.field_au(shape)),
        "centre_pixel": [centre[0], centre[1]],
        "beam_au": None if axes is None else list(axes),
        "beam_arcsec": beam_arcsec,
        "beam_pixels": None if axes is None else axes[0] / geometry.au_per_pixel,
        "bunit": None if header is None else header.get("BUNIT"),
    }


# ----------------------------------------------------------------------------- entry points
def read_observation(
    path: str | Path,
    *,
    library_pixel_scale: float,
    library_size: int,
    distance: float | None = None,
    pixel_scale: float | None = None,
    beam: str | float | None = None,
    noise: float | None = None,
    centre: Sequence[float] | None = None,
    hdu: int | str | None = None,
    seed: int = 0,
) -> Observation:
    """A FITS observation on the library's grid (see the module docstring for the steps).

    ``distance`` (pc; else the header's DISTANCE key) turns the WCS's angles into AU;
    ``pixel_scale`` (AU per pixel), ``beam`` (``"0.1arcsec"``, ``'0.1"'``, ``"14au"``,
    ``"2px"``, ``"0.3x0.2arcsec@30"``; a bare number is arcsec), ``noise`` (sigma in image
    units) and ``centre`` (0-based ``(x, y)`` pixels) override what the file says. ``hdu``
    picks the image HDU (default: the first with image data); ``seed`` seeds the noise
    that fills blanks and padding.
    """
    path = Path(path)
    name = str(path)
    scale, size = _check_library(library_pixel_scale, library_size)
    header, data, hdu_name = _read_fits(path, hdu)
    dist, dist_from = _distance(distance, header, name)
    geometry, notes = _geometry(header, name, dist, pixel_scale)
    if dist_from == "read":
        notes.append(f"distance {dist:g} pc read from the header's {DISTANCE_KEY} key")
    request = _Request(name, scale, size, beam, noise, centre, seed)
    observation = _intake(data, header, geometry, request, notes)
    observation.original.update(hdu=hdu_name, distance_from=dist_from)
    return observation


def observation_from_array(
    image: Any,
    *,
    library_pixel_scale: float,
    library_size: int,
    pixel_scale: float,
    beam: str | float | None = None,
    noise: float | None = None,
    distance: float | None = None,
    centre: Sequence[float] | None = None,
    source: str = "array",
    seed: int = 0,
) -> Observation:
    """An image array ``[H, W]`` of ``pixel_scale`` AU per pixel on the library's grid.

    The same steps as :func:`read_observation`, without a header: the pixel axes are
    taken as north up, east left; a beam in arcsec needs ``distance`` (pc).
    """
    scale, size = _check_library(library_pixel_scale, library_size)
    dist = None if distance is None else _positive(distance, "--distance", source, "pc")
    geometry, notes = _geometry(None, source, dist, pixel_scale)
    request = _Request(source, scale, size, beam, noise, centre, seed)
    observation = _intake(image, None, geometry, request, notes)
    observation.original.update(hdu=None, distance_from=None if dist is None else "given")
    return observation


def needs_intake(path: str | Path) -> bool:
    """Whether ``path`` is a FITS observation to bring onto the library's grid: a FITS file
    whose image HDU has a celestial WCS. Other files are taken as library-grid images."""
    path = Path(path)
    if path.suffix.lower() not in (".fits", ".fit", ".fts", ".fz") or not path.is_file():
        return False
    try:
        header, _, _ = _read_fits(path, None)
    except TwinsightError:
        return False  # the reader gives the clear error when the file is matched
    sky, _ = _sky_matrix(header)
    return sky is not None
