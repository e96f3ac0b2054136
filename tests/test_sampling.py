"""Batch samplers: coverage, m per group, determinism, epochs, replicas, bad input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from twinsight.data.sampling import MPerClassSampler, MPerSystemSampler, RandomBatchSampler
from twinsight.errors import TwinsightError


def test_random_sampler_covers_every_item_once():
    sampler = RandomBatchSampler(10, 4, seed=1, drop_last=False)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 3
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(isinstance(i, int) for b in batches for i in b)


def test_random_sampler_drop_last_and_epochs():
    sampler = RandomBatchSampler(10, 4, seed=1)
    assert len(sampler) == 2 and all(len(b) == 4 for b in sampler)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first  # same epoch, same order (resume)
    sampler.set_epoch(1)
    assert list(sampler) != first
    again = RandomBatchSampler(10, 4, seed=1)
    assert list(again) == first  # depends only on seed and epoch
    assert list(again) != first  # a second pass without set_epoch moves on


def test_m_per_class_batches():
    labels = np.repeat(["cat", "dog", "eel", "fox", "gnu"], [6, 5, 8, 4, 7])
    sampler = MPerClassSampler(labels, m=2, batch_size=6, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 30 // 6
    for batch in batches:
        assert len(batch) == 6 and len(set(batch)) == 6
        counts = Counter(labels[batch])
        assert len(counts) == 3 and set(counts.values()) == {2}
    seen = {i for b in batches for i in b}
    assert len(seen) >= 24  # about every image once per epoch


def test_m_per_system_batches_hold_same_system_pairs():
    systems = np.repeat(np.arange(20), 8)
    sampler = MPerSystemSampler(systems, m=4, batch_size=16, seed=3)
    for batch in sampler:
        counts = Counter(systems[batch])
        assert len(counts) == 4 and set(counts.values()) == {4}
    assert len(sampler) == 160 // 16


def test_group_sampler_is_deterministic_and_splits_over_replicas():
    labels = np.arange(40) % 5
    full = list(MPerClassSampler(labels, 2, 4, seed=7))
    r0 = MPerClassSampler(labels, 2, 4, seed=7, rank=0, num_replicas=2)
    r1 = MPerClassSampler(labels, 2, 4, seed=7, rank=1, num_replicas=2)
    assert len(r0) == len(r1) == 5
    assert list(r0) == full[0::2] and list(r1) == full[1::2]


def test_class_with_too_few_images_is_named():
    labels = ["a"] * 4 + ["b"] * 1 + ["c"] * 4
    with pytest.raises(TwinsightError, match="at least m=2 items per class.*'b' has 1"):
        MPerClassSampler(labels, m=2, batch_size=4)


def test_bad_sampler_settings():
    with pytest.raises(TwinsightError, match="not a multiple of m=3"):
        MPerClassSampler([0, 0, 0, 1, 1, 1], m=3, batch_size=4)
    with pytest.raises(TwinsightError, match="needs 4 different systems, but there are only 2"):
        MPerSystemSampler([0, 0, 1, 1], m=2, batch_size=8)
    with pytest.raises(TwinsightError, match="sampler: batch_size must be an integer >= 1, got 0"):
        RandomBatchSampler(10, 0)
    with pytest.raises(TwinsightError, match="larger than the 3 items"):
        RandomBatchSampler(3, 4)
    with pytest.raises(TwinsightError, match="rank must be in"):
        RandomBatchSampler(10, 2, rank=2, num_replicas=2)


def test_usable_as_torch_batch_sampler():
    torch = pytest.importorskip("torch")
    data = torch.arange(24).float()
    labels = np.arange(24) % 4
    loader = torch.utils.data.DataLoader(data, batch_sampler=MPerClassSampler(labels, 2, 8, seed=0))
    batches = list(loader)
    assert len(batches) == 3 and all(b.shape == (8,) for b in batches)
    assert all(set(Counter(labels[b.long().numpy()]).values()) == {2} for b in batches)


def test_sampling_does_not_import_torch():
    import ast

    import twinsight.data.sampling as module

    tree = ast.parse(open(module.__file__).read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n.split(".")[0] == "torch"]
