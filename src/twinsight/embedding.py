"""Images in, embeddings out: the one place where the encoder runs for inference.

Indexing, search, matching and evaluation all embed through here, so every
image goes through the same preprocessing and the same eval-mode encoder, in
batches, without gradients. On CPU the batch and the conv weights are laid out
channels-last, which runs convolutions 1.5-1.7x faster on this machine.

The device is chosen per call: ``"auto"`` (the default) is the CUDA GPU when
there is one and the CPU otherwise; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` and
``"mps"`` name one. On a GPU, ``precision="bf16"`` or ``"fp16"`` runs the
encoder under autocast (the embeddings come back float32 either way), and
``"auto"`` picks fp16 there; the default ``"fp32"`` runs it as it is, so CPU
results are those of plain PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from twinsight.data.collection import Collection
from twinsight.data.transforms import Preprocessing
from twinsight.errors import TwinsightError
from twinsight.progress import track
from twinsight.validation import check_positive_int

log = logging.getLogger(__name__)


def _check_batch_size(batch_size: int) -> int:
    return check_positive_int(batch_size, "batch_size")


DEVICES = ("auto", "cpu", "cuda", "cuda:<i>", "mps")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _check_available(dev: torch.device, device: Any) -> None:
    """Refuse a device this machine does not have, naming what it has."""
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise TwinsightError(
                f"device {device!r} requested but no CUDA GPU is available; use 'cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= count:
            raise TwinsightError(
                f"device {device!r} requested but this machine has {count} CUDA GPU(s) "
                f"(cuda:0 .. cuda:{count - 1})"
            )
    elif dev.type == "mps" and not _mps_available():
        raise TwinsightError(f"device {device!r} requested but MPS is not available; use 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise TwinsightError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``device``: "auto" -> the CUDA GPU if there is one, else the CPU.

    Any other value names a device ("cpu", "cuda", "cuda:1", "mps" or a
    ``torch.device``); one that does not exist here is a :class:`TwinsightError`.
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise TwinsightError(
            f"unknown device {device!r}; use one of {', '.join(DEVICES)}"
        ) from None
    _check_available(dev, device)
    return dev


def _autocast(dev: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 on a GPU for ``precision``; nothing for fp32 or on the CPU.

    ``"auto"`` is fp16 on a CUDA GPU (as training's ``16-mixed``) and fp32 elsewhere.
    """
    if precision == "auto":
        precision = "fp16" if dev.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        choices = ", ".join([*PRECISIONS, "auto"])
        raise TwinsightError(f"unknown precision {precision!r}; use one of {choices}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if dev.type == "cpu":
        log.debug("precision %s applies on a GPU only; the CPU embeds in fp32", precision)
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


class _EvalMode:
    """Put a module in eval mode on a device for a while, then restore its training flag."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module, self.device = module, device

    def __enter__(self) -> nn.Module:
        self.was_training = self.module.training
        self.module.to(self.device).eval()
        if self.device.type == "cpu":
            _channels_last(self.module)
        return self.module

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was_training)


def _channels_last(module: nn.Module) -> None:
    """Lay the conv weights out channels-last (once): 1.5-1.7x faster CPU inference here.

    The layout changes no result; the module is left that way so that repeated calls
    (one query image at a time) do not pay for the conversion again.
    """
    if any(
        p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last)
        for p in module.parameters()
    ):
        module.to(memory_format=torch.channels_last)


def _run(encoder: nn.Module, batch: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(batch).to(device, non_blocking=True)
    if device.type == "cpu" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    out = encoder(x)
    return out.float().cpu().numpy()


def embed_images(
    encoder: nn.Module,
    images: np.ndarray,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    precision: str = "fp32",
) -> np.ndarray:
    """Embed images (natural scale, [N, C, H, W] or one [C, H, W] / [H, W]) -> float32 [N, d].

    Each batch goes through ``preprocessing`` and then the encoder in eval mode under
    ``torch.inference_mode``; the encoder is moved to ``device`` (see
    :func:`resolve_device`; it stays there, so repeated calls do not move it again)
    and its training flag restored afterwards. ``precision`` "bf16"/"fp16" autocasts
    on a GPU.
    """
    batch_size = _check_batch_size(batch_size)
    dev = resolve_device(device)
    autocast = _autocast(dev, precision)
    images = np.asarray(images)
    if images.ndim in (2, 3):
        images = images[None] if images.ndim == 3 else images[None, None]
    if images.ndim != 4:
        raise TwinsightError(f"expected images [N, C, H, W], got shape {images.shape}")
    outputs = []
    with _EvalMode(encoder, dev) as model, torch.inference_mode(), autocast:
        for start in range(0, len(images), batch_size):
            batch = preprocessing(images[start : start + batch_size])
            outputs.append(_run(model, batch, dev))
    if not outputs:
        dim = int(getattr(encoder, "embedding_dim", 0))
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)


def _encoder_and_preprocessing(model: Any) -> tuple[nn.Module, Preprocessing]:
    """Accept a ModelBundle (duck-typed: .encoder, .preprocessing) or a bare Encoder."""
    if hasattr(model, "encoder") and hasattr(model, "preprocessing"):
        return model.encoder, model.preprocessing
    if isinstance(model, nn.Module) and hasattr(model, "default_preprocessing"):
        return model, model.default_preprocessing()
    raise TwinsightError(
        f"expected a ModelBundle or an encoder from create_encoder, got {type(model).__name__}"
    )


def embed_collection(
    bundle_or_encoder: Any,
    collection: Collection,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """Embed every image of ``collection`` in order -> float32 [N, d], streaming in batches.

    ``device`` and ``precision`` as for :func:`embed_images`.
    """
    batch_size = _check_batch_size(batch_size)
    encoder, preprocessing = _encoder_and_preprocessing(bundle_or_encoder)
    dev = resolve_device(device)
    autocast = _autocast(dev, precision)
    dim = int(getattr(encoder, "embedding_dim", 0))
    out: np.ndarray | None = None
    n_batches = -(-len(collection) // batch_size)
    batches = collection.iter_batches(batch_size)
    with _EvalMode(encoder, dev) as model, torch.inference_mode(), autocast:
        for positions, images in track(
            batches, total=n_batches, description="embedding", enabled=progress
        ):
            emb = _run(model, preprocessing(images), dev)
            if out is None:
                out = np.empty((len(collection), emb.shape[1]), dtype=np.float32)
            out[positions] = emb
    if out is None:
        return np.zeros((0, dim), dtype=np.float32)
    log.debug("embedded %d images of '%s'", len(collection), collection.name)
    return out
