"""The one target kernel: numpy and torch agree, pairs equal the matrix, one log10 rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twinsight.data.targets import (
    TargetSpec,
    is_log_scaled,
    pair_similarity,
    pair_targets,
    parameter_similarity,
    similarity_matrix,
    target_matrix,
)
from twinsight.errors import TwinsightError


@pytest.mark.parametrize(("kernel", "width"), [("cosine", 1.0), ("rbf", 0.7)])
def test_numpy_and_torch_give_the_same_targets(kernel, width):
    z = np.random.default_rng(0).normal(size=(9, 4))
    z[2] = 0.0  # a zero vector: cosine 0, similarity 0.5
    spec = TargetSpec("params", ("a", "b", "c", "d"), (), kernel, width)
    from_numpy = target_matrix(z.astype(np.float32), spec)
    from_torch = target_matrix(torch.from_numpy(z.astype(np.float32)), spec)
    assert isinstance(from_torch, torch.Tensor) and isinstance(from_numpy, np.ndarray)
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, atol=1e-6)
    np.testing.assert_allclose(parameter_similarity(z, z, kernel, width), from_numpy, atol=1e-6)
    # a pair's target is the matrix entry of that pair
    i, j = np.array([0, 1, 2, 5]), np.array([3, 1, 4, 8])
    pairs = pair_similarity(z[i], z[j], kernel, width)
    np.testing.assert_allclose(pairs, similarity_matrix(z, z, kernel, width)[i, j], atol=1e-12)
    torch_pairs = pair_targets(torch.from_numpy(z[i]), torch.from_numpy(z[j]), spec)
    np.testing.assert_allclose(torch_pairs.numpy(), pairs, atol=1e-6)
    if kernel == "cosine":
        assert from_numpy[2, 0] == pytest.approx(0.5)


def test_class_targets_and_spec_from_a_bundle_dict():
    labels = np.array([0, 1, 0])
    expected = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert target_matrix(labels, TargetSpec("labels")).tolist() == expected
    assert target_matrix(torch.from_numpy(labels), TargetSpec("labels")).tolist() == expected
    spec = TargetSpec.from_dict(
        {"kind": "params", "columns": ["a"], "kernel": "rbf", "width": 2, "normalizer": {}}
    )
    assert spec == TargetSpec("params", ("a",), (), "rbf", 2.0)
    with pytest.raises(TwinsightError, match="targets kind must be one of"):
        TargetSpec.from_dict({"kind": "pairs"})


def test_log_scaled_rule():
    rng = np.random.default_rng(0)
    assert is_log_scaled(10 ** rng.uniform(-6, -3, 500))  # spans decades, log-uniform
    assert not is_log_scaled(rng.uniform(1, 100, 500))  # max/min 100, but uniform: linear
    assert not is_log_scaled(rng.uniform(1, 5, 500))  # less than a factor 10
    assert not is_log_scaled(np.array([-1.0, 10.0, 1000.0, 1e5]))  # not all positive
    assert not is_log_scaled(np.array([1.0, 1e4]))  # too few values


def test_training_auto_log10_and_inference_scales_use_the_same_rule():
    from twinsight.data.collection import Collection
    from twinsight.inference import choose_scale
    from twinsight.training import auto_log10

    rng = np.random.default_rng(1)
    items = pd.DataFrame(
        {
            "key": [f"k{i}" for i in range(300)],
            "rate": 10 ** rng.uniform(-8, -4, 300),
            "size": rng.uniform(1, 100, 300),
        }
    )
    coll = Collection.from_arrays(
        np.zeros((300, 4, 4), np.float32), items, name="scales", param_columns=["rate", "size"]
    )
    assert auto_log10(coll, ["rate", "size"]) == ["rate"]
    assert [choose_scale(items[c].to_numpy()) for c in ("rate", "size")] == ["log", "linear"]
