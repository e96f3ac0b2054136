"""The self-contained HTML report, built from a hand-made run folder."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import report_images, report_values
from twinsight.report import (
    FIGURES,
    LAYOUT,
    build_report,
    fmt,
    fmt_percent,
    render_report,
)

NAMES = ["mass", "age"]


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((12, 16)) * 255).astype(np.uint8)).save(path)


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_run(run_dir: Path) -> dict:
    """A run folder with every JSON and PNG the report reads; returns the JSON written."""
    estimate = {
        "n_matches": 3,
        "matches": [
            {"rank": i + 1, "key": f"sys{i}/p1", "system": f"sys{i}", "similarity": 0.9 - i / 10}
            for i in range(3)
        ],
        "parameters": {
            "mass": {
                "scale": "linear",
                "unit": "Msun",
                "median": 1.1,
                "interval_68": [0.91234, 1.5],
                "interval_95": [0.5, 2.0],
                "prior": {"median": 1.0, "interval_68": [0.2, 3.0], "interval_95": [0.1, 4.0]},
                "narrowing": 0.21123,
                "truth": 1.23456,
                "in_68": True,
            },
            "age": {
                "scale": "log",
                "unit": "yr",
                "median": 123456.789,
                "interval_68": [90000.0, 200000.0],
                "interval_95": [50000.0, 400000.0],
                "prior": {"median": 1e5, "interval_68": [2e4, 8e5], "interval_95": [1e4, 1e6]},
                "narrowing": 0.1409,
                "truth": 250000.0,
                "in_68": False,
            },
        },
    }
    calibration = {
        "items": 160,
        "parameters": {
            n: {
                "scale": "log10",
                "r2": 0.81234,
                "rmse": 0.3,
                "coverage_68": 0.675,
                "coverage_95": 0.95,
                "narrowing": 0.4,
            }
            for n in NAMES
        },
        "summary": {"systems": 40, "coverage_68": 0.675, "coverage_95": 0.95},
    }
    observation = {"system": "sys7", "fits": "observation/observation.fits", "beam_fwhm": 2.0}
    training = {"history": [{"epoch": 0, "train_loss": 1.0}], "final": {"val_spearman": 0.4}}
    _write(run_dir / LAYOUT["estimate"], estimate)
    _write(run_dir / LAYOUT["calibration"], calibration)
    _write(run_dir / LAYOUT["observation"], observation)
    _write(run_dir / LAYOUT["training"], training)
    for seed, (key, _) in enumerate(FIGURES):
        _png(run_dir / LAYOUT[key], seed)
    return {"estimate": estimate, "calibration": calibration}


def test_report_embeds_every_figure_as_png(tmp_path):
    make_run(tmp_path)
    path = build_report(tmp_path)
    assert path == tmp_path / "report.html"
    text = path.read_text()
    images = report_images(text)
    assert len(images) == len(FIGURES) == 6
    for data, (key, _) in zip(images, FIGURES, strict=True):
        assert data == (tmp_path / LAYOUT[key]).read_bytes()
        Image.open(io.BytesIO(data)).verify()
    assert "http://" not in text and "https://" not in text and "<script" not in text


def test_report_numbers_equal_the_json(tmp_path):
    written = make_run(tmp_path)
    values = report_values(render_report(tmp_path))
    for name, p in written["estimate"]["parameters"].items():
        assert values[f"estimate.{name}.median"] == (p["median"], fmt(p["median"]))
        assert values[f"estimate.{name}.truth"] == (p["truth"], fmt(p["truth"]))
        assert values[f"estimate.{name}.interval_68"][0] == p["interval_68"]
        assert values[f"estimate.{name}.prior_68"][0] == p["prior"]["interval_68"]
        assert values[f"estimate.{name}.narrowing"] == (p["narrowing"], fmt(p["narrowing"]))
        assert values[f"estimate.{name}.in_68"][0] is p["in_68"]
    for name, c in written["calibration"]["parameters"].items():
        assert values[f"calibration.{name}.r2"] == (c["r2"], "0.8123")
        assert values[f"calibration.{name}.coverage_68"] == (c["coverage_68"], "67.5 %")
        assert values[f"calibration.{name}.coverage_95"] == (c["coverage_95"], "95.0 %")
    assert values["calibration.summary.coverage_68"] == (0.675, "67.5 %")
    assert values["matches.1.similarity"] == (0.9, "0.9")
    # spot-check the formatting the reader sees
    assert values["estimate.age.median"][1] == "1.235e+05"
    assert values["estimate.mass.interval_68"][1] == "[0.9123, 1.5]"


def test_report_rebuild_reads_edited_json(tmp_path):
    written = make_run(tmp_path)
    written["estimate"]["parameters"]["mass"]["median"] = 42.0
    _write(tmp_path / LAYOUT["estimate"], written["estimate"])
    assert report_values(render_report(tmp_path))["estimate.mass.median"] == (42.0, "42")


def test_explicit_output_is_not_overwritten(tmp_path):
    make_run(tmp_path / "run")
    out = tmp_path / "mine.html"
    out.write_text("keep me")
    with pytest.raises(Exception, match="already exists"):
        build_report(tmp_path / "run", out)
    assert out.read_text() == "keep me"
    build_report(tmp_path / "run", out, overwrite=True)
    assert out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("key", "content", "message"),
    [
        ("estimate", None, r"parameter estimate '.*match.json' is missing"),
        ("estimate", "{broken", r"match.json' is not valid JSON"),
        ("estimate", '{"matches": []}', r"has no field 'parameters'"),
        ("estimate", '{"matches": [], "parameters": {"mass": {}}}', r"lacks or mangles a field"),
        ("calibration", '{"parameters": {"mass": {"r2": 1}}}', r"evaluation.json' lacks or"),
        ("fig_pairs", None, r"figure '.*pairs.png' is missing"),
        ("fig_pairs", "not a png", r"pairs.png' is not a PNG file"),
    ],
)
def test_bad_run_folders_are_clear_errors(tmp_path, key, content, message):
    from twinsight.errors import TwinsightError

    make_run(tmp_path)
    target = tmp_path / LAYOUT[key]
    if content is None:
        target.unlink()
    else:
        target.write_text(content)
    with pytest.raises(TwinsightError, match=message):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_missing_run_folder(tmp_path):
    from twinsight.errors import TwinsightError

    with pytest.raises(TwinsightError, match="does not exist; run `twinsight demo --out"):
        render_report(tmp_path / "nope")


def test_formatting():
    assert fmt(None) == "–"
    assert fmt(3) == "3"
    assert fmt(0.123456) == "0.1235"
    assert fmt(float("nan")) == "nan"
    assert fmt_percent(0.6789) == "67.9 %"


def test_report_command(tmp_path, run_cli):
    make_run(tmp_path)
    result = run_cli("report", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "report.html").is_file()
    assert "report.html" in result.stdout
    result = run_cli("report", tmp_path / "missing")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def _instrumented(written: dict) -> dict:
    """The run's estimate as matched through the intake, its calibration with a grid."""
    estimate, calibration = written["estimate"], written["calibration"]
    estimate["calibrated_for"] = {"beam_major": 2.0, "beam_minor": 2.0, "beam_pa": 0.0,
                                  "snr": 30.0, "key": "beam2.0x2.0pa0-snr30"}  # fmt: skip
    estimate["observation"] = {
        "instrument": {"beam_major": 2.04, "snr": 29.1,
                       "provenance": {"pixel_scale": "read", "beam": "given",
                                      "noise": "estimated", "centre": "found"}},
        "original": {"distance_pc": 140.0, "distance_from": "read", "pixel_scale_au": 15.625,
                     "beam_arcsec": [0.2, 0.1, 30.0], "noise": 0.0123, "bunit": "Jy/beam"},
        "notes": ["distance 140 pc read from the header's DISTANCE key"],
    }  # fmt: skip
    estimate["typicality"] = {
        "best_similarity": 0.93,
        "p_value": 0.004,
        "alpha": 0.01,
        "reference": 90,
        "reference_median": 0.98,
        "atypical": True,
    }
    estimate["warnings"] = ["this observation looks like none of the simulations <b>"]

    def through(cov68: float, cov95: float) -> dict:
        return {n: {"coverage_68": cov68, "coverage_95": cov95, "r2": 0.5} for n in NAMES}

    calibration["instruments"] = {
        "beam0.0x0.0pa0-snrinf": {"instrument": {"beam_major": 0.0, "snr": None},
                                  "parameters": through(0.70, 0.95),
                                  "typicality_warning_rate": 0.0},
        "beam2.0x2.0pa0-snr30": {"instrument": {"beam_major": 2.0, "snr": 30.0},
                                 "parameters": through(0.55, 0.99),
                                 "typicality_warning_rate": 0.125},
    }  # fmt: skip
    return written


def test_report_shows_the_instrument_grid_and_the_observed_instrument(tmp_path):
    written = _instrumented(make_run(tmp_path))
    _write(tmp_path / LAYOUT["estimate"], written["estimate"])
    _write(tmp_path / LAYOUT["calibration"], written["calibration"])
    text = render_report(tmp_path)
    values = report_values(text)
    assert 'id="instrument-table"' in text and 'id="observation-intake"' in text
    clean, noisy = "instruments.beam0.0x0.0pa0-snrinf", "instruments.beam2.0x2.0pa0-snr30"
    assert values[f"{clean}.mass.coverage_68"] == (0.70, "70.0")
    assert values[f"{noisy}.age.coverage_95"] == (0.99, "99.0")
    assert values[f"{noisy}.age.r2"] == (0.5, "0.50")
    assert values[f"{clean}.snr"] == (None, "∞")
    assert values[f"{noisy}.typicality_warning_rate"] == (0.125, "12.5")
    marked = re.findall(r'data-field="([^"]+)" data-value="[^"]*" class="off"', text)
    assert sorted(marked) == sorted(f"{noisy}.{n}.coverage_{lv}" for n in NAMES for lv in (68, 95))
    assert values["calibrated_for.beam_major"] == (2.0, "2")
    assert values["calibrated_for.snr"] == (30.0, "30")
    assert values["typicality.p_value"] == (0.004, "0.004")
    assert values["observation.pixel_scale_au"] == (15.625, "15.62")
    provenance = dict(re.findall(r'data-provenance="observation\.(\w+)">(\w+)<', text))
    assert provenance["pixel_scale_au"] == "read" and provenance["beam_arcsec"] == "given"
    assert provenance["noise"] == "estimated" and provenance["distance_pc"] == "read"
    assert "0.2 x 0.1 at 30 deg" in text
    assert "looks like none of the simulations &lt;b&gt;" in text  # escaped, never markup
    assert "distance 140 pc read from the header" in text


def test_report_without_instruments_says_clean_simulations(tmp_path):
    make_run(tmp_path)
    text = render_report(tmp_path)
    assert 'id="instrument-table"' not in text
    assert "clean simulations" in text and "no intake" in text


def test_outside_band():
    from twinsight.report import outside_band

    assert not outside_band(0.68, "coverage_68") and outside_band(0.59, "coverage_68")
    assert outside_band(0.77, "coverage_68") and not outside_band(0.95, "coverage_95")
    assert outside_band(0.985, "coverage_95") and not outside_band(None, "coverage_95")
    assert not outside_band(float("nan"), "coverage_68")
