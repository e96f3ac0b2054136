"""Training-batch augmentations, on the device, after the batch is assembled.

``affine`` (random rotation, shift, zoom) for class targets, where the class
does not change under them; ``instrument`` (the default for parameter targets)
shows each simulation through a random instrument of a declared
:class:`~twinsight.instrument.InstrumentRange` (beam, noise, sub-pixel shift), so
that an observation and the simulation it resembles embed close together. No
shift or zoom beyond a pixel for parameters: a zoom changes what sizes in AU mean.
``telescope`` is the older name of ``instrument``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from twinsight.config import TrainConfig
from twinsight.instrument import FWHM_TO_SIGMA, InstrumentRange


def augment_choice(cfg: TrainConfig, kind: str, channels: int = 1) -> str:
    """The augmentation a run uses: ``--augment``, or for ``auto``: labels get ``photo`` when
    the images are RGB (flips and colour jitter suit photographs) and ``affine`` otherwise
    (a flipped digit or glyph is another symbol); parameters get ``instrument``."""
    if cfg.data.augment == "auto":
        if kind != "labels":
            return "instrument"
        return "photo" if channels == 3 else "affine"
    return "instrument" if cfg.data.augment == "telescope" else cfg.data.augment


def instrument_range(cfg: TrainConfig) -> InstrumentRange:
    """The instruments a run's training shows the library through (``--beam``, ``--snr``)."""
    return InstrumentRange(beam_max=cfg.data.beam, snr_min=cfg.data.snr)


def random_photo(
    x: torch.Tensor, rotate: float, shift: float, scale: float, jitter: float = 0.2
) -> torch.Tensor:
    """Photo augmentation: random affine, horizontal flip of half the images and, for RGB,
    brightness / contrast / saturation jitter of +/- ``jitter`` (values stay in their range)."""
    x = random_affine(x, rotate, shift, scale)
    b, dev = x.shape[0], x.device
    flip = torch.rand(b, device=dev) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if x.shape[1] != 3 or jitter <= 0:
        return x
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)

    def factor() -> torch.Tensor:
        return (1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * jitter).to(x.dtype)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean * factor()  # contrast, then brightness
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * factor() + grey  # saturation
    return torch.maximum(torch.minimum(x, hi), lo)


def random_affine(x: torch.Tensor, rotate: float, shift: float, scale: float) -> torch.Tensor:
    """Random rotation (degrees), shift (image fraction) and zoom of each image of a batch."""
    b = x.shape[0]
    dev = x.device
    angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(rotate)
    zoom = 1 + (torch.rand(b, device=dev) * 2 - 1) * scale
    offset = (torch.rand(b, 2, device=dev) * 2 - 1) * (2 * shift)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _beam_kernels(b: int, rng: InstrumentRange, dev: torch.device, dtype: torch.dtype):
    """Per image, a normalized elliptical Gaussian kernel [B, 1, K, K] of a random beam."""
    major = rng.beam_min + torch.rand(b, device=dev) * (rng.beam_max - rng.beam_min)
    ratio = rng.min_axis_ratio + torch.rand(b, device=dev) * (1 - rng.min_axis_ratio)
    theta = torch.rand(b, device=dev) * math.pi
    sy = (major * FWHM_TO_SIGMA).clamp(min=1e-3)
    sx = (major * ratio * FWHM_TO_SIGMA).clamp(min=1e-3)
    radius = max(1, math.ceil(3.5 * rng.beam_max * FWHM_TO_SIGMA))
    t = torch.arange(-radius, radius + 1, device=dev, dtype=dtype)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    c, s = torch.cos(theta).view(b, 1, 1), torch.sin(theta).view(b, 1, 1)
    u = xx * c + yy * s
    v = -xx * s + yy * c
    k = torch.exp(-0.5 * ((u / sx.view(b, 1, 1)) ** 2 + (v / sy.view(b, 1, 1)) ** 2))
    return (k / k.sum(dim=(1, 2), keepdim=True)).unsqueeze(1), radius


def _subpixel_shift(x: torch.Tensor, pixels: float) -> torch.Tensor:
    b, _, h, w = x.shape
    offset = (torch.rand(b, 2, device=x.device) * 2 - 1) * pixels
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = offset[:, 0] * 2 / w
    theta[:, 1, 2] = offset[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_instrument(x: torch.Tensor, rng: InstrumentRange) -> torch.Tensor:
    """Images of a batch seen through random instruments of ``rng`` (a share left clean).

    Each degraded image is shifted by up to ``rng.shift`` pixels, convolved with a random
    elliptical beam, given noise of sigma = peak / SNR (SNR log-uniform; a share noise-free)
    and min-max scaled again, as the model's preprocessing does for a query. A flux scale
    needs no drawing: the per-image min-max scaling makes the encoder blind to it.
    """
    b, c, h, w = x.shape
    dev = x.device
    degrade = torch.rand(b, device=dev) >= rng.clean
    if not bool(degrade.any()):
        return x
    seen = _subpixel_shift(x, rng.shift) if rng.shift > 0 else x
    if rng.beam_max > 0:
        kernels, radius = _beam_kernels(b, rng, dev, x.dtype)
        seen = F.conv2d(seen.reshape(1, b * c, h, w), kernels.repeat_interleave(c, 0),
                        padding=radius, groups=b * c).reshape(b, c, h, w)  # fmt: skip
    log_lo, log_hi = math.log10(rng.snr_min), math.log10(max(rng.snr_max, rng.snr_min))
    snr = 10 ** (log_lo + torch.rand(b, device=dev) * (log_hi - log_lo))
    noisy = torch.rand(b, device=dev) >= rng.noise_free
    peak = seen.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    sigma = torch.where(noisy, peak.view(b) / snr, torch.zeros_like(snr))
    seen = seen + torch.randn_like(seen) * sigma.view(b, 1, 1, 1)
    lo = seen.amin(dim=(1, 2, 3), keepdim=True)
    span = (seen.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp(min=1e-6)
    return torch.where(degrade.view(b, 1, 1, 1), (seen - lo) / span, x)
