"""Encoders: images [B, C, H, W] -> embeddings [B, d], one registry for all of them.

The Siamese "twin" is one encoder applied to every image; the similarity of a
pair is the cosine of their embeddings, so embeddings are L2-normalized by
default. Every encoder records the keyword arguments that rebuild it
(:attr:`Encoder.config`, plain JSON values; with :attr:`Encoder.name` it is the
encoder's whole description) and the preprocessing its input expects
(:meth:`Encoder.default_preprocessing`), so that a saved model can be rebuilt
from a JSON file plus a safetensors file and nothing else.

The registry works like timm's: a builder function decorated with
:func:`register_encoder` is an encoder, :func:`create_encoder` builds one by
name, :func:`list_encoders` lists them. Names:

- ``seed-cnn``: seed 000's encoder (five conv blocks 8-16-32-64-128, FC 1024 -> d),
  every architectural choice configurable;
- ``small-cnn``: seed 003's two-block CNN for small images (MNIST-like);
- ``resnet18`` / ``resnet34`` / ``resnet50``: timm's ResNets (the same layers and
  parameter names as torchvision's), first conv adapted to the input channels;
- ``timm:<name>``: any timm backbone as a feature extractor plus a linear head.

Pretrained weights are never downloaded: ``weights`` must be a local file
(timm loads it through ``pretrained_cfg_overlay=dict(file=...)`` and adapts the
first convolution to the input channels); a pretrained backbone standardizes its
input with the mean and std of its pretrained config.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from twinsight.data.transforms import Preprocessing
from twinsight.errors import TwinsightError
from twinsight.registry import Registry
from twinsight.validation import check_positive_int

log = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "elu", "leaky-relu")
RESNETS = ("resnet18", "resnet34", "resnet50")
TIMM_PREFIX = "timm:"

#: Arguments every builder takes (and :attr:`Encoder.config` records); ``weights`` is
#: optional for a builder and never recorded (a trained model's weights live in its bundle).
COMMON_ARGS = ("embedding_dim", "in_channels", "input_size", "normalize")


class Encoder(nn.Module):
    """A backbone (images -> features) and a head (features -> d), L2-normalized by default.

    Attributes: ``name`` (registry name), ``embedding_dim``, ``config`` (every keyword
    argument :func:`create_encoder` needs to rebuild this encoder, JSON-able); both are
    filled in by :func:`create_encoder`, so a builder need not know its own name.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        embedding_dim: int,
        preprocessing: Preprocessing,
        normalize: bool = True,
        name: str = "",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.config = dict(config or {})
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


# -- the registry ------------------------------------------------------------------------------

Builder = TypeVar("Builder", bound=Callable[..., Encoder])


@dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: its builder and the default values of its options."""

    name: str
    builder: Callable[..., Encoder]
    default_config: Mapping[str, Any]

    @property
    def loads_weights(self) -> bool:
        """Whether the builder loads a weights file itself (else create_encoder does)."""
        return "weights" in inspect.signature(self.builder).parameters


_REGISTRY: Registry[EncoderEntry] = Registry("encoder")


def _json_config(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``config`` as plain JSON values (tuples become lists); anything else is refused."""
    try:
        return json.loads(json.dumps(dict(config), default=_json_scalar))
    except (TypeError, ValueError) as exc:
        raise TwinsightError(f"{where}: options must be JSON values ({exc})") from None


def _json_scalar(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()  # numpy / torch scalars
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _check_builder(name: str, builder: Callable[..., Encoder], options: Sequence[str]) -> None:
    """A builder must take the common arguments and every option by keyword."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [a for a in (*COMMON_ARGS, *options) if a not in params]
    if missing:
        raise TwinsightError(
            f"encoder '{name}': its builder {getattr(builder, '__name__', builder)!r} lacks the "
            f"keyword argument(s) {missing}; builders take {', '.join(COMMON_ARGS)} and each option"
        )


def register_encoder(
    name: str, *, default_config: Mapping[str, Any] | None = None, replace: bool = False
) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(*, embedding_dim, in_channels, input_size, normalize,
    [weights,] **options) -> Encoder`` under ``name``.

    ``default_config`` holds every option and its default value (JSON values); an
    option not listed there is refused by :func:`create_encoder`. A builder that takes
    ``weights`` loads that local file itself; for any other builder,
    :func:`create_encoder` loads it into the whole encoder. ``replace=True`` replaces
    an existing entry (otherwise a clash is an error). Returns the builder unchanged.
    """
    if not isinstance(name, str) or not name.strip() or name.startswith(TIMM_PREFIX):
        raise TwinsightError(
            f"encoder name {name!r} is not allowed: give a non-empty name that does not start "
            f"with '{TIMM_PREFIX}' (reserved for timm backbones)"
        )
    defaults = _json_config(default_config or {}, f"encoder '{name}' default_config")

    def decorate(builder: Builder) -> Builder:
        _check_builder(name, builder, list(defaults))
        _REGISTRY.add(name, EncoderEntry(name, builder, defaults), replace=replace)
        return builder

    return decorate


def unregister_encoder(name: str) -> EncoderEntry:
    """Remove ``name`` from the registry (tests and plugins clean up with it); returns its entry."""
    return _REGISTRY.remove(name)


def list_encoders() -> list[str]:
    """The registered encoder names (``timm:<name>`` stands for any timm model)."""
    return [*_REGISTRY.names(), f"{TIMM_PREFIX}<name>"]


def encoder_defaults(name: str) -> dict[str, Any]:
    """The options of a registered encoder with their default values (a copy)."""
    return dict(_entry(name).default_config)


def _entry(name: str) -> EncoderEntry:
    return _REGISTRY.get(name, valid=list_encoders())


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


# -- seed-cnn ----------------------------------------------------------------------------------


@register_encoder(
    "seed-cnn",
    default_config={
        "channels": [8, 16, 32, 64, 128],
        "kernel_size": 3,
        "stride": 1,
        "padding": 1,
        "pool": True,
        "pool_size": 2,
        "dropout": 0.0,
        "batch_norm": True,
        "activation": "relu",
        "he_init": True,
        "hidden": 1024,
    },
)
def seed_cnn(
    *,
    embedding_dim: int,
    in_channels: int,
    input_size: tuple[int, int],
    normalize: bool,
    channels: Sequence[int],
    kernel_size: int,
    stride: int,
    padding: int,
    pool: bool,
    pool_size: int,
    dropout: float,
    batch_norm: bool,
    activation: str,
    he_init: bool,
    hidden: int,
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
    return Encoder(
        backbone,
        head,
        embedding_dim=embedding_dim,
        preprocessing=_minmax(input_size, in_channels),
        normalize=normalize,
    )


# -- small-cnn ---------------------------------------------------------------------------------


@register_encoder("small-cnn", default_config={"channels": [32, 64], "seed_exact": False})
def small_cnn(
    *,
    embedding_dim: int,
    in_channels: int,
    input_size: tuple[int, int],
    normalize: bool,
    channels: Sequence[int],
    seed_exact: bool,
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
    return Encoder(
        nn.Sequential(*layers),
        head,
        embedding_dim=embedding_dim,
        # Min-max rather than MNIST's mean/std: the first layer is conv + BatchNorm, which
        # absorbs any affine rescaling of the input, and min-max fits every data source.
        preprocessing=_minmax(input_size, in_channels),
        normalize=normalize,
    )


# -- local weights -----------------------------------------------------------------------------


def _local_file(path: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise TwinsightError(
            f"weights file '{path}' does not exist; pass a local file of pretrained weights "
            f"(twinsight never downloads them)"
        )
    return file


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or a torch file read with weights_only."""
    file = _local_file(path)
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


def _load_local_weights(encoder: Encoder, weights: str | None) -> None:
    """Load a whole-encoder state dict from a local file (builders that take no ``weights``)."""
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


# -- timm backbones ----------------------------------------------------------------------------


def _channel_stats(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for ``channels`` inputs: as given, or their average repeated."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels


def pretrained_preprocessing(
    net: nn.Module, input_size: tuple[int, int], channels: int
) -> Preprocessing:
    """Standardization with the mean and std of the backbone's pretrained config.

    A backbone adapted to another number of channels (grey images into an RGB
    model) gets the average of the statistics for every channel, as timm adapts
    its first convolution. Without statistics in the config: min-max.
    """
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std:
        log.warning("backbone %s has no mean/std in its pretrained config; using min-max", net)
        return _minmax(input_size, channels)
    return Preprocessing(
        size=input_size,
        channels=channels,
        normalize="standardize",
        mean=_channel_stats(mean, channels),
        std=_channel_stats(std, channels),
    )


def _timm_module():
    import timm

    return timm


def _check_timm_name(model_name: str) -> None:
    timm = _timm_module()
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name}*")[:10]
        hint = f"; similar timm names: {', '.join(close)}" if close else ""
        raise TwinsightError(
            f"unknown timm model 'timm:{model_name}'{hint} (see timm.list_models() for all of them)"
        )


def _check_timm_weights(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """timm loads with strict=False when the classifier is dropped: check the keys here."""
    classifiers = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    expected = set(net.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(
        k for k in set(state) - expected if not k.startswith(tuple(f"{c}." for c in classifiers))
    )
    if missing or unexpected:
        raise TwinsightError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def create_timm_backbone(
    model_name: str, *, in_channels: int, weights: str | None, **timm_kwargs: Any
) -> nn.Module:
    """``timm.create_model(name, pretrained=..., num_classes=0, in_chans=C)``, never downloading.

    With ``weights`` (a local state-dict file) timm loads it through
    ``pretrained_cfg_overlay=dict(file=...)``, adapting the first convolution to
    ``in_channels``; without, the backbone is randomly initialized.
    """
    _check_timm_name(model_name)
    kwargs: dict[str, Any] = dict(num_classes=0, in_chans=in_channels, pretrained=False)
    state = None
    if weights:
        state = _read_state_dict(weights)  # clear errors for a missing or unreadable file
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(_local_file(weights))))
    try:
        net = _timm_module().create_model(model_name, **kwargs, **timm_kwargs)
    except Exception as exc:  # noqa: BLE001 - timm raises many types for a bad option or file
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        if state is not None and not isinstance(exc, TypeError):  # TypeError: a bad option
            raise TwinsightError(
                f"weights file '{weights}' does not fit {model_name}: {detail}"
            ) from None
        raise TwinsightError(f"cannot create timm model '{model_name}': {detail}") from None
    if state is not None:
        _check_timm_weights(net, state, f"weights file '{weights}' does not fit {model_name}")
    return net


def timm_encoder(
    model_name: str,
    *,
    embedding_dim: int,
    in_channels: int,
    input_size: tuple[int, int],
    normalize: bool,
    weights: str | None,
    **timm_kwargs: Any,
) -> Encoder:
    """A timm backbone (pooled features) plus a linear head to ``embedding_dim``.

    Pretrained weights bring the pretrained config's standardization; a randomly
    initialized backbone takes min-max scaled images like the small CNNs.
    """
    net = create_timm_backbone(model_name, in_channels=in_channels, weights=weights, **timm_kwargs)
    if weights:
        prep = pretrained_preprocessing(net, input_size, in_channels)
    else:
        prep = _minmax(input_size, in_channels)
    return Encoder(
        net,
        nn.Linear(net.num_features, embedding_dim),
        embedding_dim=embedding_dim,
        preprocessing=prep,
        normalize=normalize,
    )


for _arch in RESNETS:  # the ResNets are timm backbones under their plain names
    register_encoder(_arch)(functools.partial(timm_encoder, _arch))


# -- building ----------------------------------------------------------------------------------


def _check_pretrained(name: str, weights: str | None, pretrained: bool) -> None:
    if pretrained and not weights:
        raise TwinsightError(
            f"encoder '{name}': pretrained weights cannot be downloaded (twinsight works "
            "offline); pass a local weights file with weights='path/to/file.safetensors' "
            "(encoder.weights in the config, --weights on the command line)"
        )


def _build_registered(
    name: str, common: dict[str, Any], weights: str | None, options: dict[str, Any]
) -> tuple[Encoder, dict[str, Any]]:
    """Build a registered encoder; returns it and the options it was built with."""
    entry = _entry(name)
    unknown = sorted(set(options) - set(entry.default_config))
    if unknown:
        allowed = ", ".join(entry.default_config) or "none"
        raise TwinsightError(
            f"encoder '{name}' has no option(s) {unknown}; its options are: {allowed} "
            f"(and embedding_dim, in_channels, input_size, weights, normalize for all)"
        )
    config = {**entry.default_config, **_json_config(options, f"encoder '{name}'")}
    extra = {"weights": weights} if entry.loads_weights else {}
    try:
        encoder = entry.builder(**common, **extra, **config)
    except TypeError as exc:
        raise TwinsightError(f"encoder '{name}': bad option: {exc}") from None
    if not isinstance(encoder, Encoder):
        raise TwinsightError(
            f"encoder '{name}': its builder returned {type(encoder).__name__}, not an Encoder"
        )
    encoder.name = name
    if not entry.loads_weights:
        _load_local_weights(encoder, weights)
    return encoder, config


def _build_timm_family(
    name: str, common: dict[str, Any], weights: str | None, options: dict[str, Any]
) -> tuple[Encoder, dict[str, Any]]:
    model_name = name.removeprefix(TIMM_PREFIX)
    if not model_name:
        raise TwinsightError("encoder 'timm:' needs a model name, e.g. 'timm:resnet10t'")
    config = _json_config(options, f"encoder '{name}'")
    encoder = timm_encoder(model_name, **common, weights=weights, **config)
    encoder.name = name
    return encoder, config


def create_encoder(
    name: str,
    *,
    embedding_dim: int = 128,
    in_channels: int = 1,
    input_size: Sequence[int] = (64, 64),
    weights: str | None = None,
    pretrained: bool = False,
    normalize: bool = True,
    **options: Any,
) -> Encoder:
    """Build an encoder by name (see :func:`list_encoders`) with its options in ``options``.

    ``weights`` is a local state-dict file (safetensors or torch, read without
    unpickling); it is applied once at construction and not recorded in ``config``
    (a trained model's own weights live in its bundle). ``pretrained=True`` without
    ``weights`` is an error: nothing is downloaded. ``Encoder.config`` holds every
    other argument (options with their defaults), so
    ``create_encoder(enc.name, **enc.config)`` rebuilds it.
    """
    if not isinstance(name, str) or not name:
        raise TwinsightError(f"encoder name must be a string, got {name!r}")
    _check_pretrained(name, weights, bool(pretrained))
    common = dict(
        embedding_dim=_positive_int("embedding_dim", embedding_dim),
        in_channels=_positive_int("in_channels", in_channels),
        input_size=_check_size(input_size),
        normalize=bool(normalize),
    )
    weights = str(weights) if weights else None
    build = _build_timm_family if name.startswith(TIMM_PREFIX) else _build_registered
    encoder, config = build(name, common, weights, options)
    encoder.config = {**common, "input_size": list(common["input_size"]), **config}
    return encoder
