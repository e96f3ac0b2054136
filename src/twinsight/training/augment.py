"""Training-batch augmentations, on the device, after the batch is assembled.

``affine`` (random rotation, shift, zoom) for class targets, where the class
does not change under them; ``telescope`` (a random Gaussian beam and noise)
to make an encoder robust to how an instrument sees a simulation. Parameter
targets get no augmentation by default: a shift or zoom may change what the
parameters mean (sizes in AU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from twinsight.config import TrainConfig


def augment_choice(cfg: TrainConfig, kind: str, channels: int = 1) -> str:
    """The augmentation a run uses: ``--augment``, or for ``auto``: labels get ``photo`` when
    the images are RGB (flips and colour jitter suit photographs) and ``affine`` otherwise
    (a flipped digit or glyph is another symbol); parameters get none."""
    if cfg.data.augment == "auto":
        if kind != "labels":
            return "none"
        return "photo" if channels == 3 else "affine"
    return cfg.data.augment


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


def random_telescope(x: torch.Tensor, max_beam: float, min_snr: float) -> torch.Tensor:
    """Half of the images seen as a telescope would: a Gaussian beam and noise.

    Each chosen image is blurred with a beam of FWHM uniform in [0, ``max_beam``] pixels and
    gets Gaussian noise of sigma = peak / SNR, SNR log-uniform in [``min_snr``, 10 min_snr];
    then it is min-max scaled again, as the model's preprocessing does for a query.
    """
    b, c, h, w = x.shape
    dev = x.device
    chosen = torch.rand(b, device=dev) < 0.5
    if not bool(chosen.any()):
        return x
    sigma = torch.rand(b, device=dev) * max_beam / 2.3548  # FWHM -> sigma
    radius = max(1, math.ceil(3 * max_beam / 2.3548))
    offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, K], separable
    flat = x.reshape(1, b * c, h, w)
    k = kernel.repeat_interleave(c, 0)
    pad = (radius, radius, radius, radius)
    blurred = F.conv2d(F.pad(flat, pad, mode="reflect" if radius < min(h, w) else "replicate"),
                       k[:, None, None, :], groups=b * c)  # fmt: skip
    blurred = F.conv2d(blurred, k[:, None, :, None], groups=b * c).reshape(b, c, h, w)
    snr = min_snr * 10 ** torch.rand(b, device=dev)
    peak = blurred.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    noisy = blurred + torch.randn_like(blurred) * peak / snr.view(b, 1, 1, 1)
    lo = noisy.amin(dim=(1, 2, 3), keepdim=True)
    span = (noisy.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp(min=1e-6)
    seen = (noisy - lo) / span
    return torch.where(chosen.view(b, 1, 1, 1), seen, x)
