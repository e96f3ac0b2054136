"""The shared core: Collection, packed HDF5, preprocessing, safe writes, CLI frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twinsight.data.collection import Collection
from twinsight.data.packed import is_packed, read_packed, write_packed
from twinsight.data.transforms import Preprocessing, preprocess
from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_dir, atomic_file


def _collection(n: int = 10) -> Collection:
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, 8, 8), dtype=np.float32)
    items = pd.DataFrame(
        {
            "key": [f"k{i}" for i in range(n)],
            "system": [f"s{i // 2}" for i in range(n)],
            "split": ["train"] * (n - 2) + ["test"] * 2,
            "mass": np.linspace(0.1, 2.0, n),
        }
    )
    return Collection.from_arrays(images, items, name="toy", param_columns=["mass"])


def test_subset_and_split_keep_rows_aligned_with_images():
    col = _collection()
    all_images = col.images()
    sub = col.subset([7, 2, 2])
    assert list(sub.items["key"]) == ["k7", "k2", "k2"]
    np.testing.assert_array_equal(sub.images(), all_images[[7, 2, 2]])
    test = col.split("test")
    assert list(test.items["key"]) == ["k8", "k9"]
    np.testing.assert_array_equal(test.images([1]), all_images[[9]])
    np.testing.assert_allclose(test.params()[:, 0], col.params()[8:, 0])


def test_split_errors_name_available_splits():
    col = _collection()
    with pytest.raises(TwinsightError, match=r"no split 'val'.*\['test', 'train'\]"):
        col.split("val")
    with pytest.raises(TwinsightError, match="no parameter column"):
        col.params(["age"])


def test_iter_batches_covers_everything_in_order():
    col = _collection(10)
    seen = [pos for pos, imgs in col.iter_batches(batch_size=4) for _ in [imgs]]
    assert [len(p) for p in seen] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(10))


def test_from_arrays_rejects_wrong_length():
    items = pd.DataFrame({"key": ["a", "b"]})
    with pytest.raises(TwinsightError, match="N = 2 rows"):
        Collection.from_arrays(np.zeros((3, 4, 4)), items, name="bad")


def test_packed_round_trip_and_random_access(tmp_path):
    col = _collection(10)
    path = write_packed(
        tmp_path / "p.h5",
        col.items,
        (imgs for _, imgs in col.iter_batches(3)),
        col.image_shape,
        param_columns=col.param_columns,
        meta={"units": {"mass": "Msun"}},
    )
    assert is_packed(path)
    back = read_packed(path)
    assert back.param_columns == ["mass"] and back.meta["units"] == {"mass": "Msun"}
    pd.testing.assert_frame_equal(back.items, col.items, check_dtype=False)
    np.testing.assert_array_equal(back.images([9, 0, 4, 4]), col.images([9, 0, 4, 4]))
    assert not list(tmp_path.glob("*.part"))


def test_packed_scattered_rows_read_by_chunk_slices_equal_the_images(tmp_path):
    from twinsight.data.packed import CHUNK_IMAGES, chunk_runs

    col = _collection(100)
    path = write_packed(tmp_path / "p.h5", col.items, [col.images()], col.image_shape)
    packed, images = read_packed(path), col.images()
    rng = np.random.default_rng(1)
    for rows in ([99, 0, 50, 50, 17], rng.integers(0, 100, 40), [3, 97], [15, 16, 47, 48]):
        np.testing.assert_array_equal(packed.images(rows), images[rows])
    assert CHUNK_IMAGES == 16
    assert chunk_runs(np.array([0, 5, 16, 40, 41, 99]), 16, 100) == [(0, 48), (96, 100)]


def test_packed_streams_through_forked_workers_as_read_in_process(tmp_path):
    """Batches read by data-loader workers (the file already open here before the fork,
    as after validation) equal the same rows read in this process."""
    from twinsight.training.data import PREFETCH_BATCHES, BatchDataset, _identity

    col = _collection(10)
    path = write_packed(
        tmp_path / "p.h5", col.items, [col.images()], col.image_shape, param_columns=["mass"]
    )
    packed = read_packed(path)
    packed.images([0])  # this process holds an open handle when the workers fork
    prep = Preprocessing(normalize="none", size=(8, 8), channels=1)
    dataset = BatchDataset(packed, np.arange(10, dtype=np.float32), prep)
    batches = [[9, 0, 4, 4], [1, 2, 3], [8, 7]]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=_identity, num_workers=2,
        prefetch_factor=PREFETCH_BATCHES, persistent_workers=True,
    )  # fmt: skip
    for _ in range(2):  # a second epoch on the same persistent workers
        for rows, (x, y) in zip(batches, loader, strict=True):
            np.testing.assert_array_equal(x.numpy(), preprocess(col.images(rows), prep))
            assert y.tolist() == rows


def test_streaming_workers_default_leaves_a_core_to_training():
    from twinsight.training.data import streaming_workers

    assert streaming_workers(0) == 0 and streaming_workers(3) == 3
    assert 1 <= streaming_workers(None) <= 4


def test_packed_refuses_existing_output_and_leaves_nothing_on_failure(tmp_path):
    col = _collection(4)
    out = tmp_path / "p.h5"
    out.write_text("keep me")
    with pytest.raises(TwinsightError, match="already exists"):
        write_packed(out, col.items, [col.images()], col.image_shape)
    assert out.read_text() == "keep me"

    def failing_batches():
        yield col.images([0, 1])
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_packed(tmp_path / "q.h5", col.items, failing_batches(), col.image_shape)
    assert not (tmp_path / "q.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]


def test_packed_count_mismatch_is_an_error(tmp_path):
    col = _collection(4)
    with pytest.raises(TwinsightError, match="got 2 images for 4 rows"):
        write_packed(tmp_path / "q.h5", col.items, [col.images([0, 1])], col.image_shape)
    assert not (tmp_path / "q.h5").exists()


def test_read_packed_rejects_foreign_and_truncated_files(tmp_path):
    import h5py

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(TwinsightError, match="not a twinsight packed file"):
        read_packed(foreign)
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(TwinsightError, match="truncated"):
        read_packed(truncated)


def test_preprocess_minmax_resize_and_channels():
    rng = np.random.default_rng(1)
    images = rng.random((2, 3, 10, 10), dtype=np.float32) * 50 + 7
    spec = Preprocessing(size=(8, 8), channels=1, normalize="minmax")
    out = preprocess(images, spec)
    assert out.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(out.reshape(2, -1).min(1), 0, atol=1e-6)
    np.testing.assert_allclose(out.reshape(2, -1).max(1), 1, atol=1e-6)
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    std = Preprocessing(
        size=(10, 10), channels=3, normalize="standardize", mean=(7,) * 3, std=(2,) * 3
    )
    np.testing.assert_allclose(preprocess(images, std), (images - 7) / 2, rtol=1e-6)


def test_preprocess_rejects_impossible_channel_change():
    spec = Preprocessing(size=(4, 4), channels=3)
    with pytest.raises(TwinsightError, match="2-channel"):
        preprocess(np.zeros((1, 2, 4, 4)), spec)


def test_atomic_file_and_dir_keep_old_output_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_file(target) as tmp:
        tmp.write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_file(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "v1"
    folder = tmp_path / "run"
    with atomic_dir(folder) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in folder.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "run"]


def test_cli_version_and_help_list_every_command(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith("twinsight ")
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in ("simulate", "info", "pack", "train", "index", "search", "match", "demo"):
        assert command in result.stdout, command


def test_cli_unknown_command_exits_2(run_cli):
    result = run_cli("no-such-command")
    assert result.exit_code == 2


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_public_api_names_resolve():
    import twinsight

    for name in twinsight.__all__:
        assert getattr(twinsight, name) is not None, name
    assert callable(twinsight.train) and callable(twinsight.open_collection)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        twinsight.nope  # noqa: B018


def test_facade_names_are_not_shadowed_by_submodules():
    """Importing a submodule sets an attribute on the package: no façade name may be one."""
    import importlib
    import pkgutil
    import types

    import twinsight

    for info in pkgutil.walk_packages(twinsight.__path__, "twinsight."):
        if not info.name.startswith("twinsight.cli"):
            importlib.import_module(info.name)
    for name in twinsight.__all__:
        value = getattr(twinsight, name)
        assert not isinstance(value, types.ModuleType), f"twinsight.{name} is a module"
    assert twinsight.simulate.__module__ == "twinsight.api"
    assert twinsight.evaluate.__module__ == "twinsight.api"


def test_registries_share_one_set_of_checks():
    """Readers, encoders and losses register through one Registry: the same guards, words."""
    import twinsight
    from twinsight.losses import unregister_loss

    @twinsight.register_loss("toy-zero")
    def toy_zero() -> torch.nn.Module:
        return torch.nn.Identity()

    try:
        assert "toy-zero" in twinsight.list_losses()
        with pytest.raises(TwinsightError, match="loss 'toy-zero' is already registered"):
            twinsight.register_loss("toy-zero")(toy_zero)
        assert isinstance(twinsight.create_loss("toy-zero"), torch.nn.Identity)
    finally:
        unregister_loss("toy-zero")
    with pytest.raises(TwinsightError, match="unknown loss 'toy-zero'; valid names: contrastive"):
        twinsight.create_loss("toy-zero")
    with pytest.raises(TwinsightError, match="unknown encoder 'nope'"):
        twinsight.create_encoder("nope")
