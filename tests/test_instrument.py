"""Instruments: degrading a library, calibrating for an instrument, typicality, evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import twinsight
from twinsight.errors import TwinsightError
from twinsight.instrument import Instrument, InstrumentRange, degrade, parse_instrument
from twinsight.simulator.observe import observe_image

torch.set_num_threads(1)
SIZE = 32


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A tiny simulated library, a model trained through instruments, and its saved index."""
    root = tmp_path_factory.mktemp("instrument")
    data = root / "sims.h5"
    twinsight.simulate(data, n_systems=80, n_projections=8, size=SIZE, seed=0, test_fraction=0.15)
    run = root / "run"
    twinsight.train(data, out=run, epochs=2, batch_size=64, progress=False)
    twinsight.build_index(run, data).save(root / "idx")
    return {"data": data, "run": run, "idx": root / "idx", "root": root}


def _observations(n: int, beam: float, snr: float, first: int = 500) -> np.ndarray:
    return np.stack(
        [
            observe_image(seed=s, size=SIZE, snr=snr, beam_fwhm=beam)[0][None]
            for s in range(first, first + n)
        ]
    )


# -- the instrument itself -----------------------------------------------------------------------
def test_instrument_checks_its_values_and_names_a_stable_key():
    inst = Instrument(2.04, snr=31.0)
    assert inst.beam_minor == inst.beam_major and inst.key == "beam2.0x2.0pa0-snr31"
    assert Instrument(beam_major=1.0, snr=math.inf).snr is None
    assert Instrument(1.0, 3.0).beam_major == 3.0  # the major axis is the larger one
    with pytest.raises(TwinsightError, match="beam FWHM must be finite and >= 0"):
        Instrument(-1.0)
    with pytest.raises(TwinsightError, match="SNR must be positive"):
        Instrument(1.0, snr=0.0)


def test_parse_instrument_reads_name_value_pairs_and_names_what_is_wrong():
    inst = parse_instrument("beam=2, snr=30")
    assert (inst.beam_major, inst.snr) == (2.0, 30.0)
    assert parse_instrument("bmaj=3,bmin=2,bpa=45,snr=inf").snr is None
    with pytest.raises(TwinsightError, match=r"'fwhm=2' is not NAME=VALUE"):
        parse_instrument("fwhm=2")
    with pytest.raises(TwinsightError, match=r"snr='thirty' is not a number"):
        parse_instrument("beam=1,snr=thirty")


def test_degrade_spreads_a_point_source_by_the_beam_and_adds_noise_of_peak_over_snr():
    x = np.zeros((2, 1, 41, 41), dtype=np.float32)
    x[:, 0, 20, 20] = 1.0
    blurred = degrade(x, Instrument(4.0))[0, 0]
    row = blurred[20] / blurred[20].max()
    fwhm = float(np.sum(row >= 0.5))  # pixels at or above half the peak
    assert 3.0 <= fwhm <= 5.0
    assert blurred.sum() == pytest.approx(1.0, rel=1e-3)  # the beam keeps the flux
    noisy = degrade(x, Instrument(0.0, snr=10.0), seed=3)
    assert np.std(noisy[:, 0, :10, :10]) == pytest.approx(0.1, rel=0.25)
    np.testing.assert_array_equal(noisy, degrade(x, Instrument(0.0, snr=10.0), seed=3))
    assert not np.array_equal(noisy, degrade(x, Instrument(0.0, snr=10.0), seed=4))


def test_an_elliptical_beam_is_longer_along_its_position_angle():
    x = np.zeros((1, 1, 41, 41), dtype=np.float32)
    x[0, 0, 20, 20] = 1.0
    north = degrade(x, Instrument(6.0, 2.0, 0.0))[0, 0]  # major axis along y (north)
    assert north[20 + 4, 20] > north[20, 20 + 4] * 3
    east = degrade(x, Instrument(6.0, 2.0, 90.0))[0, 0]
    assert east[20, 20 + 4] > east[20 + 4, 20] * 3


def test_instrument_range_says_what_lies_outside_it():
    trained = InstrumentRange(beam_max=4.0, snr_min=5.0)
    assert trained.covers(Instrument(3.0, snr=10.0)) == []
    outside = trained.covers(Instrument(6.0, snr=2.0))
    assert any("beam 6" in o for o in outside) and any("SNR 2" in o for o in outside)


def test_the_library_noise_is_counted_once():
    from twinsight.instrument import at_library_floor, missing_noise

    assert missing_noise(30.0, 100.0) == pytest.approx(math.sqrt(1 / 30**2 - 1 / 100**2))
    assert missing_noise(10.0, None) == pytest.approx(0.1)
    assert missing_noise(200.0, 100.0) == 0.0 and missing_noise(None, 100.0) == 0.0
    assert at_library_floor(Instrument(2.0, snr=150.0), 100.0).snr is None
    assert at_library_floor(Instrument(2.0, snr=50.0), 100.0).snr == 50.0
    x = np.ones((200, 1, 8, 8), dtype=np.float32)
    assert np.std(degrade(x, Instrument(0.0, snr=100.0), library_snr=100.0)) == 0.0


def test_the_beam_smooths_the_library_noise_and_degrade_adds_back_what_it_took():
    """A query through a 3 px beam has white noise of peak / SNR (observe_image), and one
    cleaner than the library is given the library's own level: calibration images through
    the same instrument must carry as much, though the beam smoothed their own noise."""
    rng = np.random.default_rng(0)
    flat = np.ones((4, 1, 64, 64))
    noisy = flat + rng.normal(0.0, 0.01, flat.shape)  # a library image: SNR 100
    for snr, expected in ((30.0, 1 / 30), (None, 1 / 100), (300.0, 1 / 100)):
        seen = degrade(noisy, Instrument(3.0, snr=snr), seed=1, library_snr=100.0)
        clean = degrade(flat, Instrument(3.0), library_snr=None)
        inner = (seen - clean)[:, :, 16:-16, 16:-16]
        assert np.std(inner) == pytest.approx(expected, rel=0.08), snr


def test_typicality_is_the_share_of_simulations_seen_alike_at_or_below():
    from twinsight.inference import typicality

    matching = {"typicality": {"best_similarity": [0.5, 0.6, 0.7, 0.8, 0.9]}}
    assert typicality(matching, 0.1)["p_value"] == pytest.approx(1 / 6)
    assert typicality(matching, 0.75)["p_value"] == pytest.approx(4 / 6)
    assert typicality(matching, 0.95)["p_value"] == 1.0
    assert typicality({}, 0.5) is None


# -- training keeps what instrument calibration needs --------------------------------------------
def test_training_keeps_the_validation_systems_and_the_instrument_range(library):
    meta = json.loads((library["run"] / "model" / "twinsight.json").read_text())
    assert meta["instrument_range"]["beam_max"] == 4.0 and meta["instrument_range"]["snr_min"] == 5
    val = twinsight.open_collection(str(library["run"] / "model" / "validation.h5"))
    assert len(val) >= 100 and val.has_systems and "disk_size" in val.param_columns
    config = (library["run"] / "config.yaml").read_text()
    assert "augment: auto" in config  # auto is instrument for parameters


# -- matching through an instrument --------------------------------------------------------------
def test_match_calibrates_for_the_instrument_and_caches_the_calibration(library, monkeypatch):
    index = twinsight.load_index(library["idx"])
    images = _observations(6, beam=2.0, snr=30.0)
    estimates = twinsight.match(index, images, instrument="beam=2,snr=30")
    first = estimates[0]
    assert first.instrument["key"] == "beam2.0x2.0pa0-snr30"
    assert first.calibrated and 0.0 < first.typicality["p_value"] <= 1.0
    out = first.to_dict(with_values=False)
    assert out["calibrated_for"]["key"] == "beam2.0x2.0pa0-snr30"
    cached = list((library["idx"] / "calibrations").glob("*/beam2.0x2.0pa0-snr30.json"))
    assert len(cached) == 1

    def no_degrading(*args, **kwargs):
        raise AssertionError("the cached calibration should have been used")

    monkeypatch.setattr("twinsight.inference.instrumented.degrade", no_degrading)
    again = twinsight.match(index, images, instrument=Instrument(2.0, snr=30.4))  # same key
    assert [e.parameters["disk_size"].interval_68 for e in again] == [
        e.parameters["disk_size"].interval_68 for e in estimates
    ]


def test_each_instrument_gets_its_own_calibration(library):
    index = twinsight.load_index(library["idx"])
    images = _observations(3, beam=0.0, snr=10.0)
    noisy = twinsight.match(index, images, instrument="beam=0,snr=10")[0]
    clean = twinsight.match(index, images, instrument="beam=0,snr=inf")[0]
    assert noisy.instrument["key"] != clean.instrument["key"]
    assert noisy.instrument["snr"] == 10 and clean.instrument["snr"] is None


def test_an_instrument_outside_the_trained_range_gets_a_warning(library, caplog):
    index = twinsight.load_index(library["idx"])
    est = twinsight.match(index, _observations(1, beam=6.0, snr=3.0)[0], instrument="beam=6,snr=3")
    assert any("outside the trained range" in w for w in est.warnings)
    assert "beam 6 px > trained 4 px" in " ".join(est.warnings)


def test_images_unlike_any_simulation_are_warned_about_and_observations_rarely(library):
    from sklearn.datasets import load_digits

    index = twinsight.load_index(library["idx"])
    digits = load_digits().images[:8].astype(np.float32)[:, None]
    noise = np.random.default_rng(0).normal(size=(4, 1, SIZE, SIZE)).astype(np.float32)
    for odd in (digits, noise):
        flagged = twinsight.match(index, odd, instrument="beam=1,snr=30")
        assert all(e.typicality["atypical"] for e in flagged)
        assert all("looks like none of the simulations" in " ".join(e.warnings) for e in flagged)
    held_out = twinsight.match(
        index, _observations(40, beam=1.0, snr=30.0), instrument="beam=1,snr=30"
    )
    assert np.mean([e.typicality["atypical"] for e in held_out]) <= 0.1


def test_a_model_without_validation_systems_says_it_is_not_calibrated_for_the_instrument(
    library, tmp_path
):
    bundle = twinsight.load_model(library["run"])
    bundle.folder = None  # as if built in memory
    est = twinsight.match(
        library["idx"], _observations(1, 2.0, 30.0)[0], model=bundle, instrument="beam=2,snr=30"
    )
    assert est.instrument is None and any("not calibrated for" in w for w in est.warnings)


# -- evaluation through instruments --------------------------------------------------------------
def test_evaluate_measures_recovery_through_each_instrument(library, run_cli):
    result = run_cli(
        "evaluate", library["run"], library["data"], "--instrument", "beam=2,snr=30",
        "--instrument", "beam=0,snr=inf", "--baseline", "none", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    by_instrument = json.loads(result.stdout)["instruments"]
    assert set(by_instrument) == {"beam2.0x2.0pa0-snr30", "beam0.0x0.0pa0-snrinf"}
    cell = by_instrument["beam2.0x2.0pa0-snr30"]
    assert 0 <= cell["parameters"]["disk_size"]["coverage_68"] <= 1
    assert 0 <= cell["typicality_warning_rate"] <= 1


def test_evaluate_refuses_a_malformed_instrument(library, run_cli):
    result = run_cli("evaluate", library["run"], library["data"], "--instrument", "beam=wide")
    assert result.exit_code == 2
    assert "--instrument 'beam=wide': beam='wide' is not a number" in result.stderr


# -- a FITS file as an archive gives it ----------------------------------------------------------
def _archive_file(path, distance=140.0):
    """128 x 128 px, celestial WCS (CDELT in degrees), BMAJ/BMIN/BPA in degrees, Jy/beam, the
    source off-centre at ``distance`` pc, noise sigma 0.02 of the peak, no truth in the header."""
    from astropy.io import fits
    from scipy.ndimage import convolve

    from twinsight.instrument import beam_kernel
    from twinsight.simulator.priors import draw_parameters
    from twinsight.simulator.render import render_system

    scale = 1000.0 / 96  # AU per pixel
    source = render_system(draw_parameters(np.random.default_rng(3)), [40.0], [10.0], 96)[0]
    data = np.zeros((128, 128))
    data[60 - 48 : 60 + 48, 70 - 48 : 70 + 48] = source  # the star at (x, y) = (70, 60)
    bmaj, bmin, bpa = 0.40, 0.30, 20.0  # arcsec, arcsec, degrees
    arcsec = scale / distance
    data = convolve(data, beam_kernel(bmaj / arcsec, bmin / arcsec, bpa))
    data = data / data.max() + np.random.default_rng(4).normal(0.0, 0.02, data.shape)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"
    header["CRPIX1"], header["CRPIX2"], header["CRVAL1"], header["CRVAL2"] = 64, 64, 246.7, -24.5
    header["CDELT1"], header["CDELT2"] = -arcsec / 3600.0, arcsec / 3600.0
    header["CUNIT1"] = header["CUNIT2"] = "deg"
    header["BMAJ"], header["BMIN"], header["BPA"] = bmaj / 3600.0, bmin / 3600.0, bpa
    header["BUNIT"] = "Jy/beam"
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(path)
    return {"scale": scale, "beam_au": (bmaj * distance, bmin * distance, bpa), "noise": 0.02}


def test_match_takes_a_fits_file_as_an_archive_gives_it(library, run_cli, tmp_path):
    written = _archive_file(tmp_path / "obs.fits")
    result = run_cli("match", library["idx"], tmp_path / "obs.fits", "--distance", 140, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    original = out["observation"]["original"]
    assert original["pixel_scale_au"] == pytest.approx(written["scale"], rel=1e-6)
    assert original["beam_au"] == pytest.approx(list(written["beam_au"]), rel=1e-6)
    assert original["noise"] == pytest.approx(written["noise"], rel=0.15)
    assert math.dist(original["centre_pixel"], (70, 60)) < 1.5
    provenance = out["observation"]["instrument"]["provenance"]
    assert provenance["pixel_scale"] == "read" and provenance["beam"] == "read"
    assert provenance["noise"] == "estimated"
    library_beam = out["observation"]["instrument"]["beam_major"]
    assert out["calibrated_for"]["beam_major"] == pytest.approx(library_beam, abs=0.06)
    assert 0 < out["typicality"]["p_value"] <= 1
    assert all(p["truth"] is None for p in out["parameters"].values())


def test_a_fits_file_with_a_distance_but_no_wcs_is_refused_clearly(library, run_cli, tmp_path):
    from astropy.io import fits

    fits.PrimaryHDU(np.ones((32, 32), dtype=np.float32)).writeto(tmp_path / "bare.fits")
    result = run_cli("match", library["idx"], tmp_path / "bare.fits", "--distance", 140)
    assert result.exit_code == 2
    assert "bare.fits" in result.stderr and "--pixel-scale" in result.stderr
    assert not (library["idx"] / "calibrations" / "bare").exists()


def test_reembed_matches_against_the_library_seen_through_the_instrument(library, monkeypatch):
    index = twinsight.load_index(library["idx"])
    images = _observations(4, beam=2.0, snr=20.0)
    est = twinsight.match(index, images, instrument="beam=2,snr=20", reembed=True)
    folder = library["idx"] / "instrumented"
    cached = list(folder.glob("*/beam2.0x2.0pa0-snr20/index.json"))
    assert len(cached) == 1 and est[0].instrument["key"] == "beam2.0x2.0pa0-snr20"
    plain = twinsight.match(index, images, instrument="beam=2,snr=20")
    assert [e.keys for e in est] != [e.keys for e in plain]  # other library vectors

    def no_embedding(*args, **kwargs):
        raise AssertionError("the cached re-embedded library should have been used")

    monkeypatch.setattr("twinsight.inference.instrumented.degrade", no_embedding)
    again = twinsight.match(index, images, instrument="beam=2,snr=20", reembed=True)
    assert [e.keys for e in again] == [e.keys for e in est]


def test_search_reports_what_the_intake_derived_from_an_observation(library, run_cli, tmp_path):
    _archive_file(tmp_path / "obs.fits")
    result = run_cli("search", library["idx"], tmp_path / "obs.fits", "--distance", 140, "--json")
    assert result.exit_code == 0, result.stderr
    first = json.loads(result.stdout)["results"][0]
    assert first["observation"]["instrument"]["provenance"]["pixel_scale"] == "read"
    assert len(first["matches"]) == 10
