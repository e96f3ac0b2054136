"""Batches for training: the dataset (in memory or streamed), the sampler and the loaders."""

from __future__ import annotations

import logging
import os
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
from twinsight.distributed import batch_block
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


def val_batch_size(config: TrainConfig) -> int:
    """Images per validation batch: twice the training batch (no gradients to keep)."""
    return config.trainer.batch_size * 2


def shards_validation(n: int, batch_size: int, world: int) -> bool:
    """Whether each of ``world`` ranks validates a share (then gathered): when every rank
    gets at least one batch; else every rank validates all, as one process does."""
    return world > 1 and -(-n // batch_size) >= world


def validation_batches(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's validation batches: its run of the one-process batches, or all of them.

    The shares, gathered in rank order (:func:`twinsight.distributed.gather_rows`), are
    the whole validation set in its order, so every rank measures all of it, never only
    its share.
    """
    if not shards_validation(n, batch_size, world):
        return sequential_batches(n, batch_size)
    block = batch_block(n, batch_size, rank, world)
    return [block[s : s + batch_size].tolist() for s in range(0, len(block), batch_size)]


#: Fewest optimizer steps per epoch for class targets (``--min-steps-per-epoch`` default).
MIN_STEPS_LABELS = 50


def min_steps(config: TrainConfig, spec: TargetSpec, train: Collection) -> int:
    """``--min-steps-per-epoch``, or by default 50 for labels and for parameter tables with
    one image per system, none for simulations with several views per system.

    A few hundred images at batch 128 make an epoch of 1-2 steps, too few to learn in
    a run. Simulated systems with several views keep one pass per epoch (their results,
    the demo's included, as measured).
    """
    value = config.trainer.min_steps_per_epoch
    if value is not None:
        return int(value)
    if spec.kind == "labels":
        return MIN_STEPS_LABELS
    views = train.items["system"].astype(str).value_counts() if train.has_systems else None
    return MIN_STEPS_LABELS if views is None or views.max() < 2 else 0


def batch_size_for(config: TrainConfig, n: int) -> int:
    """``--batch-size``, capped at half the training images (at least 2): a batch never
    holds the whole set, so consecutive batches differ."""
    batch = min(config.trainer.batch_size, max(2, n // 2))
    if batch < config.trainer.batch_size:
        log.info(
            "batch size %d -> %d: the training set has only %d images",
            config.trainer.batch_size,
            batch,
            n,
        )
    return batch


def build_sampler(
    config: TrainConfig,
    spec: TargetSpec,
    train: Collection,
    rank: int = 0,
    world: int = 1,
) -> Any:
    """The training batch sampler (m-per-class, m-per-system or random) for one rank.

    ``--sampler auto`` adapts to the data and says so in the log: m-per-class for
    labels, m-per-system with systems, with the largest m the groups allow; it falls
    back to random batches when groups have a single image. An explicit ``--sampler``
    or ``--m`` is taken as given (a misfit is an error that says what to change).
    """
    kind = config.sampler.kind
    batch = batch_size_for(config, len(train))
    seed, steps = config.trainer.seed, min_steps(config, spec, train)
    replicas = {"rank": rank, "num_replicas": world, "min_batches": steps}
    m = config.sampler.m
    if kind == "auto":
        kind, m, batch = _auto_sampler(spec, train, batch, m)
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
    m = m or auto_m(groups, batch, 2 if kind == "m-per-class" else 4)
    return cls(groups, m, batch, seed, **replicas)


def _auto_sampler(
    spec: TargetSpec, train: Collection, batch: int, m: int | None
) -> tuple[str, int | None, int]:
    """The sampler ``auto`` picks, its m (None: :func:`auto_m`) and batch size, logged."""
    if spec.kind == "labels":
        kind, column = "m-per-class", "label"
    elif train.has_systems:
        kind, column = "m-per-system", "system"
    else:
        return "random", None, batch
    counts = train.items[column].astype(str).value_counts()
    what = "class" if column == "label" else "system"
    if counts.max() < 2:
        log.info(
            "sampler: every %s has a single image, so %s cannot put pairs of one %s in a "
            "batch; using random batches",
            what,
            kind,
            what,
        )
        return "random", None, batch
    if m is None:
        fits = _fitting_m(counts.to_numpy(), batch, 2 if what == "class" else 4)
        if fits is None:
            log.info(
                "sampler: %ss have %d-%d images, too few for %s at batch %d; using random batches",
                what,
                counts.min(),
                counts.max(),
                kind,
                batch,
            )
            return "random", None, batch
        m, batch = fits
    return kind, m, batch


def _fitting_m(counts: np.ndarray, batch: int, smallest: int) -> tuple[int, int] | None:
    """The m (and batch size, a multiple of it) that every group can fill; logged when smaller.

    First :func:`auto_m`'s choice when every group can fill it; else m = the smallest
    group's size (at most batch / groups, at least 2) and the batch rounded down to
    groups x m. None when a group has a single image or fewer than 2 groups fit.
    """
    m = auto_m(np.repeat(np.arange(len(counts)), counts), batch, smallest)
    if batch % m == 0 and batch // m <= len(counts) and m <= counts.min():
        return m, batch
    low = int(counts.min())
    if low < 2:
        return None
    m = min(low, max(2, batch // len(counts)))
    groups = min(len(counts), batch // m)
    if groups < 2:
        return None
    fitted = groups * m
    log.info(
        "sampler: the smallest group has %d images; using m=%d, %d groups per batch (batch %d)",
        low,
        m,
        groups,
        fitted,
    )
    return m, fitted


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


#: Batches each data-loader worker reads ahead when streaming.
PREFETCH_BATCHES = 4


def streaming_workers(num_workers: int | None) -> int:
    """Data-loader workers for streamed data: ``num_workers``, or min(4, CPUs - 1), at least 1.

    One core is left to the training step itself; more than 4 workers rarely read faster
    from one file.
    """
    if num_workers is not None:
        return int(num_workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cpus or 1) - 1))


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
    workers = 0 if in_memory else streaming_workers(cfg.runtime.num_workers)
    extra = {"persistent_workers": True, "prefetch_factor": PREFETCH_BATCHES} if workers else {}
    rank, world = trainer.global_rank, trainer.world_size
    batches = build_sampler(cfg, prep.spec, prep.train, rank, world)
    if len(batches) == 0:
        raise TwinsightError(
            f"{world} processes share {len(prep.train)} training images, too few for one "
            "batch each per epoch; use fewer --devices, a smaller --batch-size or a larger "
            "--min-steps-per-epoch"
        )
    train_loader = torch.utils.data.DataLoader(
        datasets[0], batch_sampler=batches, collate_fn=_identity, num_workers=workers, **extra
    )
    val_loader = torch.utils.data.DataLoader(
        datasets[1],
        batch_sampler=validation_batches(len(prep.val), val_batch_size(cfg), rank, world),
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
