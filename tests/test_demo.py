"""The demo's stage runner (fingerprints, skip, --force) and the end-to-end quick demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinsight.errors import TwinsightError
from twinsight.pipeline import Stage, read_stages, run_stages


def _writer(name: str, text: str, calls: list[str]):
    def action(run_dir: Path) -> dict:
        calls.append(name)
        (run_dir / f"{name}.txt").write_text(text)
        return {"chars": len(text)}

    return action


def _pipeline(calls: list[str], a_text: str = "alpha", b_config: int = 1) -> list[Stage]:
    return [
        Stage("a", "first", ("a.txt",), _writer("a", a_text, calls), {"seed": 0}),
        Stage("b", "second", ("b.txt",), _writer("b", "beta", calls), {"k": b_config}, ("a",)),
        Stage("c", "third", ("c.txt",), _writer("c", "gamma", calls), {}, ("b",)),
    ]


def test_first_run_runs_everything_and_records_fingerprints(tmp_path):
    calls: list[str] = []
    results = run_stages(tmp_path / "run", _pipeline(calls), run_info={"seed": 0})
    assert calls == ["a", "b", "c"]
    assert [r.status for r in results] == ["ran", "ran", "ran"]
    record = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert record["run"] == {"seed": 0}
    assert set(record["stages"]) == {"a", "b", "c"}
    assert record["stages"]["a"]["info"] == {"chars": 5}
    assert len(record["stages"]["b"]["fingerprint"]) == 16
    assert record["stages"]["b"]["depends"] == ["a"]


def test_rerun_skips_all_and_force_reruns(tmp_path):
    calls: list[str] = []
    run_stages(tmp_path, _pipeline(calls))
    calls.clear()
    results = run_stages(tmp_path, _pipeline(calls))
    assert calls == []
    assert [r.status for r in results] == ["skipped"] * 3
    assert results[0].info == {"chars": 5}
    results = run_stages(tmp_path, _pipeline(calls), force=True)
    assert calls == ["a", "b", "c"]
    assert [r.status for r in results] == ["ran"] * 3


def test_changed_config_reruns_that_stage_and_downstream_only(tmp_path):
    calls: list[str] = []
    run_stages(tmp_path, _pipeline(calls))
    calls.clear()
    run_stages(tmp_path, _pipeline(calls, b_config=2))
    assert calls == ["b"]  # b's output bytes are unchanged, so c is still up to date


def test_changed_upstream_output_reruns_downstream(tmp_path):
    calls: list[str] = []
    run_stages(tmp_path, _pipeline(calls))
    calls.clear()
    run_stages(tmp_path, _pipeline(calls, a_text="ALPHA!"))  # same config, new bytes: no
    assert calls == []  # a's inputs did not change, so a is skipped and its output kept
    (tmp_path / "a.txt").write_text("edited by hand")
    run_stages(tmp_path, _pipeline(calls, a_text="ALPHA!"))
    assert calls == ["a", "b"]  # a re-made; b sees new upstream bytes; c's input is unchanged


def test_missing_output_reruns_the_stage(tmp_path):
    calls: list[str] = []
    run_stages(tmp_path, _pipeline(calls))
    calls.clear()
    (tmp_path / "c.txt").unlink()
    run_stages(tmp_path, _pipeline(calls))
    assert calls == ["c"]


def test_interrupted_run_resumes_after_last_finished_stage(tmp_path):
    calls: list[str] = []

    def boom(run_dir: Path) -> dict:
        raise KeyboardInterrupt

    stages = _pipeline(calls)
    broken = [stages[0], Stage("b", "second", ("b.txt",), boom, {"k": 1}, ("a",)), stages[2]]
    with pytest.raises(KeyboardInterrupt):
        run_stages(tmp_path, broken)
    assert set(read_stages(tmp_path)["stages"]) == {"a"}
    calls.clear()
    run_stages(tmp_path, _pipeline(calls))
    assert calls == ["b", "c"]


def test_stage_that_writes_nothing_is_an_error(tmp_path):
    stage = Stage("lazy", "writes nothing", ("out.txt",), lambda run_dir: {})
    with pytest.raises(TwinsightError, match=r"'lazy' finished without writing \['out.txt'\]"):
        run_stages(tmp_path, [stage])


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(TwinsightError, match="not a twinsight demo folder"):
        run_stages(tmp_path, _pipeline([]))
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_broken_stage_record_is_a_clear_error(tmp_path):
    (tmp_path / "stages.json").write_text("{not json")
    with pytest.raises(TwinsightError, match="stages.json' is not valid JSON"):
        run_stages(tmp_path, _pipeline([]))
    (tmp_path / "stages.json").write_text('{"format": "something-else"}')
    with pytest.raises(TwinsightError, match="not a twinsight stage record"):
        run_stages(tmp_path, _pipeline([]))


def test_out_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(TwinsightError, match="is a file"):
        run_stages(target, _pipeline([]))


def test_dependency_order_is_checked(tmp_path):
    calls: list[str] = []
    a, b, c = _pipeline(calls)
    with pytest.raises(TwinsightError, match=r"stage 'b' depends on \['a'\]"):
        run_stages(tmp_path, [b, a, c])


# -- the real pipeline, end to end -----------------------------------------------------------------
def _numbers(run_dir: Path) -> tuple[dict, dict]:
    from twinsight.report import LAYOUT

    estimate = json.loads((run_dir / LAYOUT["estimate"]).read_text())
    evaluation = json.loads((run_dir / LAYOUT["calibration"]).read_text())
    return estimate, evaluation


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One ``twinsight demo --quick --json`` run in a subprocess (shared by the tests below).

    Returns the run folder, the wall time and the JSON printed on stdout (which
    must be nothing but JSON: progress and logs go to stderr).
    """
    out = tmp_path_factory.mktemp("demo") / "run"
    start = time.perf_counter()
    proc = _demo_subprocess(out)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, seconds, json.loads(proc.stdout)


def test_quick_demo_writes_a_complete_report(quick_demo):
    from io import BytesIO

    from PIL import Image

    from helpers import report_images
    from twinsight.report import FIGURES

    out, seconds, printed = quick_demo
    assert {s["status"] for s in printed["stages"].values()} == {"ran"}
    assert printed["report"] == str(out / "report.html")
    text = (out / "report.html").read_text()
    images = report_images(text)
    assert len(images) == len(FIGURES)
    for data in images:
        image = Image.open(BytesIO(data))
        assert image.format == "PNG" and min(image.size) > 100
    assert "<script" not in text and "http://" not in text and "https://" not in text
    record = read_stages(out)
    assert list(record["stages"]) == [
        "simulate",
        "train",
        "index",
        "observe",
        "match",
        "calibrate",
        "report",
    ]
    assert record["run"]["quick"] is True and record["run"]["seed"] == 0


def test_quick_demo_report_numbers_equal_the_json(quick_demo):
    from helpers import report_values
    from twinsight.report import fmt, fmt_percent

    out, _, _ = quick_demo
    estimate, evaluation = _numbers(out)
    values = report_values((out / "report.html").read_text())
    assert len(estimate["parameters"]) == 7
    for name, p in estimate["parameters"].items():
        assert values[f"estimate.{name}.median"] == (p["median"], fmt(p["median"]))
        assert values[f"estimate.{name}.truth"] == (p["truth"], fmt(p["truth"]))
        assert values[f"estimate.{name}.interval_68"][0] == p["interval_68"]
        assert values[f"estimate.{name}.narrowing"] == (p["narrowing"], fmt(p["narrowing"]))
    for name, p in evaluation["parameters"].items():
        assert values[f"calibration.{name}.r2"] == (p["r2"], fmt(p["r2"]))
        cov = p["coverage_68"]
        assert values[f"calibration.{name}.coverage_68"] == (cov, fmt_percent(cov))
    summary = evaluation["summary"]
    assert values["calibration.summary.coverage_68"][0] == summary["coverage_68"]
    observation = json.loads((out / "observation" / "observation.json").read_text())
    truths = {n: p["truth"] for n, p in estimate["parameters"].items()}
    assert truths == pytest.approx(observation["truth"])  # the FITS header carried the truth
    assert (out / "observation" / "observation.fits").read_bytes()[:6] == b"SIMPLE"


def test_quick_demo_matches_through_the_intake_and_states_its_instrument(quick_demo):
    """The observation is matched as an archive file: its WCS read, the estimate calibrated
    for the instrument the intake found, with its typicality; the grid is in the record."""
    from helpers import report_values
    from twinsight.demo import QUICK

    out, _, _ = quick_demo
    estimate, evaluation = _numbers(out)
    observation = estimate["observation"]
    provenance = observation["instrument"]["provenance"]
    assert provenance["pixel_scale"] == "read" and provenance["beam"] == "read"
    assert observation["original"]["distance_pc"] == 140.0
    assert observation["original"]["pixel_scale_au"] == pytest.approx(1000 / QUICK.size)
    calibrated_for = estimate["calibrated_for"]
    assert isinstance(calibrated_for, dict) and calibrated_for["key"].startswith("beam")
    assert calibrated_for["beam_major"] == pytest.approx(QUICK.beam_fwhm, abs=0.05)
    assert 0 < estimate["typicality"]["p_value"] <= 1
    assert isinstance(estimate["warnings"], list)
    grid = {inst.rounded.key for inst in QUICK.instruments()}
    assert set(evaluation["instruments"]) == grid and len(grid) == 4
    for metrics in evaluation["instruments"].values():
        assert set(metrics["parameters"]) == set(estimate["parameters"])
        assert 0 <= metrics["typicality_warning_rate"] <= 1
    assert set(evaluation["summary"]) == {"systems", "coverage_68", "coverage_95"}  # clean
    text = (out / "report.html").read_text()
    values = report_values(text)
    assert 'id="instrument-table"' in text
    for key, metrics in evaluation["instruments"].items():
        cov = metrics["parameters"]["mass"]["coverage_68"]
        assert values[f"instruments.{key}.mass.coverage_68"][0] == cov
    assert f'data-instrument="{calibrated_for["key"]}"' in text  # the observed system's
    assert values["typicality.p_value"][0] == estimate["typicality"]["p_value"]
    assert values["observation.pixel_scale_au"][0] == observation["original"]["pixel_scale_au"]


def test_quick_demo_rerun_skips_every_stage(quick_demo, run_cli):
    out, _, _ = quick_demo
    before = _numbers(out)
    result = run_cli("demo", "--quick", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {s["status"] for s in summary["stages"].values()} == {"skipped"}
    assert summary["estimate"]["mass"]["median"] == before[0]["parameters"]["mass"]["median"]
    assert summary["calibration"]["summary"] == before[1]["summary"]
    assert _numbers(out) == before


def test_report_command_rebuilds_the_report_from_saved_outputs(quick_demo, run_cli):
    from helpers import report_images, report_values

    out, _, _ = quick_demo
    original = (out / "report.html").read_text()
    rebuilt = out / "rebuilt.html"
    result = run_cli("report", out, "--out", rebuilt)
    assert result.exit_code == 0, result.stderr
    text = rebuilt.read_text()
    assert report_values(text) == report_values(original)
    assert report_images(text) == report_images(original)
    assert run_cli("report", out, "--out", rebuilt).exit_code == 2  # exists: refused
    rebuilt.unlink()


def _demo_subprocess(out: Path) -> subprocess.CompletedProcess:
    """``twinsight demo --quick --json`` in a fresh process with 2 threads.

    A fresh process, because the same seed gives the same bits only with the same
    number of threads (float sums are ordered by thread), and this test process runs
    torch on one thread.
    """
    command = [sys.executable, "-c", "from twinsight.cli import main; main()"]
    return subprocess.run(
        [*command, "demo", "--quick", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


def test_quick_demo_same_seed_same_numbers(quick_demo, tmp_path):
    out, _, _ = quick_demo
    proc = _demo_subprocess(tmp_path / "again")
    assert proc.returncode == 0, proc.stderr[-3000:]
    estimate, evaluation = _numbers(out)
    again_estimate, again_evaluation = _numbers(tmp_path / "again")
    assert again_estimate["parameters"] == estimate["parameters"]
    assert again_evaluation["parameters"] == evaluation["parameters"]


def _toy_stages(calls: list[str], seed: int):
    from twinsight.report import LAYOUT

    def write_json(rel: str, data: dict):
        def action(run_dir: Path) -> dict:
            calls.append(rel)
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / rel).write_text(json.dumps(data))
            return {}

        return action

    estimate = {
        "parameters": {
            "mass": {"truth": 1.0, "median": 1.1, "interval_68": [0.9, 1.3], "narrowing": 0.4}
        }
    }
    evaluation = {
        "parameters": {"mass": {"coverage_68": 0.7}},
        "summary": {"systems": 3, "coverage_68": 0.7, "coverage_95": 0.9},
    }
    return [
        Stage(
            "estimate",
            "toy",
            (LAYOUT["estimate"],),
            write_json(LAYOUT["estimate"], estimate),
            {"seed": seed},
        ),
        Stage(
            "evaluate",
            "toy",
            (LAYOUT["calibration"],),
            write_json(LAYOUT["calibration"], evaluation),
            {"seed": seed},
            ("estimate",),
        ),
    ]


def test_demo_command_force_and_summary_table(tmp_path, run_cli, monkeypatch):
    import twinsight.demo as demo_module

    calls: list[str] = []
    monkeypatch.setattr(demo_module, "demo_stages", lambda settings, seed: _toy_stages(calls, seed))
    out = tmp_path / "run"
    result = run_cli("demo", "--quick", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert len(calls) == 2
    assert "mass" in result.stdout and "0.9 – 1.3" in result.stdout and "70.0 %" in result.stdout
    assert "report:" in result.stdout and "report.html" in result.stdout
    assert "✓ estimate" in result.stderr
    result = run_cli("demo", "--quick", "--out", out)
    assert len(calls) == 2 and "skipped" in result.stderr
    result = run_cli("demo", "--quick", "--out", out, "--force")
    assert result.exit_code == 0
    assert len(calls) == 4
    result = run_cli("demo", "--quick", "--out", out, "--seed", "1", "--json")
    assert len(calls) == 6  # another seed: every stage's inputs changed
    assert json.loads(result.stdout)["stages"]["estimate"]["status"] == "ran"


def test_demo_refuses_a_foreign_folder(tmp_path, run_cli):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("demo", "--quick", "--out", tmp_path)
    assert result.exit_code == 2
    assert "not a twinsight demo folder" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demo_stage_graph():
    from twinsight.demo import FULL, QUICK, demo_stages

    stages = demo_stages(QUICK, seed=3)
    names = [s.name for s in stages]
    assert names == ["simulate", "train", "index", "observe", "match", "calibrate", "report"]
    assert all(s.config["seed"] == 3 for s in stages)
    by_name = {s.name: s for s in stages}
    assert set(by_name["match"].depends) == {"simulate", "train", "index", "observe"}
    assert "calibrate" in by_name["report"].depends and "match" in by_name["report"].depends
    assert by_name["simulate"].config["n_systems"] == QUICK.n_systems
    assert FULL.n_systems >= 1000 and FULL.size == 64 and FULL.n_projections == 8
    full = {s.name: s for s in demo_stages(FULL, seed=3)}
    assert full["train"].config != by_name["train"].config
    assert len(FULL.instruments()) == 16 and len(QUICK.instruments()) == 4
    assert full["calibrate"].config["grid_snrs"] == [10.0, 30.0, 100.0, "inf"]
    json.dumps(QUICK.to_dict(), allow_nan=False)  # strict JSON: no Infinity in stages.json


def test_every_demo_setting_enters_a_stage_fingerprint():
    """A setting left out of every stage's config would let a re-run skip a changed stage."""
    from dataclasses import fields, replace

    from twinsight.demo import QUICK, demo_stages
    from twinsight.pipeline import input_fingerprint

    upstream = {"simulate": "s", "train": "t", "index": "i", "observe": "o", "match": "m",
                "calibrate": "c"}  # fmt: skip
    base = {s.name: input_fingerprint(s, upstream) for s in demo_stages(QUICK, 0)}
    for f in fields(QUICK):
        value = getattr(QUICK, f.name)
        changed = {"auto": "none"}.get(value, value) if isinstance(value, str) else value * 2
        if isinstance(value, str) and changed == value:
            changed = value + "-other"
        other = {s.name: input_fingerprint(s, upstream) for s in demo_stages(
            replace(QUICK, **{f.name: changed}), 0)}  # fmt: skip
        assert other != base, f"demo setting '{f.name}' enters no stage fingerprint"


def test_train_stage_fingerprint_covers_augment():
    from dataclasses import replace

    from twinsight.demo import QUICK, demo_stages
    from twinsight.pipeline import input_fingerprint

    def train_fp(settings):
        stage = {s.name: s for s in demo_stages(settings, 0)}["train"]
        return input_fingerprint(stage, {"simulate": "x"})

    assert train_fp(QUICK) != train_fp(replace(QUICK, augment="none"))
