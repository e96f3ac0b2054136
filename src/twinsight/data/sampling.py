"""Batch samplers: which items go together into a training batch.

Training learns from every pair of a batch, so what a batch holds decides which
pairs are learned: with class labels, m images of each of a few classes make
sure every batch has positive pairs; with simulations, m projections of each of
a few systems make same-system pairs (target 1) exist in every batch.

The samplers are plain Python iterables of index lists with ``__len__`` and
``set_epoch(epoch)`` (no torch import), usable as ``batch_sampler=`` of a torch
DataLoader. The order depends only on ``seed`` and the epoch, so a resumed run
sees the same batches. For multi-process training give each process its
``rank`` and ``num_replicas``: process r takes batches r, r + n, r + 2n, ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from twinsight.errors import TwinsightError
from twinsight.validation import check_positive_int


def _check_positive(name: str, value: Any) -> int:
    return check_positive_int(value, f"sampler: {name}")


class _EpochSampler:
    """Shared epoch, seed and replica handling."""

    def __init__(self, seed: int, rank: int, num_replicas: int) -> None:
        self.seed = int(seed)
        self.num_replicas = _check_positive("num_replicas", num_replicas)
        if not 0 <= int(rank) < self.num_replicas:
            raise TwinsightError(f"sampler: rank must be in [0, {self.num_replicas}), got {rank!r}")
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the batches of ``epoch`` next (called by Lightning before each epoch)."""
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _all_batches(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def _total_batches(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._total_batches() // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches(self._rng())
        # an iteration without set_epoch in between moves on to the next epoch's order
        self.epoch += 1
        mine = batches[self.rank :: self.num_replicas][: len(self)]
        yield from mine


class RandomBatchSampler(_EpochSampler):
    """All ``n`` items in a new random order each epoch, cut into batches.

    ``min_batches`` makes an epoch of small data at least that many batches long (items
    then recur: further passes over the data, each in a new order).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = True,
        *,
        rank: int = 0,
        num_replicas: int = 1,
        min_batches: int = 0,
    ) -> None:
        super().__init__(seed, rank, num_replicas)
        self.min_batches = int(min_batches)
        self.n = _check_positive("n (number of items)", n)
        self.batch_size = _check_positive("batch_size", batch_size)
        self.drop_last = bool(drop_last)
        if self.drop_last and self.n < self.batch_size:
            raise TwinsightError(
                f"sampler: batch_size {self.batch_size} is larger than the {self.n} items and "
                f"drop_last is set, so there would be no batch; lower the batch size"
            )

    def _total_batches(self) -> int:
        if self.drop_last:
            natural = self.n // self.batch_size
        else:
            natural = -(-self.n // self.batch_size)
        return max(natural, self.min_batches)

    def _all_batches(self, rng: np.random.Generator) -> list[list[int]]:
        # more batches than one pass holds (min_batches): further passes, each reshuffled
        passes = 1
        if self.min_batches * self.batch_size > self.n:
            passes = -(-self.min_batches * self.batch_size // self.n)
        order = np.concatenate([rng.permutation(self.n) for _ in range(passes)])
        stops = range(0, self._total_batches() * self.batch_size, self.batch_size)
        return [order[s : s + self.batch_size].tolist() for s in stops]


class _GroupSampler(_EpochSampler):
    """Batches of ``batch_size // m`` groups with ``m`` items each (classes or systems).

    A group whose items are used up this epoch is reshuffled and drawn again, so
    ``min_batches`` can make an epoch of small data longer than one pass.
    """

    kind = "group"

    def __init__(
        self,
        groups: Sequence[Any] | np.ndarray,
        m: int,
        batch_size: int,
        seed: int = 0,
        *,
        rank: int = 0,
        num_replicas: int = 1,
        min_batches: int = 0,
    ) -> None:
        super().__init__(seed, rank, num_replicas)
        self.min_batches = int(min_batches)
        self.m = _check_positive("m", m)
        self.batch_size = _check_positive("batch_size", batch_size)
        if self.batch_size % self.m:
            raise TwinsightError(
                f"sampler: batch_size {self.batch_size} is not a multiple of m={self.m} "
                f"({self.kind}s per batch x {self.m} items each); choose e.g. batch size "
                f"{max(self.m, self.batch_size // self.m * self.m)}"
            )
        self.groups_per_batch = self.batch_size // self.m
        values = np.asarray(groups, dtype=object)
        if values.ndim != 1 or len(values) == 0:
            raise TwinsightError(f"sampler: expected a non-empty list of {self.kind} values")
        names, inverse = np.unique(values.astype(str), return_inverse=True)
        self.names = names
        self.members = [np.flatnonzero(inverse == g) for g in range(len(names))]
        self.n = len(values)
        self._check_groups()

    def _check_groups(self) -> None:
        small = [(str(n), len(idx)) for n, idx in zip(self.names, self.members, strict=True)]
        small = [(n, c) for n, c in small if c < self.m]
        if small:
            shown = ", ".join(f"'{n}' has {c}" for n, c in small[:5])
            more = f" (and {len(small) - 5} more)" if len(small) > 5 else ""
            raise TwinsightError(
                f"sampler: m-per-{self.kind} needs at least m={self.m} items per {self.kind}, "
                f"but {self.kind} {shown}{more}; lower m or remove the small {self.kind}s"
            )
        if len(self.names) < self.groups_per_batch:
            raise TwinsightError(
                f"sampler: a batch of {self.batch_size} with m={self.m} needs "
                f"{self.groups_per_batch} different {self.kind}s, but there are only "
                f"{len(self.names)}; lower the batch size or raise m"
            )

    def _total_batches(self) -> int:
        return max(1, self.n // self.batch_size, self.min_batches)

    def _chunks(self, group: int, rng: np.random.Generator) -> list[np.ndarray]:
        """A group's items, shuffled, in chunks of m (the last one topped up from the rest)."""
        idx = rng.permutation(self.members[group])
        chunks = [idx[s : s + self.m] for s in range(0, len(idx) - self.m + 1, self.m)]
        rest = idx[len(chunks) * self.m :]
        if len(rest):
            fill = rng.choice(idx[: len(idx) - len(rest)], self.m - len(rest), replace=False)
            chunks.append(np.concatenate([rest, fill]))
        return chunks

    def _all_batches(self, rng: np.random.Generator) -> list[list[int]]:
        pending = [self._chunks(g, rng) for g in range(len(self.names))]
        batches = []
        for _ in range(self._total_batches()):
            counts = np.array([len(c) for c in pending], dtype=np.float64)
            chosen = rng.choice(
                len(pending), self.groups_per_batch, replace=False, p=counts / counts.sum()
            )
            batch: list[int] = []
            for g in chosen:
                batch.extend(pending[g].pop().tolist())
                if not pending[g]:
                    pending[g] = self._chunks(g, rng)
            batches.append(batch)
        return batches


class MPerClassSampler(_GroupSampler):
    """Batches of ``batch_size // m`` classes with ``m`` images each.

    Classes are drawn in proportion to the images they have left this epoch, so one
    epoch sees about every image once; a class with fewer than m images is refused.
    """

    kind = "class"

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray,
        m: int,
        batch_size: int,
        seed: int = 0,
        *,
        rank: int = 0,
        num_replicas: int = 1,
        min_batches: int = 0,
    ) -> None:
        super().__init__(
            labels, m, batch_size, seed, rank=rank, num_replicas=num_replicas,
            min_batches=min_batches,
        )  # fmt: skip


class MPerSystemSampler(_GroupSampler):
    """Batches of ``batch_size // m`` simulated systems with ``m`` projections each."""

    kind = "system"

    def __init__(
        self,
        systems: Sequence[Any] | np.ndarray,
        m: int,
        batch_size: int,
        seed: int = 0,
        *,
        rank: int = 0,
        num_replicas: int = 1,
        min_batches: int = 0,
    ) -> None:
        super().__init__(
            systems, m, batch_size, seed, rank=rank, num_replicas=num_replicas,
            min_batches=min_batches,
        )  # fmt: skip
