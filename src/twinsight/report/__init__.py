"""A self-contained HTML report of a best-match run, rebuilt from its saved outputs.

The report is one file, rendered from the jinja2 template ``report.html.j2``
(autoescaped): figures are embedded as base64 PNG, styling is plain inline CSS
(``report.css``), nothing is fetched and no JavaScript runs, so it opens anywhere
(mail attachment, air-gapped laptop, headless browser).

It never recomputes a number: every value shown is read from the run's JSON
outputs (see :data:`LAYOUT`) and formatted with :func:`fmt`. Each table cell
that shows a number also carries the exact JSON value in ``data-value`` so a
test (or a curious reader) can check the two agree.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from twinsight.errors import TwinsightError
from twinsight.fsutil import write_text_atomic

#: Where a run folder keeps what the report reads (paths relative to the run folder).
LAYOUT: dict[str, str] = {
    "stages": "stages.json",
    "observation": "observation/observation.json",
    "estimate": "match/match.json",
    "calibration": "calibration/evaluation.json",
    "training": "train/metrics.json",
    "fig_matches": "figures/matches.png",
    "fig_parameters": "figures/parameters.png",
    "fig_calibration": "figures/coverage.png",
    "fig_recovery": "figures/recovery.png",
    "fig_training": "train/training_curves.png",
    "fig_pairs": "figures/pairs.png",
    "report": "report.html",
}

#: The figures the report embeds, in page order, with their captions.
FIGURES: tuple[tuple[str, str], ...] = (
    ("fig_matches", "The observation (left) beside its best matches, with their similarities."),
    (
        "fig_parameters",
        "Each parameter over the best matches (blue) against the prior over all indexed "
        "simulations (grey); the shaded band is the estimate's 68 % interval, the solid line "
        "its median, the dashed line the true value of the observed system.",
    ),
    (
        "fig_calibration",
        "Calibration on held-out systems: the fraction of systems whose true value falls "
        "inside the estimate's interval, against the interval's nominal level (ideal: the "
        "diagonal).",
    ),
    (
        "fig_recovery",
        "Parameter recovery on held-out systems: best-match median against the true value "
        "(log10 for parameters that span decades).",
    ),
    ("fig_training", "Training curves: training loss and validation metrics per epoch."),
    (
        "fig_pairs",
        "Top, middle and bottom predicted pairs of held-out images, with predicted and true "
        "similarity.",
    ),
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Coverage outside these bands is marked in the instrument table: about what a calibrated
#: estimate gives on the few hundred held-out images of a demo (binomial scatter included).
COVERAGE_BANDS: dict[str, tuple[float, float]] = {
    "coverage_68": (0.60, 0.76),
    "coverage_95": (0.90, 0.98),
}


def fmt(value: Any) -> str:
    """Format one number the way the report shows it (4 significant digits)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    return str(value)


def fmt_percent(value: float | None) -> str:
    """Format a fraction in [0, 1] as a percentage (one decimal)."""
    if value is None:
        return "–"
    return f"{100 * float(value):.1f} %"


def fmt_compact(value: float | None, percent: bool = False) -> str:
    """A number of the wide instrument table: two decimals, or a fraction as a percentage
    with one decimal and no sign (its column heading says %)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.1f}" if percent else f"{float(value):.2f}"


def read_json(path: Path, what: str) -> Any:
    """Read a JSON output of a run; a missing or broken file is a clear TwinsightError."""
    if not path.is_file():
        raise TwinsightError(
            f"{what} '{path}' is missing; re-run `twinsight demo` on this folder to create it"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TwinsightError(
            f"{what} '{path}' is not valid JSON ({exc}); re-run `twinsight demo --force`"
        ) from None


def png_data_uri(path: Path) -> str:
    """Read a PNG file and return it as a ``data:image/png;base64,...`` URI."""
    if not path.is_file():
        raise TwinsightError(
            f"figure '{path}' is missing; re-run `twinsight demo` on this folder to draw it"
        )
    data = path.read_bytes()
    if not data.startswith(_PNG_MAGIC):
        raise TwinsightError(f"figure '{path}' is not a PNG file; re-run `twinsight demo --force`")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _guarded(build: Any, data: dict[str, Any], path: Path) -> Any:
    """Run a row builder; a missing or malformed field becomes a TwinsightError naming it."""
    try:
        return build(data, path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, TwinsightError):
            raise
        raise TwinsightError(
            f"'{path}' lacks or mangles a field the report needs ({type(exc).__name__}: {exc}); "
            "it was written by another version or edited — re-run `twinsight demo --force`"
        ) from None


def _need(data: dict[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise TwinsightError(
            f"'{path}' has no field '{key}'; it was written by another version or edited — "
            "re-run `twinsight demo --force`"
        )
    return data[key]


def _parameters(data: dict[str, Any], path: Path, what: str) -> dict[str, Any]:
    parameters = _need(data, "parameters", path)
    if not isinstance(parameters, dict):
        raise TwinsightError(f"'{path}': 'parameters' should map parameter names to {what}")
    return parameters


def estimate_rows(estimate: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Per parameter: truth, median, 68 % interval, prior 68 %, narrowing, truth inside.

    ``estimate`` is a best-match estimate as written by ``twinsight match``
    (:meth:`twinsight.inference.ParameterEstimate.to_dict`).
    """
    rows = []
    for name, p in _parameters(estimate, path, "statistics").items():
        lo, hi = p["interval_68"]
        plo, phi = p["prior"]["interval_68"]
        rows.append(
            {
                "name": name,
                "truth": p.get("truth"),
                "median": p["median"],
                "interval_68": [lo, hi],
                "prior_68": [plo, phi],
                "narrowing": p["narrowing"],
                "in_68": p.get("in_68"),
                "unit": p.get("unit") or "",
            }
        )
    return rows


def match_rows(estimate: dict[str, Any], path: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The best matches: key, rank, system, similarity."""
    return [
        {"key": str(m["key"]), "rank": m["rank"], "system": str(m.get("system", "")),
         "similarity": m["similarity"]}
        for m in _need(estimate, "matches", path)[:limit]
    ]  # fmt: skip


def calibration_rows(evaluation: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Per parameter: R², RMSE, 68 % and 95 % coverage and narrowing on held-out systems.

    ``evaluation`` is what ``twinsight evaluate`` writes (its ``to_dict()``).
    """
    keys = ("r2", "rmse", "coverage_68", "coverage_95", "narrowing")
    return [
        {"name": name, "scale": str(p.get("scale", "")), **{k: p[k] for k in keys}}
        for name, p in _parameters(evaluation, path, "metrics").items()
    ]


def outside_band(value: Any, level: str) -> bool:
    """Whether a coverage (``level`` ``coverage_68`` or ``coverage_95``) lies outside its
    band in :data:`COVERAGE_BANDS`; a missing value (None, NaN) is not marked."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return False
    lo, hi = COVERAGE_BANDS[level]
    return not lo <= value <= hi


def instrument_rows(evaluation: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Per instrument of the grid (``evaluation["instruments"]``, as ``twinsight evaluate
    --instrument`` writes it): its beam and SNR, per parameter the 68 % / 95 % coverage
    (each with whether it lies outside its band) and R², and the share warned atypical.

    An evaluation without instruments gives no rows (the report then leaves the table out).
    """
    rows = []
    for key, m in (evaluation.get("instruments") or {}).items():
        inst = m["instrument"]
        cells = [
            {
                "name": name,
                "coverage_68": p["coverage_68"],
                "coverage_95": p["coverage_95"],
                "r2": p["r2"],
                "off_68": outside_band(p["coverage_68"], "coverage_68"),
                "off_95": outside_band(p["coverage_95"], "coverage_95"),
            }
            for name, p in m["parameters"].items()
        ]
        rows.append(
            {
                "key": str(key),
                "beam": inst["beam_major"],
                "snr": inst.get("snr"),
                "cells": cells,
                "atypical": m["typicality_warning_rate"],
            }
        )
    return rows


def _derived_row(
    field: str, what: str, value: Any, unit: str, origin: str | None, text: str | None = None
) -> dict[str, Any]:
    return {"field": f"observation.{field}", "what": what, "value": value, "text": text,
            "unit": unit, "origin": origin or "–"}  # fmt: skip


def _derived_rows(observation: dict[str, Any]) -> list[dict[str, Any]]:
    """What the intake derived from the file, each with where it came from (``read`` from
    the header, ``estimated`` from the image, ``given`` by the user)."""
    original = observation.get("original") or {}
    inst = observation.get("instrument") or {}
    origin = inst.get("provenance") or {}
    beam = original.get("beam_arcsec")
    beam_text = None if not beam else f"{fmt(beam[0])} x {fmt(beam[1])} at {fmt(beam[2])} deg"
    noise_unit = original.get("bunit") or "image units"
    return [
        _derived_row("distance_pc", "distance", original.get("distance_pc"), "pc",
                     original.get("distance_from")),
        _derived_row("pixel_scale_au", "pixel scale", original.get("pixel_scale_au"), "AU/px",
                     origin.get("pixel_scale")),
        _derived_row("beam_arcsec", "beam FWHM", beam, "arcsec", origin.get("beam"), beam_text),
        _derived_row("beam_major", "beam FWHM on the library grid", inst.get("beam_major"),
                     "library px", origin.get("beam")),
        _derived_row("noise", "noise sigma", original.get("noise"), noise_unit,
                     origin.get("noise")),
        _derived_row("snr", "peak SNR on the library grid", inst.get("snr"), "",
                     origin.get("noise")),
    ]  # fmt: skip


def observed_instrument(estimate: dict[str, Any], path: Path) -> dict[str, Any]:
    """The observed system's instrument: what its estimate was calibrated for, what the
    intake derived from the file (each value with ``read`` / ``estimated`` / ``given``),
    its typicality and the warnings, from the estimate ``twinsight match`` wrote.
    """
    calibrated_for = estimate.get("calibrated_for")
    observation = estimate.get("observation")
    return {
        "calibrated_for": calibrated_for if isinstance(calibrated_for, dict) else None,
        "calibrated_text": calibrated_for if isinstance(calibrated_for, str) else None,
        "derived": _derived_rows(observation) if observation else [],
        "notes": list((observation or {}).get("notes") or []),
        "typicality": estimate.get("typicality"),
        "warnings": list(estimate.get("warnings") or []),
    }


def _run_meta(stages: dict[str, Any] | None, observation: dict[str, Any]) -> list[tuple[str, Any]]:
    run = (stages or {}).get("run", {})
    items = [
        ("seed", run.get("seed", "")),
        ("mode", ("quick" if run.get("quick") else "full") if run else ""),
        ("twinsight", run.get("version", "")),
        ("observed system", observation.get("system", "")),
        ("observation", observation.get("fits", "")),
        ("beam FWHM (px)", observation.get("beam_fwhm", "")),
        ("peak SNR", observation.get("snr", "")),
        ("inclination (deg)", observation.get("inclination", "")),
    ]
    return [(k, v) for k, v in items if v != ""]


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["percent"] = fmt_percent
    env.filters["compact"] = fmt_compact
    env.filters["tojson_value"] = json.dumps
    return env


def render_report(run_dir: str | Path) -> str:
    """Render the report of ``run_dir`` as an HTML string (reads its JSON and PNG outputs)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TwinsightError(
            f"run folder '{run_dir}' does not exist; run `twinsight demo --out {run_dir}` first"
        )
    paths = {key: run_dir / rel for key, rel in LAYOUT.items()}
    stages = read_json(paths["stages"], "stage record") if paths["stages"].is_file() else None
    observation = read_json(paths["observation"], "observation record")
    estimate = read_json(paths["estimate"], "parameter estimate")
    calibration = read_json(paths["calibration"], "calibration record")
    training = read_json(paths["training"], "training history")
    context = {
        "css": (Path(__file__).parent / "report.css").read_text(),
        "meta": _run_meta(stages, observation),
        "figures": {
            key: {"uri": png_data_uri(paths[key]), "caption": caption} for key, caption in FIGURES
        },
        "matches": _guarded(match_rows, estimate, paths["estimate"]),
        "estimate": _guarded(estimate_rows, estimate, paths["estimate"]),
        "n_matches": estimate.get("n_matches", len(estimate.get("matches", []))),
        "calibration": _guarded(calibration_rows, calibration, paths["calibration"]),
        "instruments": _guarded(instrument_rows, calibration, paths["calibration"]),
        "bands": COVERAGE_BANDS,
        "observed": _guarded(observed_instrument, estimate, paths["estimate"]),
        "evaluated_items": calibration.get("items"),
        "summary": calibration.get("summary", {}),
        "training": list(training.get("final", {}).items()),
        "written": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "run_dir": str(run_dir),
    }
    return _environment().get_template("report.html.j2").render(context)


def build_report(
    run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False
) -> Path:
    """Write the self-contained report of ``run_dir``; returns its path.

    The default output, ``run_dir/report.html``, is derived from the run's
    outputs and is always rewritten; an explicit ``out`` that already exists is
    refused unless ``overwrite``.
    """
    run_dir = Path(run_dir)
    default = out is None
    out = run_dir / LAYOUT["report"] if default else Path(out)
    text = render_report(run_dir)
    return write_text_atomic(out, text, overwrite=overwrite or default)
