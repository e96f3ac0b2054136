"""Encoders: images [B, C, H, W] -> embeddings [B, d], one registry for all of them.

The Siamese "twin" is one encoder applied to every image; the similarity of a
pair is the cosine of their embeddings, so embeddings are L2-normalized by
default. Every encoder records the keyword arguments that rebuild it
(:attr:`Encoder.config`, plain JSON values) and the preprocessing its input
expects (:meth:`Encoder.default_preprocessing`), so that a saved model can be
rebuilt from a JSON file plus a safetensors file and nothing else.

Names:

- ``seed-cnn``: seed 000's encoder (five conv blocks 8-16-32-64-128, FC 1024 -> d),
  every architectural choice configurable;
- ``small-cnn``: seed 003's two-block CNN for small images (MNIST-like);
- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision ResNets, first conv adapted to
  the input channels, pretrained weights only from a local file;
- ``timm:<name>``: any timm backbone as a feature extractor plus a linear head.

Pretrained weights are never downloaded: ``weights`` must be a local file.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twinsight.data.transforms import Preprocessing
from twinsight.errors import TwinsightError
from twinsight.validation import check_positive_int

log = logging.getLogger(__name__)

#: ImageNet statistics, used as the default preprocessing of pretrained backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ACTIVATIONS = ("relu", "elu", "leaky-relu")
RESNETS = ("resnet18", "resnet34", "resnet50")


class Encoder(nn.Module):
    """A backbone (images -> features) and a head (features -> d), L2-normalized by default.

    Attributes: ``name`` (registry name), ``embedding_dim``, ``config`` (every keyword
    argument :func:`create_encoder` needs to rebuild this encoder, JSON-able).
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        head: nn.Module,
        *,
        embedding_dim: int,
        config: dict[str, Any],
        preprocessing: Preprocessing,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.config = dict(config)
        self._preprocessing = preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch: float [B, C, H, W] -> [B, d] (unit rows when ``normalize``)."""
        z = self.head(self.backbone(images))
        if self.normalize:
            z = F.normalize(z.float(), dim=1)
        return z

    def default_preprocessing(self) -> Preprocessing:
        """The preprocessing this encoder's input expects (size, channels, normalization)."""
        return self._preprocessing

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embedding_dim={self.embedding_dim}"


# -- helpers -----------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "leaky-relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise TwinsightError(f"unknown activation '{name}'; expected one of {', '.join(ACTIVATIONS)}")


def _he_init(module: nn.Module, activation: str) -> None:
    """Kaiming-normal weights and zero biases for every conv and linear layer (He et al.)."""
    nonlinearity = "leaky_relu" if activation == "leaky-relu" else "relu"
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _spatial_after(
    size: int, n_layers: int, kernel: int, stride: int, padding: int, pool: int | None
) -> int:
    """Spatial size after ``n_layers`` conv (+ pool) blocks; <= 0 means the input is too small."""
    for _ in range(n_layers):
        size = _conv_out(size, kernel, stride, padding)
        if size <= 0:
            return 0
        if pool:
            size = size // pool
            if size <= 0:
                return 0
    return size


def _minimum_size(n_layers: int, kernel: int, stride: int, padding: int, pool: int | None) -> int:
    for size in range(1, 1 << 16):
        if _spatial_after(size, n_layers, kernel, stride, padding, pool) > 0:
            return size
    return 1 << 16


def _check_size(input_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in input_size)
    except (TypeError, ValueError):
        raise TwinsightError(
            f"input_size must be two positive integers (height, width), got {input_size!r}"
        ) from None
    if h <= 0 or w <= 0:
        raise TwinsightError(f"input_size must be positive, got {(h, w)}")
    return h, w


def _positive_int(name: str, value: Any) -> int:
    return check_positive_int(value, name)


def _minmax(input_size: tuple[int, int], channels: int) -> Preprocessing:
    return Preprocessing(size=input_size, channels=channels, normalize="minmax")


def _imagenet(input_size: tuple[int, int], channels: int) -> Preprocessing:
    """ImageNet standardization for pretrained backbones (grey: the mean of the RGB statistics)."""
    if channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean = (sum(IMAGENET_MEAN) / 3,) * channels
        std = (sum(IMAGENET_STD) / 3,) * channels
    return Preprocessing(
        size=input_size, channels=channels, normalize="standardize", mean=mean, std=std
    )


# -- seed-cnn ----------------------------------------------------------------------------------


def _build_seed_cnn(
    *,
    embedding_dim: int,
    in_channels: int,
    input_size: tuple[int, int],
    weights: str | None,
    normalize: bool,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 1,
    pool: bool = True,
    pool_size: int = 2,
    dropout: float = 0.0,
    batch_norm: bool = True,
    activation: str = "relu",
    he_init: bool = True,
    hidden: int = 1024,
) -> Encoder:
    """Seed 000's encoder: conv blocks (conv [-BN] -act [-maxpool]), then FC ``hidden`` -> d.

    Dropout (probability ``dropout``) sits before each fully connected layer. The
    flatten size follows from ``input_size``; an input that the pooling would shrink
    to nothing is refused with the minimum size.
    """
    channels = [_positive_int("channels[i]", c) for c in channels]
    if not channels:
        raise TwinsightError("seed-cnn: 'channels' must list at least one conv layer")
    kernel_size = _positive_int("kernel_size", kernel_size)
    stride = _positive_int("stride", stride)
    pool_size = _positive_int("pool_size", pool_size)
    hidden = _positive_int("hidden", hidden)
    if padding < 0:
        raise TwinsightError(f"seed-cnn: padding must be >= 0, got {padding}")
    if not 0.0 <= float(dropout) < 1.0:
        raise TwinsightError(f"seed-cnn: dropout must be in [0, 1), got {dropout}")
    _activation(activation)  # validates the name
    pool_arg = pool_size if pool else None
    spatial = [
        _spatial_after(s, len(channels), kernel_size, stride, padding, pool_arg) for s in input_size
    ]
    if min(spatial) <= 0:
        minimum = _minimum_size(len(channels), kernel_size, stride, padding, pool_arg)
        n_pools = len(channels) if pool else 0
        raise TwinsightError(
            f"seed-cnn: input size {input_size[0]}x{input_size[1]} is too small for "
            f"{len(channels)} conv layers with {n_pools} pooling layers of size {pool_size}: "
            f"the minimum is {minimum}x{minimum}; resize the images (--image-size) or use "
            f"fewer conv layers (channels) or pool=false"
        )
    layers: list[nn.Module] = []
    prev = in_channels
    for ch in channels:
        layers.append(nn.Conv2d(prev, ch, kernel_size, stride, padding, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(ch))
        layers.append(_activation(activation))
        if pool:
            layers.append(nn.MaxPool2d(pool_size))
        prev = ch
    layers.append(nn.Flatten())
    backbone = nn.Sequential(*layers)
    flat = prev * spatial[0] * spatial[1]
    head = nn.Sequential(
        nn.Dropout(float(dropout)),
        nn.Linear(flat, hidden),
        _activation(activation),
        nn.Dropout(float(dropout)),
        nn.Linear(hidden, embedding_dim),
    )
    if he_init:
        _he_init(backbone, activation)
        _he_init(head, activation)
    config = {
        "channels": list(channels),
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": int(padding),
        "pool": bool(pool),
        "pool_size": pool_size,
        "dropout": float(dropout),
        "batch_norm": bool(batch_norm),
        "activation": activation,
        "he_init": bool(he_init),
        "hidden": hidden,
    }
    encoder = Encoder(
        "seed-cnn",
        backbone,
        head,
        embedding_dim=embedding_dim,
        config=config,
        preprocessing=_minmax(input_size, in_channels),
        normalize=normalize,
    )
    _load_local_weights(encoder, weights)
    return encoder


# -- small-cnn ---------------------------------------------------------------------------------


def _build_small_cnn(
    *,
    embedding_dim: int,
    in_channels: int,
    input_size: tuple[int, int],
    weights: str | None,
    normalize: bool,
    channels: Sequence[int] = (32, 64),
    seed_exact: bool = False,
) -> Encoder:
    """Seed 003's CNN: (conv3x3 - BN - ReLU - maxpool2) per entry of ``channels``, then a head.

    The head is a plain ``Linear(flat -> d)``. Seed 003 ends with
    ``Linear -> BatchNorm -> ReLU`` before the L2 normalization: the ReLU confines every
    embedding to the positive orthant, so no two images can ever have a negative cosine,
    which wastes half of the similarity range and weakens contrastive and triplet
    training. ``seed_exact=True`` restores the original head.
    """
    channels = [_positive_int("channels[i]", c) for c in channels]
    if not channels:
        raise TwinsightError("small-cnn: 'channels' must list at least one conv layer")
    spatial = [_spatial_after(s, len(channels), 3, 1, 1, 2) for s in input_size]
    if min(spatial) <= 0:
        minimum = _minimum_size(len(channels), 3, 1, 1, 2)
        raise TwinsightError(
            f"small-cnn: input size {input_size[0]}x{input_size[1]} is too small for "
            f"{len(channels)} pooling layers of size 2: the minimum is {minimum}x{minimum}; "
            f"resize the images (--image-size)"
        )
    layers: list[nn.Module] = []
    prev = in_channels
    for ch in channels:
        layers += [
            nn.Conv2d(prev, ch, 3, padding=1),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        prev = ch
    layers.append(nn.Flatten())
    flat = prev * spatial[0] * spatial[1]
    if seed_exact:
        head: nn.Module = nn.Sequential(
            nn.Linear(flat, embedding_dim), nn.BatchNorm1d(embedding_dim), nn.ReLU()
        )
    else:
        head = nn.Linear(flat, embedding_dim)
    encoder = Encoder(
        "small-cnn",
        nn.Sequential(*layers),
        head,
        embedding_dim=embedding_dim,
        config={"channels": list(channels), "seed_exact": bool(seed_exact)},
        # Min-max rather than MNIST's mean/std: the first layer is conv + BatchNorm, which
        # absorbs any affine rescaling of the input, and min-max fits every data source.
        preprocessing=_minmax(input_size, in_channels),
        normalize=normalize,
    )
    _load_local_weights(encoder, weights)
    return encoder


# -- torchvision resnets -----------------------------------------------------------------------


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or a torch file read with weights_only."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TwinsightError(
            f"weights file '{path}' does not exist; pass a local file of pretrained weights "
            f"(twinsight never downloads them)"
        )
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise TwinsightError(
            f"cannot read weights file '{path}': {exc}; expected a state dict saved by "
            f"torch.save or safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TwinsightError(f"weights file '{path}' does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Pretrained RGB filters for ``in_channels`` inputs: their average, rescaled by 3/C.

    Rescaling keeps the activations of a grey image equal to those of its RGB copy,
    so the pretrained batch-norm statistics stay valid.
    """
    if weight.shape[1] == in_channels:
        return weight
    mean = weight.mean(dim=1, keepdim=True) * (weight.shape[1] / in_channels)
    return mean.repeat(1, in_channels, 1, 1)


def _build_resnet(
    arch: str,
    *,
    embedding_dim: int,
    in_channels: int,
    input_size: tuple[int, int],
    weights: str | None,
    normalize: bool,
) -> Encoder:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    features = net.fc.in_features
    net.fc = nn.Identity()
    if weights:
        state = _read_state_dict(weights)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        if "conv1.weight" in state:
            state["conv1.weight"] = _adapt_first_conv(state["conv1.weight"], in_channels)
        _load_checked(net, state, f"weights file '{weights}' does not fit {arch}")
    prep = _imagenet(input_size, in_channels) if weights else _minmax(input_size, in_channels)
    return Encoder(
        arch,
        net,
        nn.Linear(features, embedding_dim),
        embedding_dim=embedding_dim,
        config={},
        preprocessing=prep,
        normalize=normalize,
    )


# -- timm --------------------------------------------------------------------------------------


def _build_timm(
    model_name: str,
    *,
    embedding_dim: int,
    in_channels: int,
    input_size: tuple[int, int],
    weights: str | None,
    normalize: bool,
    **timm_kwargs: Any,
) -> Encoder:
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name}*")[:10]
        hint = f"; similar timm names: {', '.join(close)}" if close else ""
        raise TwinsightError(
            f"unknown timm model 'timm:{model_name}'{hint} (see timm.list_models() for all of them)"
        )
    kwargs: dict[str, Any] = dict(num_classes=0, in_chans=in_channels, **timm_kwargs)
    if weights:
        file = Path(weights).expanduser()
        if not file.is_file():
            raise TwinsightError(
                f"weights file '{weights}' does not exist; pass a local file of pretrained "
                f"weights (twinsight never downloads them)"
            )
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    try:
        net = timm.create_model(model_name, **kwargs)
    except TwinsightError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TwinsightError(f"cannot create timm model '{model_name}': {exc}") from None
    prep = _imagenet(input_size, in_channels) if weights else _minmax(input_size, in_channels)
    return Encoder(
        f"timm:{model_name}",
        net,
        nn.Linear(net.num_features, embedding_dim),
        embedding_dim=embedding_dim,
        config=dict(timm_kwargs),
        preprocessing=prep,
        normalize=normalize,
    )


# -- registry ----------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[..., Encoder]] = {
    "seed-cnn": _build_seed_cnn,
    "small-cnn": _build_small_cnn,
    **{arch: functools.partial(_build_resnet, arch) for arch in RESNETS},
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "seed-cnn": tuple(inspect.signature(_build_seed_cnn).parameters)[5:],
    "small-cnn": tuple(inspect.signature(_build_small_cnn).parameters)[5:],
    **{arch: () for arch in RESNETS},
}


def list_encoders() -> list[str]:
    """The registered encoder names (``timm:<name>`` stands for any timm model)."""
    return [*_BUILDERS, "timm:<name>"]


def _load_local_weights(encoder: Encoder, weights: str | None) -> None:
    """Load a whole-encoder state dict from a local file (for seed-cnn / small-cnn)."""
    if not weights:
        return
    state = _read_state_dict(weights)
    _load_checked(encoder, state, f"weights file '{weights}' does not fit encoder '{encoder.name}'")


def _load_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that names missing, unexpected and mis-shaped keys in a TwinsightError."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n")[1:3]).strip()
        raise TwinsightError(f"{what}: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        raise TwinsightError(
            f"{what}: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def create_encoder(
    name: str,
    *,
    embedding_dim: int = 128,
    in_channels: int = 1,
    input_size: Sequence[int] = (64, 64),
    weights: str | None = None,
    normalize: bool = True,
    **cfg: Any,
) -> Encoder:
    """Build an encoder by name (see :func:`list_encoders`) with its options in ``cfg``.

    ``weights`` is a local state-dict file (safetensors or torch, read without
    unpickling); it is applied once at construction and not recorded in ``config``
    (a trained model's own weights live in its bundle). ``Encoder.config`` holds every
    other argument, so ``create_encoder(enc.name, **enc.config)`` rebuilds it.
    """
    if not isinstance(name, str) or not name:
        raise TwinsightError(f"encoder name must be a string, got {name!r}")
    embedding_dim = _positive_int("embedding_dim", embedding_dim)
    in_channels = _positive_int("in_channels", in_channels)
    size = _check_size(input_size)
    common = dict(
        embedding_dim=embedding_dim,
        in_channels=in_channels,
        input_size=size,
        weights=str(weights) if weights else None,
        normalize=bool(normalize),
    )
    if name.startswith("timm:"):
        model_name = name.removeprefix("timm:")
        if not model_name:
            raise TwinsightError("encoder 'timm:' needs a model name, e.g. 'timm:resnet10t'")
        encoder = _build_timm(model_name, **common, **cfg)
    elif name in _BUILDERS:
        unknown = sorted(set(cfg) - set(_OPTIONS[name]))
        if unknown:
            allowed = ", ".join(_OPTIONS[name]) or "none"
            raise TwinsightError(
                f"encoder '{name}' has no option(s) {unknown}; its options are: {allowed} "
                f"(and embedding_dim, in_channels, input_size, weights, normalize for all)"
            )
        try:
            encoder = _BUILDERS[name](**common, **cfg)
        except TypeError as exc:
            raise TwinsightError(f"encoder '{name}': bad option: {exc}") from None
    else:
        raise TwinsightError(f"unknown encoder '{name}'; valid names: {', '.join(list_encoders())}")
    encoder.config = {
        "embedding_dim": embedding_dim,
        "in_channels": in_channels,
        "input_size": list(size),
        "normalize": bool(normalize),
        **encoder.config,
    }
    return encoder
