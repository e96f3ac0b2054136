"""The instrument an image is seen through: a Gaussian beam and noise, on the library's grid.

An :class:`Instrument` is stated in the library's pixels (the observation intake,
:mod:`twinsight.intake`, converts a telescope's header into it): the beam's FWHM along
its major and minor axes and its position angle, and the peak signal-to-noise ratio
(``None``: no noise). :func:`degrade` shows clean library images through it; the
calibration and evaluation for an instrument use it, and training sees a declared
:class:`InstrumentRange` of instruments (:mod:`twinsight.training.augment`).

Where a value came from travels with it (``provenance``: ``given``, ``read`` from a
header, or ``estimated`` from the image), so every estimate can say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.ndimage import convolve

from twinsight.errors import TwinsightError

#: FWHM to Gaussian sigma.
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _finite_nonnegative(value: Any, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TwinsightError(f"instrument: {name} must be a number, got {value!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise TwinsightError(f"instrument: {name} must be finite and >= 0, got {value}")
    return value


@dataclass(frozen=True)
class Instrument:
    """A Gaussian beam (FWHM in library pixels) and peak SNR (``None``: noise-free).

    ``beam_minor`` defaults to ``beam_major`` (a round beam); ``beam_pa`` is in degrees,
    east of north as in a FITS header (counter-clockwise from the image's +y axis).
    ``pixel_scale`` (AU per library pixel), ``noise`` (in the observation's units) and
    ``provenance`` describe where it came from and are not part of :attr:`key`.
    """

    beam_major: float = 0.0
    beam_minor: float | None = None
    beam_pa: float = 0.0
    snr: float | None = None
    pixel_scale: float | None = None
    noise: float | None = None
    provenance: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        major = _finite_nonnegative(self.beam_major, "beam FWHM")
        minor = (
            major
            if self.beam_minor is None
            else _finite_nonnegative(self.beam_minor, "beam minor axis")
        )
        if minor > major:
            major, minor = minor, major
        object.__setattr__(self, "beam_major", major)
        object.__setattr__(self, "beam_minor", minor)
        object.__setattr__(self, "beam_pa", float(self.beam_pa) % 180.0)
        if self.snr is not None:
            snr = float(self.snr)
            if math.isnan(snr) or snr <= 0:
                raise TwinsightError(
                    f"instrument: SNR must be positive (or 'inf' for no noise), got {self.snr}"
                )
            object.__setattr__(self, "snr", None if math.isinf(snr) else snr)

    @property
    def key(self) -> str:
        """A stable name for caching: beam to 0.1 px, angle to 5 degrees, SNR to 2 digits."""
        snr = "inf" if self.snr is None else f"{float(f'{self.snr:.2g}'):g}"
        beam = f"{self.beam_major:.1f}x{self.beam_minor:.1f}"
        pa = 0 if self.beam_major - self.beam_minor < 0.05 else int(5 * round(self.beam_pa / 5))
        return f"beam{beam}pa{pa}-snr{snr}"

    @property
    def rounded(self) -> Instrument:
        """The instrument its :attr:`key` names (what a cached calibration was fitted for)."""
        snr = None if self.snr is None else float(f"{self.snr:.2g}")
        major, minor = round(self.beam_major, 1), round(self.beam_minor, 1)
        pa = 0.0 if major - minor < 0.05 else 5.0 * round(self.beam_pa / 5)
        return Instrument(major, minor, pa, snr)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = self.key
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instrument:
        fields = ("beam_major", "beam_minor", "beam_pa", "snr", "pixel_scale", "noise")
        return cls(**{k: data[k] for k in fields if k in data},
                   provenance=dict(data.get("provenance") or {}))  # fmt: skip

    def describe(self) -> str:
        beam = (
            f"{self.beam_major:.2g} px"
            if self.beam_major - self.beam_minor < 0.05
            else f"{self.beam_major:.2g} x {self.beam_minor:.2g} px at {self.beam_pa:.0f} deg"
        )
        snr = "no noise" if self.snr is None else f"SNR {self.snr:.3g}"
        return f"beam {beam}, {snr}"


def parse_instrument(text: str) -> Instrument:
    """``beam=2,snr=30`` (also ``bmaj=``, ``bmin=``, ``bpa=``; ``snr=inf`` for no noise)."""
    names = {"beam": "beam_major", "bmaj": "beam_major", "bmin": "beam_minor", "bpa": "beam_pa",
             "snr": "snr"}  # fmt: skip
    values: dict[str, float] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in names:
            raise TwinsightError(
                f"--instrument '{text}': '{part}' is not NAME=VALUE with NAME one of "
                f"{sorted(names)} (e.g. beam=2,snr=30)"
            )
        try:
            values[names[name]] = float(value)
        except ValueError:
            raise TwinsightError(
                f"--instrument '{text}': {name}={value!r} is not a number"
            ) from None
    if not values:
        raise TwinsightError(f"--instrument '{text}': give e.g. beam=2,snr=30")
    return Instrument(**values)


def instrument_grid(beams: Any, snrs: Any) -> list[Instrument]:
    """Every (beam, SNR) pair: the grid ``evaluate`` and the demo measure coverage on."""
    return [Instrument(beam_major=b, snr=s) for b in beams for s in snrs]


def beam_kernel(major: float, minor: float, pa_deg: float) -> np.ndarray | None:
    """A normalized elliptical Gaussian kernel (FWHM in pixels); None for a point beam."""
    if major < 1e-3:
        return None
    sx, sy = max(minor, 1e-3) * FWHM_TO_SIGMA, major * FWHM_TO_SIGMA
    radius = max(1, math.ceil(3.5 * sy))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    theta = math.radians(pa_deg)  # east of north: the major axis turns from +y towards -x
    u = xx * math.cos(theta) + yy * math.sin(theta)  # along the minor axis
    v = -xx * math.sin(theta) + yy * math.cos(theta)  # along the major axis
    kernel = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return kernel / kernel.sum()


def degrade(
    images: np.ndarray,
    instrument: Instrument,
    *,
    seed: int | np.random.Generator = 0,
    library_snr: float | None = None,
) -> np.ndarray:
    """Library images [N, C, H, W] seen through ``instrument``: beam, then noise of peak / SNR.

    The noise sigma of each image is its own beam-convolved peak over the SNR, as
    :func:`twinsight.simulator.observe_image` defines it. Simulations carry noise of their
    own (peak / ``library_snr``), and the beam smooths it: what is left per pixel is that
    sigma times the kernel's L2 norm, against a peak the beam has lowered
    (:func:`own_noise`). Only what is missing from it is added, in quadrature. An
    instrument with no noise, or less than the library's, is shown at the library's own
    level, as a query cleaner than the simulations is given noise up to it
    (:func:`twinsight.inference.queries.to_library_noise`): the library cannot show an
    image cleaner than itself. Seeded: the same seed gives the same pixels.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise TwinsightError(f"degrade: expected images [N, C, H, W], got shape {x.shape}")
    before = _peaks(x)
    kernel = beam_kernel(instrument.beam_major, instrument.beam_minor, instrument.beam_pa)
    if kernel is not None:
        x = np.stack(
            [[convolve(img, kernel, mode="constant") for img in chans] for chans in x]
        ).reshape(x.shape)
    peak = _peaks(x)
    own = own_noise(kernel, before, peak, library_snr)
    want = _wanted_noise(instrument.snr, library_snr)
    relative = np.sqrt(np.clip(want**2 - own**2, 0.0, None))
    if np.any(relative > 0):
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        x = x + rng.normal(0.0, 1.0, x.shape) * (peak * relative).reshape(-1, 1, 1, 1)
    return x.astype(np.float32)


def _peaks(x: np.ndarray) -> np.ndarray:
    return np.abs(x).reshape(len(x), -1).max(axis=1)


def own_noise(
    kernel: np.ndarray | None, before: np.ndarray, after: np.ndarray, library_snr: float | None
) -> np.ndarray:
    """Per image, the library's own noise sigma after the beam, as a fraction of its peak.

    White noise of sigma s convolved with a normalized kernel k keeps s * ||k||_2 per pixel;
    the peak goes from ``before`` to ``after``.
    """
    if library_snr is None:
        return np.zeros_like(before)
    norm = 1.0 if kernel is None else float(np.sqrt(np.sum(kernel**2)))
    return norm * before / (library_snr * np.maximum(after, 1e-30))


def _wanted_noise(snr: float | None, library_snr: float | None) -> float:
    """The noise sigma (a fraction of the peak) an image through the instrument should have:
    1 / SNR, and never less than the library's own 1 / ``library_snr``."""
    want = 0.0 if snr is None else 1.0 / snr
    floor = 0.0 if library_snr is None else 1.0 / library_snr
    return max(want, floor)


def missing_noise(snr: float | None, have_snr: float | None) -> float:
    """The noise sigma (a fraction of the peak) that takes an image of SNR ``have_snr``
    (None: noise-free) to SNR ``snr`` (None: noise-free): 0 when it is already noisier."""
    want = 0.0 if snr is None else 1.0 / snr
    have = 0.0 if have_snr is None else 1.0 / have_snr
    return math.sqrt(want**2 - have**2) if want > have else 0.0


def at_library_floor(instrument: Instrument, library_snr: float | None) -> Instrument:
    """The instrument as the library can show it: an SNR at or above the simulations' own
    (``library_snr``) is the simulations' own noise, named noise-free (``snr=None``)."""
    if library_snr is None or instrument.snr is None or instrument.snr < library_snr:
        return instrument
    return replace(instrument, snr=None)


@dataclass(frozen=True)
class InstrumentRange:
    """The instruments training shows the library through (stored with the model).

    Beams uniform in [``beam_min``, ``beam_max``] px with axis ratio in [``min_axis_ratio``,
    1] at a random angle; peak SNR log-uniform in [``snr_min``, ``snr_max``], and a share
    ``noise_free`` of the degraded images without added noise; ``shift`` pixels of random
    sub-pixel offset; ``clean`` of the images left as simulated.
    """

    beam_min: float = 0.0
    beam_max: float = 4.0
    min_axis_ratio: float = 0.6
    snr_min: float = 5.0
    snr_max: float = 300.0
    noise_free: float = 0.2
    shift: float = 0.5
    clean: float = 0.25

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InstrumentRange | None:
        return None if not data else cls(**{k: float(v) for k, v in data.items()})

    def covers(self, instrument: Instrument) -> list[str]:
        """What of ``instrument`` lies outside this range (empty when it is inside)."""
        out = []
        if instrument.beam_major > self.beam_max + 1e-6:
            out.append(f"beam {instrument.beam_major:.2g} px > trained {self.beam_max:g} px")
        if instrument.snr is not None and instrument.snr < self.snr_min - 1e-6:
            out.append(f"SNR {instrument.snr:.3g} < trained {self.snr_min:g}")
        return out
