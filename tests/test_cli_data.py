"""`twinsight info` and `twinsight pack` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from twinsight.data.readers import SIMULATOR_PARAMETERS, open_collection

RNG = np.random.default_rng(3)


def make_folder(root: Path, n: int = 3, size: int = 6) -> None:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = RNG.integers(0, 256, size=(size, size), dtype=np.uint8)
            Image.fromarray(arr).save(root / label / f"{i}.png")


def make_seed_folder(root: Path, n_systems: int = 3, k: int = 2) -> None:
    root.mkdir()
    for s in range(n_systems):
        with h5py.File(root / f"s{s}.h5", "w") as f:
            for j in range(1, k + 1):
                f.create_dataset(f"intensity_projection_{j}", data=RNG.random((5, 5)))
            for p, name in enumerate(SIMULATOR_PARAMETERS):
                f.create_dataset(name, data=float(s + p))


def no_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# --------------------------------------------------------------------------------------- info
@pytest.mark.parametrize(
    ("name", "n", "shape", "splits"),
    [
        ("digits", 1797, [1, 8, 8], {}),
        ("mnist5k", 5000, [1, 28, 28], {"test": 1000, "train": 4000}),
    ],
)
def test_info_builtin_json_offline(run_cli, name, n, shape, splits):
    result = run_cli("info", name, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds only JSON
    assert data["source"] == name
    assert data["n_items"] == n and data["image_shape"] == shape and data["dtype"] == "float32"
    assert sorted(data["labels"]) == [str(i) for i in range(10)]
    assert sum(data["labels"].values()) == n
    assert data["parameters"] == {} and data["n_systems"] is None
    assert data["splits"] == splits


def test_info_seed_folder_json(run_cli, tmp_path):
    make_seed_folder(tmp_path / "sims")
    result = run_cli("info", tmp_path / "sims", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["n_items"] == 6 and data["image_shape"] == [1, 5, 5]
    assert data["labels"] is None and data["n_systems"] == 3
    assert list(data["parameters"]) == list(SIMULATOR_PARAMETERS)
    assert data["parameters"]["mass"] == {"min": 3.0, "median": 4.0, "max": 5.0}


def test_info_table_output(run_cli, tmp_path):
    make_folder(tmp_path / "d")
    result = run_cli("info", tmp_path / "d")
    assert result.exit_code == 0, result.stderr
    assert "items" in result.stdout and "1 x 6 x 6" in result.stdout
    assert "labels" in result.stdout


def test_info_image_size_option(run_cli, tmp_path):
    make_folder(tmp_path / "d")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "d" / "a" / "odd.png")
    bad = run_cli("info", tmp_path / "d", "--json")
    assert bad.exit_code == 2 and bad.stdout == ""
    assert "odd.png" in bad.stderr and "--image-size" in bad.stderr
    assert "Traceback" not in bad.stderr
    good = run_cli("info", tmp_path / "d", "--json", "--image-size", "4")
    assert json.loads(good.stdout)["image_shape"] == [1, 4, 4]


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_info_bad_source_exit_2(run_cli, tmp_path, what):
    path = tmp_path / what
    if what == "empty":
        path.mkdir()
    result = run_cli("info", path)
    assert result.exit_code == 2
    assert str(path) in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one message (rich may wrap it)


def test_info_offline_download_exit_2(run_cli, tmp_path, monkeypatch):
    import socket

    try:
        socket.create_connection(("www.cs.toronto.edu", 443), timeout=3).close()
        pytest.skip("this machine is online")
    except OSError:
        pass
    monkeypatch.setenv("TWINSIGHT_DATA", str(tmp_path))
    result = run_cli("info", "cifar10", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert "online" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------- pack
def test_pack_folder_roundtrip(run_cli, tmp_path):
    make_folder(tmp_path / "d")
    out = tmp_path / "out" / "packed.h5"
    result = run_cli("pack", tmp_path / "d", out, "--batch-size", "4")
    assert result.exit_code == 0, result.stderr
    source, packed = open_collection(tmp_path / "d"), open_collection(out)
    assert packed.items["key"].tolist() == source.items["key"].tolist()
    assert packed.items["label"].tolist() == source.items["label"].tolist()
    np.testing.assert_array_equal(packed.images(), source.images())
    assert no_leftovers(out.parent) == []


def test_pack_seed_folder_keeps_parameters_and_resizes(run_cli, tmp_path):
    make_seed_folder(tmp_path / "sims")
    out = tmp_path / "p.h5"
    assert run_cli("pack", tmp_path / "sims", out, "--image-size", "4").exit_code == 0
    packed = open_collection(out)
    assert packed.param_columns == list(SIMULATOR_PARAMETERS)
    assert packed.image_shape == (1, 4, 4)
    np.testing.assert_array_equal(packed.params(), open_collection(tmp_path / "sims").params())
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["n_items"] == 6 and info["n_systems"] == 3


def test_pack_refuses_existing_output(run_cli, tmp_path):
    make_folder(tmp_path / "d")
    out = tmp_path / "p.h5"
    out.write_text("keep me")
    result = run_cli("pack", tmp_path / "d", out)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert "--overwrite" in result.stderr
    assert out.read_text() == "keep me"
    assert run_cli("pack", tmp_path / "d", out, "--overwrite").exit_code == 0
    assert len(open_collection(out)) == 6


def test_pack_truncated_image_midway_leaves_nothing(run_cli, tmp_path):
    make_folder(tmp_path / "d", n=20)
    target = tmp_path / "d" / "b" / "5.png"  # row 25 of 40: fails in the 4th batch of 8
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.h5"
    result = run_cli("pack", tmp_path / "d", out, "--batch-size", "8")
    assert result.exit_code == 2
    assert "b/5.png" in result.stderr and "truncated" in result.stderr
    assert not out.exists()
    assert no_leftovers(tmp_path) == []


def test_pack_failure_keeps_the_old_output(run_cli, tmp_path):
    make_folder(tmp_path / "d")
    out = tmp_path / "p.h5"
    assert run_cli("pack", tmp_path / "d", out).exit_code == 0
    before = out.read_bytes()
    target = tmp_path / "d" / "b" / "1.png"
    target.write_bytes(target.read_bytes()[:60])
    result = run_cli("pack", tmp_path / "d", out, "--overwrite")
    assert result.exit_code == 2
    assert out.read_bytes() == before and no_leftovers(tmp_path) == []


def test_info_fits_hdu_option(run_cli, tmp_path):
    from astropy.io import fits

    header = fits.Header()
    header["HIERARCH TRUE_Envelope_mass"] = 0.25
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(np.ones((1, 6, 7), np.float32), header, name="SCI")]
    fits.HDUList(hdus).writeto(tmp_path / "o.fits")
    data = json.loads(run_cli("info", tmp_path / "o.fits", "--json").stdout)
    assert data["n_items"] == 1 and data["image_shape"] == [1, 6, 7]
    assert data["parameters"]["Envelope_mass"]["median"] == 0.25
    assert json.loads(run_cli("info", tmp_path / "o.fits", "--json", "--hdu", "1").stdout)
    bad = run_cli("info", tmp_path / "o.fits", "--hdu", "7")
    assert bad.exit_code == 2 and "no HDU '7'" in bad.stderr and "SCI" in bad.stderr
