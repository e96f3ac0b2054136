"""The protostellar simulator: priors, rendering, writers, observation mode and CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from astropy.io import fits

from twinsight.errors import TwinsightError
from twinsight.simulator import (
    PARAMETERS,
    UNITS,
    observe,
    render_system,
    simulate_collection,
    simulate_systems,
    write_packed_simulation,
)

BASE = {
    "Envelope_mass": 0.1,
    "accretion_rate": 1e-6,
    "temperature": 300.0,
    "mass": 0.5,
    "disk_size": 100.0,
    "luminosity": 2.0,
    "age": 1e5,
}


def _minmax(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat - lo) / (hi - lo)).reshape(images.shape)


def _read_seed_layout(folder):
    files = sorted(folder.glob("*.h5"))
    images, params = [], []
    for path in files:
        with h5py.File(path, "r") as f:
            k = len([n for n in f if n.startswith("intensity_projection_")])
            for j in range(1, k + 1):
                images.append(f[f"intensity_projection_{j}"][()])
            params.append([f[name][()] for name in PARAMETERS])
    return files, np.stack(images), np.array(params)


# -- priors ------------------------------------------------------------------------------------


def test_priors_are_physical_and_correlated():
    systems = simulate_systems(400, seed=3)
    assert list(systems.columns[:8]) == ["system", *PARAMETERS]
    assert systems["system"].iloc[0] == "sys00000" and systems["system"].is_unique
    assert (systems[list(PARAMETERS)] > 0).all().all()
    assert systems["age"].between(1e4, 1e6).all()
    assert systems["mass"].between(0.1, 3.0).all()
    log = np.log10(systems[list(PARAMETERS)])
    assert log["age"].corr(log["Envelope_mass"]) < -0.5  # envelope drains with age
    assert log["age"].corr(log["disk_size"]) > 0.5  # disk grows
    assert log["age"].corr(log["accretion_rate"]) < -0.4  # accretion fades
    assert log["age"].corr(log["temperature"]) > 0.4  # Class 0 -> II
    # each parameter keeps independent scatter: none is a function of the others
    for name in PARAMETERS:
        others = log.drop(columns=[name]).to_numpy()
        design = np.column_stack([others, np.ones(len(log))])
        coef, *_ = np.linalg.lstsq(design, log[name].to_numpy(), rcond=None)
        residual = log[name].to_numpy() - design @ coef
        assert residual.std() > 0.04, name
    assert 0.15 < systems["has_companion"].mean() < 0.45


def test_systems_do_not_depend_on_how_many_are_drawn():
    a = simulate_systems(5, seed=7)
    b = simulate_systems(2, seed=7, start=3)
    assert a.iloc[3:].reset_index(drop=True).equals(b)
    assert not simulate_systems(5, seed=8).equals(a)


# -- rendering ---------------------------------------------------------------------------------


def test_render_shape_dtype_and_determinism():
    images = render_system(BASE, [0, 45, 90], [0, 30, 60], 32, np.random.default_rng(1))
    assert images.shape == (3, 32, 32) and images.dtype == np.float32
    again = render_system(BASE, [0, 45, 90], [0, 30, 60], 32, np.random.default_rng(1))
    np.testing.assert_array_equal(images, again)
    assert np.isfinite(images).all()
    # the three views differ
    assert np.abs(_minmax(images)[0] - _minmax(images)[2]).mean() > 0.01


@pytest.mark.parametrize("name", PARAMETERS)
def test_changing_one_parameter_changes_the_image(name):
    views = ([10, 50, 85], [0, 120, 240])
    before = render_system(BASE, *views, 64, np.random.default_rng(5))
    for factor in (0.3, 3.0):
        params = dict(BASE, **{name: BASE[name] * factor})
        after = render_system(params, *views, 64, np.random.default_rng(5))
        # measured after per-image min-max normalization, as the network sees it;
        # the noise (same draws in both) has sigma 0.01 of the image range
        diff = np.abs(_minmax(after) - _minmax(before))
        assert diff.max() > 0.05, f"{name} x{factor}: largest change {diff.max():.3f}"
        changed = int((diff > 0.02).sum())
        assert changed >= 20, f"{name} x{factor}: only {changed} pixels change by > 2 %"


def test_disk_size_and_envelope_mass_are_strong():
    views = ([30, 80], [0, 90])
    before = _minmax(render_system(BASE, *views, 64, None))
    for name in ("disk_size", "Envelope_mass"):
        after = _minmax(render_system(dict(BASE, **{name: BASE[name] * 3}), *views, 64, None))
        diff = np.abs(after - before)
        assert diff.mean() > 0.01, name
        assert (diff > 0.02).sum() > 300, name  # a large area changes, not a few pixels


def test_edge_on_disk_has_a_dark_lane():
    params = dict(BASE, Envelope_mass=0.01, disk_size=250.0)
    edge, face = render_system(params, [90, 0], [0, 0], 64, None)
    c = 32
    # edge-on with PA 0 the disk lies along x: its centre is darker than above the lane
    assert edge[c, c] < 0.5 * edge[c + 2 : c + 5, c - 4 : c + 5].max()
    assert face[c, c] == face.max()


def test_render_rejects_bad_input():
    with pytest.raises(TwinsightError, match="missing parameter"):
        render_system({"mass": 1.0}, [0], [0])
    with pytest.raises(TwinsightError, match="'age' must be a positive finite"):
        render_system(dict(BASE, age=float("nan")), [0], [0])
    with pytest.raises(TwinsightError, match="image size must be an integer >= 16, got 8"):
        render_system(BASE, [0], [0], size=8)
    with pytest.raises(TwinsightError, match="same length"):
        render_system(BASE, [0, 1], [0])


# -- collection and writers ---------------------------------------------------------------------


def test_simulate_collection_table_and_meta():
    coll = simulate_collection(3, n_projections=2, size=32, seed=1)
    assert len(coll) == 6 and coll.image_shape == (1, 32, 32)
    assert coll.param_columns == list(PARAMETERS)
    assert coll.meta["units"] == UNITS
    items = coll.items
    assert list(items["key"][:3]) == ["sys00000/1", "sys00000/2", "sys00001/1"]
    assert list(items["projection"]) == [1, 2] * 3
    assert items["inclination"].between(0, 90).all()
    assert items["position_angle"].between(0, 360).all()
    # both projections of a system share its parameters
    assert (items.groupby("system")[list(PARAMETERS)].nunique() == 1).all().all()


def test_cli_folder_and_packed_are_bit_identical(tmp_path, run_cli):
    args = ["--systems", "3", "--projections", "2", "--size", "32", "--seed", "1"]
    r1 = run_cli("simulate", tmp_path / "sims", *args)
    assert r1.exit_code == 0, r1.stderr
    r2 = run_cli("simulate", tmp_path / "sims.h5", *args, "--json")
    assert r2.exit_code == 0, r2.stderr
    summary = json.loads(r2.stdout)
    assert summary["images"] == 6 and summary["layout"] == "packed"

    files, images, params = _read_seed_layout(tmp_path / "sims")
    assert [f.name for f in files] == ["sys00000.h5", "sys00001.h5", "sys00002.h5"]
    assert images.shape == (6, 32, 32) and images.dtype == np.float32
    with h5py.File(tmp_path / "sims.h5", "r") as f:
        packed = f["images"][()]
        packed_params = np.stack([f["items"][n][()] for n in PARAMETERS], axis=1)
        packed_incl = f["items"]["inclination"][()]
    assert packed.tobytes() == images.tobytes()
    np.testing.assert_array_equal(packed_params[::2], params)
    # and the in-memory collection gives the same bits too
    coll = simulate_collection(3, n_projections=2, size=32, seed=1)
    assert coll.images()[:, 0].tobytes() == images.tobytes()
    # per-projection angles and units are stored
    with h5py.File(files[0], "r") as f:
        assert f["intensity_projection_2"].attrs["inclination"] == packed_incl[1]
        assert f["disk_size"].attrs["units"] == "AU"
        assert json.loads(f.attrs["units"]) == UNITS


def test_packed_output_reads_back_as_collection(tmp_path):
    from twinsight.data.packed import read_packed

    path = write_packed_simulation(tmp_path / "s.h5", 2, 3, 16, seed=4)
    coll = read_packed(path)
    assert len(coll) == 6 and coll.param_columns == list(PARAMETERS)
    assert coll.meta["units"]["luminosity"] == "Lsun"
    expected = simulate_collection(2, 3, 16, seed=4)
    np.testing.assert_array_equal(coll.images(), expected.images())


def test_open_collection_reads_both_layouts_when_available(tmp_path, run_cli):
    readers = pytest.importorskip("twinsight.data.readers")
    args = ["--systems", "2", "--projections", "2", "--size", "16", "--seed", "2"]
    assert run_cli("simulate", tmp_path / "d", *args).exit_code == 0
    assert run_cli("simulate", tmp_path / "p.h5", *args).exit_code == 0
    folder = readers.open_collection(str(tmp_path / "d"))
    packed = readers.open_collection(str(tmp_path / "p.h5"))
    assert len(folder) == len(packed) == 4
    assert set(PARAMETERS) <= set(folder.param_columns)
    np.testing.assert_array_equal(
        np.sort(folder.images().ravel()), np.sort(packed.images().ravel())
    )


# -- observation -------------------------------------------------------------------------------


def test_observation_fits_carries_the_truth(tmp_path, run_cli):
    out = tmp_path / "obs.fits"
    r = run_cli(
        "observe",
        out,
        "--seed",
        "3",
        "--snr",
        "20",
        "--beam",
        "2.5",
        "--param",
        "disk_size=150",
        "--inclination",
        "60",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    truth = json.loads(r.stdout)
    with fits.open(out) as hdul:
        header, data = hdul[0].header, hdul[0].data
    assert data.shape == (64, 64) and data.dtype.kind == "f"
    for name in PARAMETERS:
        assert header[f"TRUE_{name}"] == pytest.approx(truth[name])
    assert header["TRUE_disk_size"] == 150.0
    assert header["INCL"] == 60.0 and header["BEAM"] == 2.5 and header["SNR"] == 20.0
    assert header["SEED"] == 3
    # the noise matches the requested SNR: sigma = peak / SNR of the noiseless image
    assert header["NOISE"] == pytest.approx(data.max() / 20.0, rel=0.25)
    # same seed, same bits; another seed, another system
    again = observe(
        tmp_path / "again.fits", {"disk_size": 150}, seed=3, snr=20, beam_fwhm=2.5, inclination=60
    )
    assert again["Envelope_mass"] == truth["Envelope_mass"]
    np.testing.assert_array_equal(fits.getdata(tmp_path / "again.fits"), data)
    other = observe(tmp_path / "other.fits", seed=4)
    assert other["Envelope_mass"] != truth["Envelope_mass"]


def test_simulate_observe_flag(tmp_path, run_cli):
    r = run_cli("simulate", tmp_path / "o.fits", "--observe", "--seed", "1", "--snr", "50")
    assert r.exit_code == 0, r.stderr
    assert fits.getheader(tmp_path / "o.fits")["SNR"] == 50.0
    r = run_cli("simulate", tmp_path / "p.fits")
    assert r.exit_code == 2 and "--observe" in r.stderr
    assert not (tmp_path / "p.fits").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--snr", "0"], "SNR"),
        (["--beam", "-1"], "beam"),
        (["--size", "8"], "image size (--size) must be an integer >= 16, got 8"),
        (["--inclination", "200"], "inclination"),
        (["--param", "colour=3"], "unknown parameter 'colour'"),
        (["--param", "disk_size"], "NAME=VALUE"),
        (["--param", "disk_size=big"], "not a number"),
        (["--param", "mass=-1"], "'mass' must be positive"),
    ],
)
def test_observe_bad_input(tmp_path, run_cli, args, message):
    out = tmp_path / "obs.fits"
    r = run_cli("observe", out, *args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_observe_refuses_non_fits_and_existing(tmp_path, run_cli):
    r = run_cli("observe", tmp_path / "obs.png")
    assert r.exit_code == 2 and "must end in .fits" in r.stderr
    out = tmp_path / "obs.fits"
    assert run_cli("observe", out).exit_code == 0
    before = out.read_bytes()
    r = run_cli("observe", out, "--seed", "9")
    assert r.exit_code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert out.read_bytes() == before
    assert run_cli("observe", out, "--seed", "9", "--overwrite").exit_code == 0
    assert out.read_bytes() != before


# -- CLI bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--systems", "0"], "number of systems (--systems) must be an integer >= 1, got 0"),
        (["--systems", "-3"], "number of systems"),
        (["--projections", "0"], "number of projections (--projections) must be an integer >= 1"),
        (["--size", "0"], "image size (--size) must be an integer >= 16"),
        (["--size", "15"], "image size (--size) must be an integer >= 16, got 15"),
    ],
)
@pytest.mark.parametrize("target", ["sims", "sims.h5"])
def test_simulate_bad_counts(tmp_path, run_cli, args, message, target):
    r = run_cli("simulate", tmp_path / target, *args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["sims", "sims.h5"])
def test_simulate_refuses_existing_output(tmp_path, run_cli, target):
    args = ["--systems", "1", "--projections", "1", "--size", "16"]
    out = tmp_path / target
    assert run_cli("simulate", out, *args).exit_code == 0
    r = run_cli("simulate", out, *args, "--seed", "5")
    assert r.exit_code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    r = run_cli("simulate", out, *args, "--seed", "5", "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [target]  # no leftovers


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    from twinsight.simulator import writers

    calls = {"n": 0}
    real = writers.render_system

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(writers, "render_system", failing)
    for target in ("sims", "sims.h5"):
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            writers.write_simulation(tmp_path / target, 3, 1, 16)
    assert list(tmp_path.iterdir()) == []


def test_seed_layout_refuses_file_like_folder_name(tmp_path):
    from twinsight.simulator import write_seed_layout

    with pytest.raises(TwinsightError, match="looks like a file name"):
        write_seed_layout(tmp_path / "x.fits", 1, 1, 16)


def test_split_by_system_keeps_systems_whole_and_is_seeded():
    from twinsight.simulator import split_by_system

    systems = [f"s{i // 4}" for i in range(400)]  # 100 systems x 4 views
    sides = split_by_system(systems, seed=0, val=0.1, test=0.2)
    by_system: dict[str, set[str]] = {}
    for system, side in zip(systems, sides, strict=True):
        by_system.setdefault(system, set()).add(side)
    assert all(len(v) == 1 for v in by_system.values())
    counts = {
        side: sum(v == {side} for v in by_system.values()) for side in ("train", "val", "test")
    }
    assert counts == {"train": 70, "val": 10, "test": 20}
    assert split_by_system(systems, seed=0, val=0.1, test=0.2) == sides
    assert split_by_system(systems, seed=1, val=0.1, test=0.2) != sides
    with pytest.raises(TwinsightError, match="cannot split 2 systems"):
        split_by_system(["a", "a", "b"], seed=0, val=0.1, test=0.1)
    with pytest.raises(TwinsightError, match="test fraction must be in"):
        split_by_system(["a", "b"], seed=0, test=1.5)


def test_simulate_cli_split_column_packed_only(tmp_path, run_cli):
    from twinsight.data.packed import read_packed

    out = tmp_path / "s.h5"
    result = run_cli(
        "simulate", out, "--systems", 10, "--projections", 2, "--size", 16,
        "--val-fraction", 0.2, "--test-fraction", 0.2, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    items = read_packed(out).items
    per_system = items.groupby("system")["split"].nunique()
    assert (per_system == 1).all()
    assert items.groupby("split")["system"].nunique().to_dict() == {
        "test": 2,
        "train": 6,
        "val": 2,
    }
    folder = tmp_path / "folder"
    result = run_cli("simulate", folder, "--systems", 3, "--size", 16, "--test-fraction", 0.3)
    assert result.exit_code == 2 and "packed output" in result.stderr
    assert not folder.exists()
