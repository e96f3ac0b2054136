"""Readers: every source kind opens as a Collection, and every bad input names the culprit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

import twinsight
from twinsight.data.collection import Collection
from twinsight.data.packed import write_packed
from twinsight.data.readers import (
    SIMULATOR_PARAMETERS,
    Source,
    list_readers,
    open_collection,
    register_reader,
    truth_name,
    unregister_reader,
)
from twinsight.errors import TwinsightError

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------ helpers
def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def gray8(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


def make_class_folder(root: Path, n_per_class: int = 3) -> dict[str, np.ndarray]:
    """Two classes of 8-bit gray PNGs; returns key -> pixel array."""
    arrays = {}
    for label in ("cat", "dog"):
        for i in range(n_per_class):
            arr = gray8()
            save_png(root / label / f"{i}.png", arr)
            arrays[f"{label}/{i}.png"] = arr
    return arrays


def make_seed_file(
    path: Path, params: dict[str, float], k: int = 3, size: int = 8, attrs: bool = True
) -> list[np.ndarray]:
    images = []
    with h5py.File(path, "w") as f:
        for j in range(1, k + 1):
            img = RNG.random((size, size)).astype(np.float32)
            ds = f.create_dataset(f"intensity_projection_{j}", data=img)
            if attrs:
                ds.attrs["inclination"] = 10.0 * j
                ds.attrs["position_angle"] = 5.0 * j
            images.append(img)
        for name, value in params.items():
            f.create_dataset(name, data=value)
    return images


def seed_params(i: int) -> dict[str, float]:
    return {name: float(i + j + 1) for j, name in enumerate(SIMULATOR_PARAMETERS)}


# ------------------------------------------------------------------------------ class folders
def test_class_folder_items_and_pixels(tmp_path):
    arrays = make_class_folder(tmp_path / "data")
    coll = open_collection(tmp_path / "data")
    assert len(coll) == 6
    assert coll.image_shape == (1, 6, 5)
    assert list(coll.items["key"]) == sorted(arrays)
    assert list(coll.items["label"]) == ["cat"] * 3 + ["dog"] * 3
    assert Path(coll.items["source"][0]) == tmp_path / "data" / "cat" / "0.png"
    images = coll.images([4, 0])
    assert images.dtype == np.float32
    np.testing.assert_allclose(images[0, 0], arrays["dog/1.png"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(images[1, 0], arrays["cat/0.png"] / 255.0, rtol=1e-6)


def test_sixteen_bit_png_is_divided_by_65535(tmp_path):
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    save_png(tmp_path / "d" / "a" / "x.png", arr)
    image = open_collection(tmp_path / "d").images([0])[0, 0]
    np.testing.assert_allclose(image, arr / 65535.0, rtol=1e-6)


def test_mixed_gray_and_rgb_become_three_channels(tmp_path):
    gray = gray8(4, 4)
    rgba = RNG.integers(0, 256, size=(4, 4, 4), dtype=np.uint8)
    save_png(tmp_path / "d" / "a" / "gray.png", gray)
    save_png(tmp_path / "d" / "b" / "rgba.png", rgba, mode="RGBA")
    coll = open_collection(tmp_path / "d")
    assert coll.image_shape == (3, 4, 4)
    images = coll.images()
    for c in range(3):  # gray repeated in all three channels
        np.testing.assert_allclose(images[0, c], gray / 255.0, rtol=1e-6)
    np.testing.assert_allclose(images[1], np.moveaxis(rgba[..., :3], -1, 0) / 255.0, rtol=1e-6)
    one = open_collection(tmp_path / "d", channels=1)
    assert one.image_shape == (1, 4, 4)
    np.testing.assert_allclose(one.images([1])[0, 0], images[1].mean(axis=0), rtol=1e-5)


def test_fits_and_tiff_in_class_folder(tmp_path):
    data = RNG.random((5, 5)).astype(np.float32) * 1000
    (tmp_path / "d" / "obs").mkdir(parents=True)
    fits.PrimaryHDU(data).writeto(tmp_path / "d" / "obs" / "a.fits")
    Image.fromarray(data, mode="F").save(tmp_path / "d" / "obs" / "b.tif")
    coll = open_collection(tmp_path / "d")
    assert coll.image_shape == (1, 5, 5)
    images = coll.images()
    np.testing.assert_allclose(images[0, 0], data)  # FITS: raw values
    np.testing.assert_allclose(images[1, 0], data)  # float TIFF: raw values


def test_mixed_sizes_error_names_two_files_and_sizes(tmp_path):
    save_png(tmp_path / "d" / "a" / "small.png", gray8(4, 4))
    save_png(tmp_path / "d" / "b" / "big.png", gray8(8, 6))
    with pytest.raises(TwinsightError) as err:
        open_collection(tmp_path / "d")
    msg = str(err.value)
    assert "small.png" in msg and "big.png" in msg
    assert "4x4" in msg and "6x8" in msg
    assert "--image-size" in msg


def test_image_size_resizes_on_load(tmp_path):
    save_png(tmp_path / "d" / "a" / "small.png", np.full((4, 4), 255, np.uint8))
    save_png(tmp_path / "d" / "b" / "big.png", np.full((8, 6), 51, np.uint8))
    coll = open_collection(tmp_path / "d", image_size=5)
    assert coll.image_shape == (1, 5, 5)
    images = coll.images()
    assert images.shape == (2, 1, 5, 5)
    np.testing.assert_allclose(images[0], 1.0, rtol=1e-5)  # constant stays constant
    np.testing.assert_allclose(images[1], 0.2, rtol=1e-5)


def test_folder_of_images_without_classes_is_unlabelled(tmp_path):
    save_png(tmp_path / "d" / "x.png", gray8())
    coll = open_collection(tmp_path / "d")
    assert len(coll) == 1 and not coll.has_labels
    assert coll.items["key"][0] == "x.png"


def test_missing_path_error(tmp_path):
    with pytest.raises(TwinsightError, match="does not exist"):
        open_collection(tmp_path / "nope")


def test_empty_folder_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwinsightError, match=r"folder '.*empty' is empty"):
        open_collection(tmp_path / "empty")


def test_class_folders_without_images_error(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(TwinsightError, match="no images"):
        open_collection(tmp_path / "d")


def test_garbage_image_fails_at_open_naming_file(tmp_path):
    make_class_folder(tmp_path / "d", 1)
    (tmp_path / "d" / "cat" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(TwinsightError) as err:
        open_collection(tmp_path / "d")
    assert "broken.png" in str(err.value)


def test_truncated_image_fails_at_load_naming_file(tmp_path):
    make_class_folder(tmp_path / "d", 2)
    target = tmp_path / "d" / "dog" / "0.png"
    big = RNG.integers(0, 256, size=(6, 5), dtype=np.uint8)
    save_png(target, big)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    coll = open_collection(tmp_path / "d")  # header-only open succeeds
    coll.images([0, 1])  # the good ones load
    with pytest.raises(TwinsightError) as err:
        coll.images([2])
    assert "dog/0.png" in str(err.value) and "truncated" in str(err.value)


def test_unknown_extension_error(tmp_path):
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(TwinsightError, match=r"\.xyz"):
        open_collection(tmp_path / "x.xyz")


# ------------------------------------------------------------------------------------- tables
def make_table_images(root: Path, n: int = 4) -> list[str]:
    names = []
    for i in range(n):
        save_png(root / "img" / f"{i}.png", gray8(3, 3))
        names.append(f"img/{i}.png")
    return names


def test_csv_table_with_parameters(tmp_path):
    names = make_table_images(tmp_path)
    frame = pd.DataFrame(
        {
            "path": names,
            "mass": [1.0, 2.0, 3.0, 4.0],
            "age": [10, 20, 30, 40],
            "label": ["a", "b", "a", "b"],
            "system": ["s1", "s1", "s2", "s2"],
            "projection": [1, 2, 1, 2],
            "split": ["train", "train", "test", "test"],
            "note": ["x", "y", "z", "w"],
        }
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    coll = open_collection(tmp_path / "t.csv")
    assert coll.param_columns == ["mass", "age"]
    np.testing.assert_array_equal(coll.params(), frame[["mass", "age"]].to_numpy(float))
    assert list(coll.items["label"]) == ["a", "b", "a", "b"]
    assert list(coll.items["system"]) == ["s1", "s1", "s2", "s2"]
    assert coll.items["projection"].tolist() == [1, 2, 1, 2]
    assert coll.splits == ["test", "train"]
    assert coll.items["key"].tolist() == names
    assert "note" in coll.items.columns and "note" not in coll.param_columns
    assert coll.images().shape == (4, 1, 3, 3)


def test_parquet_table_with_absolute_paths(tmp_path):
    names = make_table_images(tmp_path / "imgs", 2)
    frame = pd.DataFrame({"path": [str(tmp_path / "imgs" / n) for n in names], "x": [0.5, 1.5]})
    frame.to_parquet(tmp_path / "t.parquet")
    coll = open_collection(tmp_path / "t.parquet")
    assert coll.param_columns == ["x"]
    assert len(coll.images()) == 2


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_table_non_numeric_parameter_names_column_row_value(tmp_path):
    make_table_images(tmp_path, 3)
    csv = write_csv(tmp_path / "t.csv", "path,mass\nimg/0.png,1\nimg/1.png,heavy\nimg/2.png,3\n")
    with pytest.raises(TwinsightError) as err:
        open_collection(csv)
    msg = str(err.value)
    assert "'mass'" in msg and "line 3" in msg and "'heavy'" in msg


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", ""])
def test_table_nan_or_infinite_parameter(tmp_path, bad):
    make_table_images(tmp_path, 3)
    csv = write_csv(tmp_path / "t.csv", f"path,mass\nimg/0.png,1\nimg/1.png,2\nimg/2.png,{bad}\n")
    with pytest.raises(TwinsightError) as err:
        open_collection(csv)
    msg = str(err.value)
    assert "'mass'" in msg and "line 4" in msg and "not a finite number" in msg


def test_parquet_nan_reports_row_number(tmp_path):
    names = make_table_images(tmp_path, 3)
    pd.DataFrame({"path": names, "mass": [1.0, np.nan, 2.0]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(TwinsightError, match=r"'mass', row 2: value nan"):
        open_collection(tmp_path / "t.parquet")


def test_table_missing_image_names_row_and_path(tmp_path):
    make_table_images(tmp_path, 1)
    csv = write_csv(tmp_path / "t.csv", "path,mass\nimg/0.png,1\nimg/missing.png,2\n")
    with pytest.raises(TwinsightError) as err:
        open_collection(csv)
    assert "line 3" in str(err.value) and "img/missing.png" in str(err.value)


def test_table_without_path_column(tmp_path):
    csv = write_csv(tmp_path / "t.csv", "file,mass\na.png,1\n")
    with pytest.raises(TwinsightError, match=r"no 'path' column.*\['file', 'mass'\]"):
        open_collection(csv)


def test_table_duplicate_paths(tmp_path):
    make_table_images(tmp_path, 1)
    csv = write_csv(tmp_path / "t.csv", "path,mass\nimg/0.png,1\nimg/0.png,2\n")
    with pytest.raises(TwinsightError, match="line 3 repeats 'img/0.png' of line 2"):
        open_collection(csv)


def test_empty_table(tmp_path):
    csv = write_csv(tmp_path / "t.csv", "path,mass\n")
    with pytest.raises(TwinsightError, match="no rows"):
        open_collection(csv)


# -------------------------------------------------------------------------------- seed HDF5
def test_seed_hdf5_folder(tmp_path):
    folder = tmp_path / "sims"
    folder.mkdir()
    images = {i: make_seed_file(folder / f"sys{i:03d}.h5", seed_params(i)) for i in range(3)}
    coll = open_collection(folder)
    assert len(coll) == 9 and coll.image_shape == (1, 8, 8)
    assert coll.param_columns == list(SIMULATOR_PARAMETERS)
    assert coll.items["key"].tolist()[:4] == ["sys000/1", "sys000/2", "sys000/3", "sys001/1"]
    assert coll.items["system"].nunique() == 3
    assert coll.items["projection"].tolist()[:3] == [1, 2, 3]
    np.testing.assert_allclose(coll.items["inclination"][:3], [10, 20, 30])
    np.testing.assert_allclose(coll.items["position_angle"][:3], [5, 10, 15])
    assert "inclination" not in coll.param_columns
    np.testing.assert_allclose(coll.params()[4], list(seed_params(1).values()))
    batch = coll.images([5, 0, 8])
    np.testing.assert_array_equal(batch[0, 0], images[1][2])
    np.testing.assert_array_equal(batch[1, 0], images[0][0])
    np.testing.assert_array_equal(batch[2, 0], images[2][2])
    resized = open_collection(folder, image_size=4, channels=3)
    assert resized.images([0]).shape == (1, 3, 4, 4)


def test_seed_hdf5_projection_order_is_numeric(tmp_path):
    make_seed_file(tmp_path / "a.h5", seed_params(0), k=11, size=4, attrs=False)
    coll = open_collection(tmp_path / "a.h5")
    assert coll.items["projection"].tolist() == list(range(1, 12))
    assert "inclination" not in coll.items.columns


def test_seed_file_without_intensity_dataset(tmp_path):
    folder = tmp_path / "sims"
    folder.mkdir()
    make_seed_file(folder / "a.h5", seed_params(0))
    with h5py.File(folder / "b.h5", "w") as f:
        f.create_dataset("mass", data=1.0)
    with pytest.raises(TwinsightError) as err:
        open_collection(folder)
    assert "b.h5" in str(err.value) and "intensity_projection_*" in str(err.value)


def test_seed_files_with_different_sizes(tmp_path):
    make_seed_file(tmp_path / "a.h5", seed_params(0), size=8)
    make_seed_file(tmp_path / "b.h5", seed_params(1), size=6)
    with pytest.raises(TwinsightError) as err:
        open_collection(tmp_path)
    assert "a.h5" in str(err.value) and "b.h5" in str(err.value) and "6x6" in str(err.value)
    assert open_collection(tmp_path, image_size=6).images().shape == (6, 1, 6, 6)


def test_seed_files_with_different_parameters(tmp_path):
    make_seed_file(tmp_path / "a.h5", seed_params(0))
    params = seed_params(1)
    del params["age"]
    make_seed_file(tmp_path / "b.h5", params)
    with pytest.raises(TwinsightError, match=r"b\.h5.*age"):
        open_collection(tmp_path)


def test_seed_parameter_nan(tmp_path):
    params = seed_params(0)
    params["mass"] = float("nan")
    make_seed_file(tmp_path / "a.h5", params)
    with pytest.raises(TwinsightError, match=r"a\.h5.*'mass'.*not a finite"):
        open_collection(tmp_path)


def test_truncated_hdf5_file(tmp_path):
    make_seed_file(tmp_path / "a.h5", seed_params(0))
    data = (tmp_path / "a.h5").read_bytes()
    (tmp_path / "b.h5").write_bytes(data[:300])
    with pytest.raises(TwinsightError, match=r"b\.h5.*truncated"):
        open_collection(tmp_path)


# ----------------------------------------------------------------------------------- packed
def test_packed_file_roundtrip_and_resize(tmp_path):
    images = RNG.random((5, 6, 6)).astype(np.float32)
    items = pd.DataFrame({"key": [f"k{i}" for i in range(5)], "mass": np.arange(5.0)})
    write_packed(
        tmp_path / "p.h5", items, [images[:3], images[3:]], (1, 6, 6), param_columns=["mass"]
    )
    coll = open_collection(tmp_path / "p.h5")
    assert coll.param_columns == ["mass"]
    np.testing.assert_array_equal(coll.images([4, 1])[:, 0], images[[4, 1]])
    small = open_collection(tmp_path / "p.h5", image_size=3, channels=3)
    assert small.image_shape == (3, 3, 3)
    assert small.images([0, 1]).shape == (2, 3, 3, 3)
    assert small.subset([1]).images().shape == (1, 3, 3, 3)


# ------------------------------------------------------------------------------------- FITS
def test_fits_observation_with_true_parameters(tmp_path):
    data = RNG.random((1, 7, 7)).astype(np.float32)
    header = fits.Header()
    header["HIERARCH TRUE_MASS"] = 0.5
    header["HIERARCH TRUE_AGE"] = 1.0e5
    header["OBJECT"] = "test"
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "obs.fits")
    coll = open_collection(tmp_path / "obs.fits")
    assert len(coll) == 1 and coll.image_shape == (1, 7, 7)
    np.testing.assert_allclose(coll.images()[0, 0], data[0])
    assert coll.param_columns == ["mass", "age"]
    assert coll.items["mass"][0] == 0.5 and coll.items["age"][0] == 1.0e5
    assert coll.meta["header"]["OBJECT"] == "test"


def test_fits_named_hdu(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    first = fits.ImageHDU(np.zeros((4, 4), np.float32), name="FIRST")
    second = fits.ImageHDU(np.ones((3, 3), np.float32), name="SCI")
    fits.HDUList([fits.PrimaryHDU(), table, first, second]).writeto(tmp_path / "m.fits")
    assert open_collection(tmp_path / "m.fits").image_shape == (1, 4, 4)
    assert open_collection(tmp_path / "m.fits", hdu="SCI").images()[0, 0, 0, 0] == 1.0
    assert open_collection(tmp_path / "m.fits", hdu=3).image_shape == (1, 3, 3)
    with pytest.raises(TwinsightError, match="no HDU 'NOPE'.*SCI"):
        open_collection(tmp_path / "m.fits", hdu="NOPE")


def test_fits_without_image_data_lists_hdus(tmp_path):
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=[1.0])], name="CAT"
    )
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "t.fits")
    with pytest.raises(TwinsightError) as err:
        open_collection(tmp_path / "t.fits")
    msg = str(err.value)
    assert "t.fits" in msg and "no HDU with image data" in msg and "CAT" in msg
    assert "PRIMARY" in msg


def test_fits_cube_with_more_planes_is_refused(tmp_path):
    fits.PrimaryHDU(np.zeros((5, 4, 4), np.float32)).writeto(tmp_path / "c.fits")
    with pytest.raises(TwinsightError, match=r"c\.fits.*\(5, 4, 4\)"):
        open_collection(tmp_path / "c.fits")


def test_truncated_fits(tmp_path):
    fits.PrimaryHDU(np.zeros((64, 64), np.float32)).writeto(tmp_path / "o.fits")
    data = (tmp_path / "o.fits").read_bytes()
    (tmp_path / "o.fits").write_bytes(data[:4000])
    with pytest.raises(TwinsightError, match=r"o\.fits"):
        open_collection(tmp_path / "o.fits").images()


# ---------------------------------------------------------------------------------- built-ins
def test_builtin_digits():
    coll = open_collection("digits")
    assert len(coll) == 1797 and coll.image_shape == (1, 8, 8)
    images = coll.images(np.arange(100))
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() == 1.0
    assert sorted(coll.items["label"].unique()) == list(range(10))


def test_builtin_mnist5k_split():
    coll = open_collection("mnist5k")
    assert len(coll) == 5000 and coll.image_shape == (1, 28, 28)
    table = pd.crosstab(coll.items["label"], coll.items["split"])
    assert (table["train"] == 400).all() and (table["test"] == 100).all()
    zeros = coll.items.index[coll.items["label"] == 0]
    assert set(coll.items.loc[zeros[:400], "split"]) == {"train"}
    assert set(coll.items.loc[zeros[400:], "split"]) == {"test"}
    assert 0.99 < coll.images([0]).max() <= 1.0


def test_builtin_protostars():
    pytest.importorskip("twinsight.simulator", reason="the simulator has not landed yet")
    from twinsight import simulator as simulate

    if not hasattr(simulate, "simulate_collection"):
        pytest.skip("twinsight.simulator.simulate_collection has not landed yet")
    coll = open_collection("protostars")
    assert len(coll) == 800 and coll.image_shape == (1, 64, 64)
    assert set(SIMULATOR_PARAMETERS) <= set(coll.param_columns)


def test_download_builtin_fails_fast_offline(tmp_path, monkeypatch):
    """No mocking: on this offline machine the download must fail quickly with one line."""
    import socket

    try:
        socket.create_connection(("ossci-datasets.s3.amazonaws.com", 443), timeout=3).close()
        pytest.skip("this machine is online; the offline error cannot be checked")
    except OSError:
        pass
    monkeypatch.setenv("TWINSIGHT_DATA", str(tmp_path / "cache"))
    start = time.perf_counter()
    with pytest.raises(TwinsightError) as err:
        open_collection("fashion-mnist")
    assert time.perf_counter() - start < 20
    msg = str(err.value)
    assert "'fashion-mnist'" in msg and "online" in msg and "local folder" in msg
    assert "\n" not in msg


def test_large_jpeg_resized_on_decode(tmp_path):
    photo = np.zeros((400, 600, 3), np.uint8)
    photo[:, :300] = (200, 100, 50)  # left half coloured, right half black
    save_png(tmp_path / "d" / "snack" / "p.jpg", photo)
    coll = open_collection(tmp_path / "d", image_size=(8, 12))
    assert coll.image_shape == (3, 8, 12)
    image = coll.images()[0]
    np.testing.assert_allclose(
        image[:, :, :5].mean(axis=(1, 2)), [200 / 255, 100 / 255, 50 / 255], atol=0.03
    )
    np.testing.assert_allclose(image[:, :, 7:], 0.0, atol=0.03)


def test_parallel_scan_matches_serial(tmp_path, monkeypatch):
    from twinsight.data.readers import seed_hdf5

    for i in range(5):
        make_seed_file(tmp_path / f"s{i}.h5", seed_params(i), k=2, size=4)
    serial = open_collection(tmp_path)
    monkeypatch.setattr(seed_hdf5, "PARALLEL_SCAN_MIN_FILES", 2)
    monkeypatch.setattr(seed_hdf5.os, "cpu_count", lambda: 2)
    parallel = open_collection(tmp_path)
    pd.testing.assert_frame_equal(serial.items, parallel.items)
    np.testing.assert_array_equal(serial.images(), parallel.images())
    (tmp_path / "s2.h5").write_bytes(b"broken")  # an error in a worker reaches the caller
    with pytest.raises(TwinsightError, match=r"s2\.h5"):
        open_collection(tmp_path)


def test_open_collection_adapts_a_subset(tmp_path):
    images = RNG.random((4, 6, 6)).astype(np.float32)
    items = pd.DataFrame({"key": list("abcd")})
    from twinsight.data.collection import Collection

    coll = Collection.from_arrays(images, items, name="mem").subset([3, 1])
    adapted = open_collection(coll, channels=3)
    assert adapted.items["key"].tolist() == ["d", "b"]
    out = adapted.images()
    assert out.shape == (2, 3, 6, 6)
    np.testing.assert_array_equal(out[0, 2], images[3])
    with pytest.raises(TwinsightError, match="channels must be 1 or 3"):
        open_collection(coll, channels=2)


# ----------------------------------------------------------------------------- the registry
def _is_toy(source: Source) -> bool:
    return source.is_file and source.name.endswith(".toy")


def _open_toy(source: Source, *, scale: float = 1.0) -> Collection:
    """A toy format: one line per image, 'key v00 v01 v10 v11' (a 2x2 image)."""
    keys, images = [], []
    for line in Path(source).read_text().splitlines():
        key, *values = line.split()
        keys.append(key)
        images.append(np.asarray(values, dtype=np.float32).reshape(2, 2) * scale)
    items = pd.DataFrame({"key": keys, "source": str(source.path)})
    return Collection.from_arrays(np.stack(images), items, name=str(source.path))


@pytest.fixture
def toy_reader():
    """Registers the toy reader by registration alone; the registry is restored after."""
    before = list_readers()
    register_reader("toy", sniff=_is_toy)(_open_toy)
    yield "toy"
    unregister_reader("toy")
    assert list_readers() == before


def write_toy(path: Path) -> Path:
    path.write_text("a 0 1 2 3\nb 4 5 6 7\n")
    return path


def test_user_reader_registered_from_outside_opens_its_format(tmp_path, toy_reader):
    assert list_readers()[-1] == "toy"  # default priority: after every built-in reader
    coll = open_collection(write_toy(tmp_path / "x.toy"))
    assert isinstance(coll, Collection) and len(coll) == 2
    assert coll.items["key"].tolist() == ["a", "b"]
    np.testing.assert_array_equal(coll.images([1])[0, 0], [[4, 5], [6, 7]])
    big = open_collection(tmp_path / "x.toy", image_size=4, channels=3, scale=2.0)
    assert big.image_shape == (3, 4, 4)  # resized / converted after the reader
    np.testing.assert_allclose(big.images([0]).mean(), 3.0, rtol=1e-5)


def test_forced_reader_skips_sniffing(tmp_path, toy_reader):
    path = write_toy(tmp_path / "x.txt")
    with pytest.raises(TwinsightError, match=r"extension '\.txt'.*also registered.*toy"):
        open_collection(path)
    assert len(open_collection(path, reader="toy")) == 2
    with pytest.raises(TwinsightError, match="unknown reader 'nope'.*toy"):
        open_collection(path, reader="nope")
    with pytest.raises(TwinsightError, match="reader 'toy' takes no option 'colour'"):
        open_collection(path, reader="toy", colour="red")


def test_registering_a_taken_name_raises(toy_reader):
    with pytest.raises(TwinsightError, match="reader 'toy' is already registered"):
        register_reader("toy", sniff=_is_toy)(_open_toy)
    with pytest.raises(TwinsightError, match="no reader 'nope'"):
        unregister_reader("nope")


def test_builtin_readers_in_priority_order():
    names = list_readers()
    assert names[:2] == ["builtin", "table"]
    assert names.index("packed") < names.index("seed-hdf5") < names.index("images")


def test_a_broken_sniff_names_its_reader(tmp_path):
    def broken(source):
        raise RuntimeError("boom")

    register_reader("broken", sniff=broken, priority=1000)(_open_toy)
    try:
        with pytest.raises(TwinsightError, match="reader 'broken' failed to check.*boom"):
            open_collection(write_toy(tmp_path / "x.toy"))
    finally:
        unregister_reader("broken")


def test_importing_readers_does_not_import_the_simulator():
    code = (
        "import sys, twinsight.data.readers, twinsight.data.schema; "
        "assert 'twinsight.simulator' not in sys.modules, sorted(sys.modules); "
        "assert not any(m == 'torch' or m.startswith('twinsight.models') for m in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(twinsight.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------ FITS truth keys
@pytest.mark.parametrize(
    ("keyword", "column"),
    [
        ("TRUE_RIN", "rin"),  # a standard (upper-case) keyword: lower-cased
        ("HIERARCH TRUE_diskR", "diskR"),  # a HIERARCH card keeps its case
        ("HIERARCH TRUE_ENVELOPE_MASS", "Envelope_mass"),  # the simulator's spelling
        ("HIERARCH TRUE_Disk_Size", "disk_size"),
    ],
)
def test_fits_true_cards_become_parameter_columns(tmp_path, keyword, column):
    header = fits.Header()
    header[keyword] = 2.5
    header["HIERARCH TRUE_MASS"] = 0.5
    header["TRUE_TAG"] = "not a number"  # text: not a parameter
    fits.PrimaryHDU(np.zeros((4, 4), np.float32), header=header).writeto(tmp_path / "o.fits")
    coll = open_collection(tmp_path / "o.fits")
    assert column in coll.param_columns and "tag" not in coll.param_columns
    assert coll.items[column][0] == 2.5 and coll.items["mass"][0] == 0.5
    known = [c for c in coll.param_columns if c in SIMULATOR_PARAMETERS]
    assert coll.param_columns[: len(known)] == known  # the simulator's first, in its order


def test_truth_name_rule():
    assert truth_name("TRUE_AGE") == "age"
    assert truth_name("true_Rin") == "Rin"
    assert truth_name("TRUE_") is None and truth_name("MASS") is None


def test_observation_opens_with_the_simulator_truth(tmp_path):
    from twinsight.simulator import observe

    truth = observe(tmp_path / "obs.fits", {"disk_size": 120.0}, seed=5, size=16)
    coll = open_collection(tmp_path / "obs.fits")
    assert coll.param_columns == list(SIMULATOR_PARAMETERS)
    for name in SIMULATOR_PARAMETERS:
        assert coll.items[name][0] == truth[name]
    assert coll.items["disk_size"][0] == 120.0
