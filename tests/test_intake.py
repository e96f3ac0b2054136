"""The observation intake: a FITS image (WCS, beam, noise, distance) onto the library's grid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import convolve, gaussian_filter

from twinsight.errors import TwinsightError
from twinsight.instrument import FWHM_TO_SIGMA, beam_kernel
from twinsight.intake import (
    Observation,
    beam_axes,
    beam_covariance,
    observation_from_array,
    read_observation,
)
from twinsight.simulator import observe
from twinsight.simulator.priors import draw_parameters
from twinsight.simulator.render import render_system

LIBRARY = {"library_pixel_scale": 15.625, "library_size": 64}
DISTANCE = 140.0


def sky_header(
    au_per_pixel: float,
    *,
    distance: float = DISTANCE,
    au_per_pixel_y: float | None = None,
    beam_arcsec: tuple[float, float, float] | None = None,
    east_left: bool = True,
) -> fits.Header:
    """An archive-like header: SIN projection, CDELT in degrees, beam in degrees, Jy/beam."""
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"
    header["CRPIX1"], header["CRPIX2"] = 10.0, 20.0
    header["CRVAL1"], header["CRVAL2"] = 246.7, -24.5
    dx = au_per_pixel / distance / 3600.0
    dy = (au_per_pixel if au_per_pixel_y is None else au_per_pixel_y) / distance / 3600.0
    header["CDELT1"], header["CDELT2"] = (-dx if east_left else dx), dy
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    if beam_arcsec is not None:
        header["BMAJ"], header["BMIN"] = beam_arcsec[0] / 3600.0, beam_arcsec[1] / 3600.0
        header["BPA"] = beam_arcsec[2]
    header["BUNIT"] = "Jy/beam"
    return header


def gaussian(shape, x0, y0, sigma_x, sigma_y=None, amplitude=1.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return amplitude * np.exp(-0.5 * (((xx - x0) / sigma_x) ** 2 + ((yy - y0) / sigma_y) ** 2))


def write(tmp_path, name, data, header=None):
    path = tmp_path / name
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header).writeto(path)
    return path


def blob_file(tmp_path, name="blob.fits", *, shape=(96, 96), au=10.0, sigma=0.02, **header_kw):
    """A Gaussian source (FWHM 60 AU) at the centre, white noise ``sigma``, a sky header."""
    rng = np.random.default_rng(5)
    data = gaussian(shape, shape[1] / 2, shape[0] / 2, 25.0 / au) + rng.normal(0, sigma, shape)
    return write(tmp_path, name, data, sky_header(au, **header_kw))


def corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# -- the archive-like case ---------------------------------------------------------------------


def test_archive_like_observation(tmp_path):
    """128 x 128 px at 140 pc, CDELT/BMAJ in degrees, Jy/beam, source off-centre, no truth."""
    params = draw_parameters(np.random.default_rng(0))
    scale = 1000.0 / 96  # AU per observation pixel: render 1000 AU on 96 px
    source = render_system(params, [30.0], [20.0], 96)[0].astype(np.float64)
    x0, y0 = 76, 55  # the star sits at pixel 48 of the rendering
    data = np.zeros((128, 128))
    data[y0 - 48 : y0 + 48, x0 - 48 : x0 + 48] = source
    bmaj, bmin, bpa = 0.30, 0.20, 30.0  # arcsec, arcsec, deg
    arcsec_per_pixel = scale / DISTANCE
    data = convolve(data, beam_kernel(bmaj / arcsec_per_pixel, bmin / arcsec_per_pixel, bpa))
    data /= data.max()
    sigma = 0.02
    data += np.random.default_rng(1).normal(0.0, sigma, data.shape)
    path = write(tmp_path, "archive.fits", data, sky_header(scale, beam_arcsec=(bmaj, bmin, bpa)))
    before = sorted(tmp_path.iterdir())

    obs = read_observation(path, distance=140, library_pixel_scale=15.625, library_size=64)

    assert isinstance(obs, Observation) and obs.source == str(path)
    assert obs.image.shape == (64, 64) and obs.image.dtype == np.float32
    o, inst = obs.original, obs.instrument
    assert o["pixel_scale_au"] == pytest.approx(scale, rel=1e-6)
    assert o["pixel_scale_arcsec"] == pytest.approx(arcsec_per_pixel, rel=1e-6)
    assert o["beam_au"] == pytest.approx([bmaj * DISTANCE, bmin * DISTANCE, bpa], rel=1e-6)
    assert o["beam_arcsec"] == pytest.approx([bmaj, bmin, bpa], rel=1e-6)
    assert o["bunit"] == "Jy/beam" and o["shape"] == [128, 128] and o["padded"] is False
    assert o["noise"] == pytest.approx(sigma, rel=0.15)
    assert math.dist(o["centre_pixel"], (x0, y0)) < 1.0
    # on the library grid: the beam in library pixels, widened by the anti-alias filter
    aa = np.array(o["antialias_sigma_px"]) * scale / 15.625 / FWHM_TO_SIGMA  # FWHM, library px
    assert np.all(aa > 0)
    expected = [
        math.hypot(bmaj * DISTANCE / 15.625, aa[0]),
        math.hypot(bmin * DISTANCE / 15.625, aa[1]),
    ]
    assert [inst.beam_major, inst.beam_minor] == pytest.approx(expected, rel=0.01)
    assert inst.beam_pa == pytest.approx(bpa, abs=1.0)
    assert inst.pixel_scale == 15.625
    assert 0 < inst.noise < o["noise"]  # smoothing before downsampling lowers the pixel noise
    assert inst.snr == pytest.approx(obs.image.max() / inst.noise, rel=1e-4)
    assert inst.provenance == {
        "pixel_scale": "read",
        "beam": "read",
        "noise": "estimated",
        "centre": "found",
    }
    reference = render_system(params, [30.0], [20.0], 64)[0]
    assert corr(obs.image, reference) > 0.9
    assert sorted(tmp_path.iterdir()) == before  # nothing written
    json.dumps(obs.to_dict(), allow_nan=False)


# -- the round trip through `observe` ----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_round_trip_of_a_simulated_observation(tmp_path, seed):
    path = tmp_path / "obs.fits"
    truth = observe(path, seed=seed, snr=30.0, beam_fwhm=2.0, distance=140.0)
    obs = read_observation(path, distance=140, **LIBRARY)
    inst = obs.instrument
    assert obs.original["pixel_scale_au"] == pytest.approx(15.625, rel=1e-9)
    assert inst.beam_major == pytest.approx(2.0, abs=0.02)
    assert inst.beam_minor == pytest.approx(2.0, abs=0.02)
    assert inst.snr == pytest.approx(30.0, rel=0.25)
    assert obs.original["noise"] == pytest.approx(truth["noise_sigma"])
    assert inst.provenance == {
        "pixel_scale": "read",
        "beam": "read",
        "noise": "read",
        "centre": "found",
    }
    assert corr(obs.image, fits.getdata(path)) > 0.95
    assert math.dist(obs.original["centre_pixel"], (32, 32)) < 1.0


def test_round_trip_reads_the_distance_key_and_noise_free_files(tmp_path):
    path = tmp_path / "clean.fits"
    observe(path, seed=1, snr=float("inf"), beam_fwhm=0.0, distance=400.0)
    obs = read_observation(path, **LIBRARY)  # DISTANCE = 400 from the header
    assert obs.original["distance_pc"] == 400.0 and obs.original["distance_from"] == "read"
    assert obs.original["pixel_scale_au"] == pytest.approx(15.625, rel=1e-9)
    assert obs.instrument.snr is None and obs.instrument.noise == 0.0
    assert obs.instrument.provenance["beam"] == "none" and obs.instrument.beam_major == 0.0
    assert any("noise-free" in n for n in obs.notes)
    assert any("DISTANCE" in n for n in obs.notes)
    assert any("no beam" in n for n in obs.notes)


def test_observe_writes_a_celestial_wcs_and_beam(tmp_path):
    truth = observe(tmp_path / "a.fits", seed=2, beam_fwhm=2.5, distance=200.0)
    header = fits.getheader(tmp_path / "a.fits")
    wcs = WCS(header).celestial
    deg = 15.625 / 200.0 / 3600.0
    assert wcs.has_celestial and header["CTYPE1"] == "RA---TAN" and header["CTYPE2"] == "DEC--TAN"
    assert header["CDELT1"] == pytest.approx(-deg) and header["CDELT2"] == pytest.approx(deg)
    assert header["CRPIX1"] == header["CRPIX2"] == 33.0 and header["CUNIT1"] == "deg"
    assert header["BMAJ"] == pytest.approx(2.5 * deg) and header["BMIN"] == header["BMAJ"]
    assert header["BUNIT"] == "Jy/beam" and header["DISTANCE"] == 200.0
    assert header["TRUE_disk_size"] == pytest.approx(truth["disk_size"]) and header["BEAM"] == 2.5
    assert truth["distance"] == 200.0
    observe(tmp_path / "b.fits", seed=2, beam_fwhm=0.0, snr=float("inf"))
    header = fits.getheader(tmp_path / "b.fits")
    assert "BMAJ" not in header and header["DISTANCE"] == 140.0
    assert header["NOISE"] == 0.0 and float(header["SNR"]) == math.inf


def test_observe_image_without_noise():
    from twinsight.simulator import observe_image

    clean, truth = observe_image(seed=4, snr=float("inf"))
    noisy, _ = observe_image(seed=4, snr=30.0)
    assert truth["noise_sigma"] == 0.0 and clean.min() >= 0.0
    assert np.std(noisy - clean) == pytest.approx(clean.max() / 30.0, rel=0.1)
    with pytest.raises(TwinsightError, match="SNR"):
        observe_image(snr=float("nan"))
    with pytest.raises(TwinsightError, match="distance"):
        observe_image(distance=0.0)


# -- bad input: one line naming the file, the key or value, and the option ---------------------


def test_celestial_wcs_without_distance(tmp_path):
    path = blob_file(tmp_path)
    with pytest.raises(TwinsightError) as err:
        read_observation(path, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "--distance PC" in msg and "--pixel-scale AU" in msg
    assert "\n" not in msg


def test_no_wcs_and_no_pixel_scale(tmp_path):
    path = write(tmp_path, "plain.fits", gaussian((32, 32), 16, 16, 2.0))
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "CDELT1/CD1_1/PC1_1" in msg and "CTYPE1" in msg
    assert "--pixel-scale" in msg
    obs = read_observation(path, pixel_scale=15.625, **LIBRARY)  # the option fixes it
    assert obs.instrument.provenance["pixel_scale"] == "given"


@pytest.mark.parametrize("ctypes", [("FREQ", "STOKES"), ("LINEAR", "LINEAR")])
def test_non_celestial_wcs(tmp_path, ctypes):
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = ctypes
    header["CDELT1"], header["CDELT2"] = 1e6, 1.0
    path = write(tmp_path, "freq.fits", gaussian((32, 32), 16, 16, 2.0), header)
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "not celestial" in msg and ctypes[0] in msg
    assert "--pixel-scale" in msg


@pytest.mark.parametrize("noise", [0, -1.0, float("nan"), float("inf"), "abc"])
def test_bad_noise_given(tmp_path, noise):
    path = blob_file(tmp_path)
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, noise=noise, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "--noise" in msg and repr(noise) in msg


def test_bad_noise_in_the_header(tmp_path):
    header = sky_header(10.0)
    header["RMS"] = -0.5
    path = write(tmp_path, "rms.fits", gaussian((64, 64), 32, 32, 3.0), header)
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "RMS" in msg and "-0.5" in msg and "--noise" in msg
    assert read_observation(path, distance=140, noise=0.1, **LIBRARY).instrument.noise > 0


@pytest.mark.parametrize(
    ("header_beam", "beam", "origin"),
    [((0.3 * 3600, 0.2 * 3600, 0.0), None, "BMAJ"), (None, "5000au", "--beam '5000au'")],
)
def test_beam_wider_than_the_field(tmp_path, header_beam, beam, origin):
    # BMAJ 0.3 deg (arcsec written into a degree key): wider than the 960 AU field
    path = blob_file(tmp_path, beam_arcsec=header_beam)
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, beam=beam, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "wider than the field of view" in msg and origin in msg
    assert "--beam" in msg


def test_bad_beam_in_the_header(tmp_path):
    path = blob_file(tmp_path, beam_arcsec=(-0.3, 0.2, 0.0))
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "BMAJ/BMIN/BPA" in msg and "--beam" in msg and "\n" not in msg
    assert read_observation(path, distance=140, beam="0.3arcsec", **LIBRARY).instrument.beam_major


@pytest.mark.parametrize(
    ("beam", "message"),
    [
        ("abc", "not a beam size"),
        ("0.1 blobs", "unknown unit 'blobs'"),
        ("0.1kg", "not an angle, a length or px"),
        ("-2px", "must be >= 0"),
        (True, "not a beam size"),
    ],
)
def test_bad_beam_given(tmp_path, beam, message):
    path = blob_file(tmp_path)
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, beam=beam, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "--beam" in msg and message in msg


def test_angular_beam_needs_a_distance():
    image = gaussian((64, 64), 32, 32, 3.0)
    with pytest.raises(TwinsightError) as err:
        observation_from_array(image, pixel_scale=15.625, beam=0.1, source="mine", **LIBRARY)
    msg = str(err.value)
    assert "'mine'" in msg and "--distance PC" in msg and "au or px" in msg
    obs = observation_from_array(image, pixel_scale=15.625, beam=0.1, distance=140, **LIBRARY)
    assert obs.original["beam_au"][0] == pytest.approx(14.0)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"distance": 0}, "--distance"),
        ({"distance": -140}, "--distance"),
        ({"distance": 140, "pixel_scale": 0.0}, "--pixel-scale"),
        ({"distance": 140, "centre": (500, 3)}, "--centre"),
        ({"distance": 140, "centre": "middle"}, "--centre"),
    ],
)
def test_bad_options(tmp_path, kwargs, option):
    path = blob_file(tmp_path)
    with pytest.raises(TwinsightError) as err:
        read_observation(path, **kwargs, **LIBRARY)
    assert str(path) in str(err.value) and option in str(err.value)


def test_bad_library_grid_and_files(tmp_path):
    path = blob_file(tmp_path)
    with pytest.raises(TwinsightError, match="library_size"):
        read_observation(path, distance=140, library_pixel_scale=15.625, library_size=4)
    with pytest.raises(TwinsightError, match="library_pixel_scale"):
        read_observation(path, distance=140, library_pixel_scale=0.0, library_size=64)
    with pytest.raises(TwinsightError, match="does not exist"):
        read_observation(tmp_path / "nope.fits", distance=140, **LIBRARY)
    cube = write(tmp_path, "cube.fits", np.zeros((5, 32, 32)), sky_header(10.0))
    with pytest.raises(TwinsightError) as err:
        read_observation(cube, distance=140, **LIBRARY)
    assert str(cube) in str(err.value) and "2-D" in str(err.value) and "--hdu" in str(err.value)
    with pytest.raises(TwinsightError, match="no HDU 'SCI'"):
        read_observation(path, distance=140, hdu="SCI", **LIBRARY)


def test_mostly_blank_image_is_refused(tmp_path):
    data = gaussian((64, 64), 32, 32, 3.0)
    data[:40] = np.nan
    path = write(tmp_path, "blank.fits", data, sky_header(10.0))
    with pytest.raises(TwinsightError) as err:
        read_observation(path, distance=140, **LIBRARY)
    msg = str(err.value)
    assert str(path) in msg and "2560 of 4096 pixels are blank" in msg


# -- what the steps do -------------------------------------------------------------------------


def test_small_field_is_padded_with_noise(tmp_path):
    path = blob_file(tmp_path, shape=(40, 40), au=15.0)  # 600 AU
    obs = read_observation(path, distance=140, **LIBRARY)
    assert obs.original["padded"] is True and obs.original["padded_pixels"] > 1000
    assert any(n.startswith("field 600 AU < library 1000 AU: padded with noise") for n in obs.notes)
    edge = np.concatenate([obs.image[:8].ravel(), obs.image[-8:].ravel()])  # all padding
    assert np.std(edge) == pytest.approx(obs.instrument.noise, rel=0.15)
    again = read_observation(path, distance=140, **LIBRARY)
    other = read_observation(path, distance=140, seed=1, **LIBRARY)
    np.testing.assert_array_equal(again.image, obs.image)
    assert not np.array_equal(other.image, obs.image)


def test_blank_pixels_become_background_noise(tmp_path):
    rng = np.random.default_rng(2)
    data = gaussian((96, 96), 48, 48, 3.0) + rng.normal(0, 0.02, (96, 96))
    data[:10, :20] = np.nan
    path = write(tmp_path, "nan.fits", data, sky_header(10.0))
    obs = read_observation(path, distance=140, **LIBRARY)
    assert np.all(np.isfinite(obs.image)) and obs.original["blank_pixels"] == 200
    assert "200 blank (NaN) pixels replaced by background noise" in obs.notes
    assert obs.original["noise"] == pytest.approx(0.02, rel=0.15)


def test_given_options_override_the_header(tmp_path):
    header = sky_header(10.0, beam_arcsec=(0.3, 0.2, 30.0))
    header["NOISE"] = 0.5
    data = gaussian((96, 96), 40, 50, 3.0) + np.random.default_rng(3).normal(0, 0.02, (96, 96))
    path = write(tmp_path, "over.fits", data, header)
    read = read_observation(path, distance=140, **LIBRARY)
    assert read.original["noise"] == 0.5 and read.original["noise_key"] == "NOISE"
    assert read.instrument.provenance["noise"] == "read"
    obs = read_observation(
        path,
        distance=140,
        pixel_scale=12.0,
        noise=0.03,
        beam="14au",
        centre=(41.0, 49.0),
        **LIBRARY,
    )
    assert obs.original["pixel_scale_au"] == pytest.approx(12.0)
    assert obs.original["noise"] == 0.03 and obs.original["beam_au"][:2] == pytest.approx([14, 14])
    assert obs.original["centre_pixel"] == [41.0, 49.0]
    assert obs.instrument.provenance == {
        "pixel_scale": "given",
        "beam": "given",
        "noise": "given",
        "centre": "given",
    }
    assert any("pixel scale given as 12 AU/px" in n for n in obs.notes)


@pytest.mark.parametrize(
    ("beam", "au"),
    [
        ("0.1arcsec", (14.0, 14.0, 0.0)),
        ('0.1"', (14.0, 14.0, 0.0)),
        (0.1, (14.0, 14.0, 0.0)),
        ("0.1", (14.0, 14.0, 0.0)),
        ("100mas", (14.0, 14.0, 0.0)),
        ("14au", (14.0, 14.0, 0.0)),
        ("2px", (20.0, 20.0, 0.0)),
        ("0.3x0.2arcsec@30", (42.0, 28.0, 30.0)),
        ("20 x 30 AU @ 45deg", (30.0, 20.0, 45.0)),
    ],
)
def test_beam_given_with_a_unit(tmp_path, beam, au):
    path = blob_file(tmp_path)  # 10 AU per pixel at 140 pc
    obs = read_observation(path, distance=140, beam=beam, **LIBRARY)
    assert obs.original["beam_au"] == pytest.approx(list(au), abs=1e-6)
    assert obs.instrument.provenance["beam"] == "given"


def test_non_square_pixels(tmp_path):
    """10 x 6 AU pixels: each axis resampled on its own; a round source stays round."""
    shape, sigma_au = (180, 110), 40.0  # 1100 x 1080 AU: no padding
    x0, y0 = 55.3, 90.6
    data = gaussian(shape, x0, y0, sigma_au / 10.0, sigma_au / 6.0)
    path = write(tmp_path, "rect.fits", data, sky_header(10.0, au_per_pixel_y=6.0))
    obs = read_observation(path, distance=140, noise=1e-3, **LIBRARY)
    o = obs.original
    assert o["pixel_scale_au"] == pytest.approx(math.sqrt(60.0), rel=1e-6)
    assert o["pixel_scale_au_xy"] == pytest.approx([10.0, 6.0], rel=1e-6)
    assert o["centre_pixel"] == pytest.approx([x0, y0], abs=0.05)
    assert any("non-square pixels" in n for n in obs.notes) and not o["padded"]
    aa_au = np.array(o["antialias_sigma_px"]) * [10.0, 6.0]
    sx, sy = np.hypot(sigma_au, aa_au) / 15.625
    expected = gaussian((64, 64), 32, 32, sx, sy)
    assert corr(obs.image, expected) > 0.999
    image = np.clip(obs.image, 0, None)
    yy, xx = np.mgrid[:64, :64]
    mx = np.sqrt((image * (xx - 32) ** 2).sum() / image.sum())
    my = np.sqrt((image * (yy - 32) ** 2).sum() / image.sum())
    assert mx == pytest.approx(sx, rel=0.03) and my == pytest.approx(sy, rel=0.03)


def test_orientation_follows_the_wcs(tmp_path):
    """East is left on the library grid: a file with east to the right is mirrored."""
    shape = (110, 110)  # 1100 AU: no padding
    data = gaussian(shape, 55, 55, 1.5) + gaussian(shape, 67, 55, 2.0, amplitude=0.5)
    normal = write(tmp_path, "left.fits", data, sky_header(10.0))
    flipped = write(tmp_path, "right.fits", data, sky_header(10.0, east_left=False))
    a = read_observation(normal, distance=140, noise=1e-3, **LIBRARY)
    b = read_observation(flipped, distance=140, noise=1e-3, **LIBRARY)
    assert not a.original["padded"] and not b.original["padded"]
    assert a.image[32, 32 + 8] > 0.3 > a.image[32, 32 - 8]  # the companion 120 AU west (+x)
    mirrored = a.image[:, 1:][:, ::-1]  # column 32 + k <-> 32 - k
    np.testing.assert_allclose(b.image[:, 1:], mirrored, atol=1e-4)


@pytest.mark.parametrize("correlated", [False, True])
def test_library_noise_is_the_resampled_noise(tmp_path, correlated):
    """The library-grid noise is what the pixels show, white or beam-correlated noise."""
    shape, au = (256, 256), 5.0
    noise = np.random.default_rng(7).normal(0.0, 1.0, shape)
    if correlated:
        noise = gaussian_filter(noise, 2.0)
        noise /= noise.std()
    data = gaussian(shape, 128, 128, 4.0, amplitude=50.0) + 0.1 * noise
    path = write(tmp_path, "noise.fits", data, sky_header(au))
    obs = read_observation(path, distance=140, **LIBRARY)
    assert obs.original["noise"] == pytest.approx(0.1, rel=0.1)
    assert obs.original["noise_transfer_from"] == "measured"
    yy, xx = np.mgrid[:64, :64]
    far = np.hypot(xx - 32, yy - 32) > 12
    assert obs.instrument.noise == pytest.approx(np.std(obs.image[far]), rel=0.12)


def test_array_intake_is_the_same_pipeline(tmp_path):
    data = gaussian((64, 64), 30, 33, 2.0) + np.random.default_rng(4).normal(0, 0.05, (64, 64))
    data = data.astype(np.float32)  # as the file holds it
    from_array = observation_from_array(data, pixel_scale=15.625, source="arr", **LIBRARY)
    path = write(tmp_path, "plain.fits", data)
    from_file = read_observation(path, pixel_scale=15.625, **LIBRARY)
    np.testing.assert_allclose(from_array.image, from_file.image, atol=1e-6)
    assert from_array.instrument == from_file.instrument
    assert from_array.source == "arr" and from_array.instrument.provenance["beam"] == "none"
    assert from_array.instrument.beam_major == 0.0
    assert any("no beam" in n for n in from_array.notes)
    as_json = json.loads(json.dumps(from_array.to_dict(), allow_nan=False))
    assert as_json["instrument"]["provenance"]["noise"] == "estimated"
    assert as_json["original"]["centre_pixel"] == pytest.approx([30, 33], abs=0.2)


def test_beam_covariance_round_trip():
    for major, minor, pa in [(3.0, 2.0, 30.0), (3.0, 2.0, 150.0), (2.0, 2.0, 0.0)]:
        assert beam_axes(beam_covariance(major, minor, pa)) == pytest.approx((major, minor, pa))
    # the covariance's major axis is the one beam_kernel draws
    kernel = beam_kernel(6.0, 2.0, 30.0)
    yy, xx = np.mgrid[: kernel.shape[0], : kernel.shape[1]] - kernel.shape[0] // 2
    cov = np.array(
        [
            [(kernel * xx * xx).sum(), (kernel * xx * yy).sum()],
            [(kernel * xx * yy).sum(), (kernel * yy * yy).sum()],
        ]
    )
    assert beam_axes(cov)[2] == pytest.approx(30.0, abs=0.5)


def test_rotated_wcs_and_a_radio_cube_header(tmp_path):
    """A CD matrix turned by 30 degrees is turned back; length-1 FREQ/STOKES axes are dropped."""
    shape, c = (120, 120), 60.0
    sky = (
        gaussian(shape, c, c, 1.5)
        + gaussian(shape, c + 12, c, 2.0, amplitude=0.5)
        + gaussian(shape, c, c - 15, 2.0, amplitude=0.3)
    )
    header = sky_header(10.0)
    upright = write(tmp_path, "upright.fits", sky, header)
    t = math.radians(30.0)
    turn = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    yy, xx = np.mgrid[:120, :120].astype(np.float64) - c
    qx, qy = turn[0, 0] * xx + turn[0, 1] * yy + c, turn[1, 0] * xx + turn[1, 1] * yy + c
    from scipy.ndimage import map_coordinates

    turned = map_coordinates(sky, [qy, qx], order=3)
    cd = np.diag([header["CDELT1"], header["CDELT2"]]) @ turn
    rotated_header = sky_header(10.0)
    del rotated_header["CDELT1"], rotated_header["CDELT2"]
    for (i, j), value in np.ndenumerate(cd):
        rotated_header[f"CD{i + 1}_{j + 1}"] = value
    rotated = write(tmp_path, "rotated.fits", turned, rotated_header)
    a = read_observation(upright, distance=140, noise=1e-3, **LIBRARY)
    b = read_observation(rotated, distance=140, noise=1e-3, **LIBRARY)
    assert b.original["pixel_scale_au_xy"] == pytest.approx([10.0, 10.0])
    np.testing.assert_allclose(b.image[8:-8, 8:-8], a.image[8:-8, 8:-8], atol=0.01)

    cube_header = sky_header(10.0, beam_arcsec=(0.2, 0.15, -20.0))
    for key, value in {
        "CTYPE3": "FREQ",
        "CDELT3": 1e9,
        "CRVAL3": 2.3e11,
        "CRPIX3": 1.0,
        "CTYPE4": "STOKES",
        "CDELT4": 1.0,
        "CRVAL4": 1.0,
        "CRPIX4": 1.0,
    }.items():
        cube_header[key] = value
    cube = write(tmp_path, "cube.fits", sky[None, None], cube_header)
    obs = read_observation(cube, distance=140, noise=1e-3, **LIBRARY)
    assert obs.original["beam_au"] == pytest.approx([28.0, 21.0, 160.0])
    np.testing.assert_allclose(obs.image, a.image, atol=2e-3)  # the centre: found another way


def test_noise_free_image_with_a_given_noise(tmp_path):
    """No noise to measure: the given sigma goes through resampling as white noise would."""
    path = write(tmp_path, "clean.fits", gaussian((200, 200), 100, 100, 3.0), sky_header(5.0))
    obs = read_observation(path, distance=140, noise=0.01, **LIBRARY)
    assert obs.original["noise_background"] == 0.0
    assert obs.original["noise_transfer_from"] == "white"
    assert 0.1 < obs.original["noise_transfer"] < 1.0  # 3.1x downsampling averages noise
    assert obs.instrument.snr == pytest.approx(obs.image.max() / obs.instrument.noise)
    assert any("white noise" in n for n in obs.notes)
