"""Batches for training: the dataset (in memory or streamed), the sampler and the loaders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from twinsight.config import TrainConfig
from twinsight.data.collection import Collection
from twinsight.data.sampling import MPerClassSampler, MPerSystemSampler, RandomBatchSampler
from twinsight.data.targets import TargetSpec
from twinsight.data.transforms import Preprocessing, preprocess
from twinsight.errors import TwinsightError

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from twinsight.training.preparation import Prepared

log = logging.getLogger(__name__)


def _identity(batch: Any) -> Any:
    return batch


class BatchDataset(torch.utils.data.Dataset):
    """Images (preprocessed) and per-image targets, fetched a whole batch at a time.

    In memory when ``images`` is given (the fast path for small sets); otherwise each
    batch is read from the collection and preprocessed on the fly (use workers).
    """

    def __init__(
        self,
        collection: Collection,
        y: np.ndarray,
        preprocessing: Preprocessing,
        images: torch.Tensor | None = None,
    ) -> None:
        self.collection = collection
        self.y = torch.from_numpy(np.ascontiguousarray(y))
        self.preprocessing = preprocessing
        self.images = images

    def __len__(self) -> int:
        return len(self.collection)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            x = self.images[torch.from_numpy(idx)]
        else:
            x = torch.from_numpy(preprocess(self.collection.images(idx), self.preprocessing))
        return x, self.y[torch.from_numpy(idx)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])


def sequential_batches(n: int, batch_size: int) -> list[list[int]]:
    """Consecutive batches of positions 0..n-1 (validation order)."""
    return [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]


def build_sampler(
    config: TrainConfig,
    spec: TargetSpec,
    train: Collection,
    rank: int = 0,
    world: int = 1,
) -> Any:
    """The training batch sampler (m-per-class, m-per-system or random) for one rank."""
    kind = config.sampler.kind
    batch, seed = config.trainer.batch_size, config.trainer.seed
    if kind == "auto":
        kind = _auto_sampler(spec, train)
    replicas = {"rank": rank, "num_replicas": world}
    if kind == "random":
        return RandomBatchSampler(len(train), min(batch, len(train)), seed, True, **replicas)
    if kind == "m-per-class" and spec.kind != "labels":
        raise TwinsightError("--sampler m-per-class needs class labels (--targets labels)")
    if kind == "m-per-class":
        groups = train.items["label"].astype(str).to_numpy()
        cls = MPerClassSampler
    else:
        if not train.has_systems:
            raise TwinsightError(
                f"--sampler m-per-system: collection '{train.name}' has no 'system' column"
            )
        groups = train.items["system"].astype(str).to_numpy()
        cls = MPerSystemSampler
    m = config.sampler.m or auto_m(groups, batch, 2 if kind == "m-per-class" else 4)
    return cls(groups, m, batch, seed, **replicas)


def _auto_sampler(spec: TargetSpec, train: Collection) -> str:
    if spec.kind == "labels":
        return "m-per-class"
    return "m-per-system" if train.has_systems else "random"


def auto_m(groups: np.ndarray, batch: int, smallest: int) -> int:
    """The smallest m >= ``smallest`` dividing the batch with enough groups of >= m items."""
    counts = pd.Series(groups).value_counts().to_numpy()
    for m in range(smallest, batch + 1):
        if batch % m == 0 and batch // m <= len(counts) and m <= counts.min():
            return m
    for m in range(2, batch + 1):  # fall back to smaller m when groups are small
        if batch % m == 0 and batch // m <= len(counts) and m <= counts.min():
            return m
    return smallest  # the sampler explains what does not fit


def loaders(prep: Prepared, trainer: pl.Trainer) -> tuple[Any, Any]:
    """Training and validation loaders; images held in memory when they fit the budget."""
    cfg = prep.config
    limit = cfg.runtime.in_memory_gb * 1e9
    c = prep.preprocessing.channels
    h, w = prep.preprocessing.size
    in_memory = (len(prep.train) + len(prep.val)) * c * h * w * 4 <= limit
    datasets = []
    for coll, y in ((prep.train, prep.y_train), (prep.val, prep.y_val)):
        images = None
        if in_memory:
            chunks = [preprocess(x, prep.preprocessing) for _, x in coll.iter_batches(1024)]
            images = torch.from_numpy(np.concatenate(chunks))
        datasets.append(BatchDataset(coll, y, prep.preprocessing, images))
    workers = 0 if in_memory else cfg.runtime.num_workers
    extra = {"persistent_workers": True} if workers else {}
    batches = build_sampler(cfg, prep.spec, prep.train, trainer.global_rank, trainer.world_size)
    train_loader = torch.utils.data.DataLoader(
        datasets[0], batch_sampler=batches, collate_fn=_identity, num_workers=workers, **extra
    )
    val_loader = torch.utils.data.DataLoader(
        datasets[1],
        batch_sampler=sequential_batches(len(prep.val), cfg.trainer.batch_size * 2),
        collate_fn=_identity,
        num_workers=workers,
        **extra,
    )
    log.info(
        "training on %d images, validating on %d (%s)",
        len(prep.train),
        len(prep.val),
        "in memory" if in_memory else f"streamed, {workers} workers",
    )
    return train_loader, val_loader
