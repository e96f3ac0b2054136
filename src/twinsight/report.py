"""A self-contained HTML report of a best-match run, rebuilt from its saved outputs.

The report is one file: figures are embedded as base64 PNG, styling is plain
inline CSS, nothing is fetched and no JavaScript runs, so it opens anywhere
(mail attachment, air-gapped laptop, headless browser).

It never recomputes a number: every value shown is read from the run's JSON
outputs (see :data:`LAYOUT`) and formatted with :func:`fmt`. Each table cell
that shows a number also carries the exact JSON value in ``data-value`` so a
test (or a curious reader) can check the two agree.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Iterable, Sequence
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

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0;
       color: #1f2328; background: #f6f8fa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
p.lead { color: #57606a; margin-top: 0; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th { background: #f6f8fa; }
td.name, th.name { text-align: left; font-family: ui-monospace, Menlo, monospace; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px;
          font-size: 14px; }
dl.meta dt { color: #57606a; }
dl.meta dd { margin: 0; font-family: ui-monospace, Menlo, monospace; }
.ok { color: #1a7f37; } .warn { color: #9a6700; }
footer { color: #57606a; font-size: 12px; margin-top: 32px; }
"""


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


def _value_tag(tag: str, value: Any, field: str | None, text: str | None, cls: str = "") -> str:
    attrs = ""
    if field is not None:
        attrs += f' data-field="{html.escape(field)}" data-value="{html.escape(json.dumps(value))}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<{tag}{attrs}>{html.escape(fmt(value) if text is None else text)}</{tag}>"


def _cell(value: Any, field: str | None = None, text: str | None = None, cls: str = "") -> str:
    return _value_tag("td", value, field, text, cls)


def _table(header: Sequence[str], rows: Iterable[str]) -> str:
    head = "".join(
        f'<th class="name">{html.escape(h)}</th>' if i == 0 else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "\n".join(f"<tr>{row}</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _figure(uri: str, caption: str, key: str) -> str:
    return (
        f'<figure id="{key}"><img src="{uri}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _guarded(build: Any, data: dict[str, Any], path: Path) -> str:
    """Run a table builder; a missing or malformed field becomes a TwinsightError naming it."""
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


def estimate_table(estimate: dict[str, Any], path: Path) -> str:
    """The summary table: per parameter truth, median, 68 % interval, prior, narrowing.

    ``estimate`` is a best-match estimate as written by ``twinsight match``
    (:meth:`twinsight.inference.ParameterEstimate.to_dict`).
    """
    rows = []
    parameters = _need(estimate, "parameters", path)
    if not isinstance(parameters, dict):
        raise TwinsightError(f"'{path}': 'parameters' should map parameter names to statistics")
    for name, p in parameters.items():
        lo, hi = p["interval_68"]
        plo, phi = p["prior"]["interval_68"]
        inside = p.get("in_68")
        rows.append(
            f'<td class="name">{html.escape(name)}</td>'
            + _cell(p.get("truth"), f"estimate.{name}.truth")
            + _cell(p["median"], f"estimate.{name}.median")
            + _cell([lo, hi], f"estimate.{name}.interval_68", f"[{fmt(lo)}, {fmt(hi)}]")
            + _cell([plo, phi], f"estimate.{name}.prior_68", f"[{fmt(plo)}, {fmt(phi)}]")
            + _cell(p["narrowing"], f"estimate.{name}.narrowing")
            + _cell(
                inside,
                f"estimate.{name}.in_68",
                cls="ok" if inside else ("warn" if inside is False else ""),
            )
            + _cell(p.get("unit") or "", text=p.get("unit") or "", cls="name")
        )
    header = [
        "parameter",
        "truth",
        "median",
        "68 % interval",
        "prior 68 %",
        "narrowing",
        "truth in 68 %",
        "unit",
    ]
    return _table(header, rows)


def matches_table(estimate: dict[str, Any], path: Path, limit: int = 10) -> str:
    """The best matches: rank, key, system, similarity."""
    rows = []
    for m in _need(estimate, "matches", path)[:limit]:
        rank = m["rank"]
        rows.append(
            f'<td class="name">{html.escape(str(m["key"]))}</td>'
            + _cell(rank)
            + _cell(str(m.get("system", "")), text=str(m.get("system", "")))
            + _cell(m["similarity"], f"matches.{rank}.similarity")
        )
    return _table(["key", "rank", "system", "similarity"], rows)


def calibration_table(evaluation: dict[str, Any], path: Path) -> str:
    """Per-parameter R², RMSE, 68 % and 95 % coverage and narrowing on held-out systems.

    ``evaluation`` is what ``twinsight evaluate`` writes
    (:func:`twinsight.evaluate.evaluate`, its JSON part).
    """
    parameters = _need(evaluation, "parameters", path)
    if not isinstance(parameters, dict):
        raise TwinsightError(f"'{path}': 'parameters' should map parameter names to metrics")
    rows = []
    for name, p in parameters.items():
        rows.append(
            f'<td class="name">{html.escape(name)}</td>'
            + _cell(p.get("scale", ""), text=str(p.get("scale", "")))
            + _cell(p["r2"], f"calibration.{name}.r2")
            + _cell(p["rmse"], f"calibration.{name}.rmse")
            + _cell(
                p["coverage_68"], f"calibration.{name}.coverage_68", fmt_percent(p["coverage_68"])
            )
            + _cell(
                p["coverage_95"], f"calibration.{name}.coverage_95", fmt_percent(p["coverage_95"])
            )
            + _cell(p["narrowing"], f"calibration.{name}.narrowing")
        )
    header = ["parameter", "scale", "R²", "RMSE", "68 % coverage", "95 % coverage", "narrowing"]
    return _table(header, rows)


def _meta_list(items: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(fmt(v))}</dd>" for k, v in items if v != ""
    )
    return f'<dl class="meta">{body}</dl>'


def _run_meta(stages: dict[str, Any] | None, observation: dict[str, Any]) -> str:
    run = (stages or {}).get("run", {})
    return _meta_list(
        [
            ("seed", run.get("seed", "")),
            ("mode", ("quick" if run.get("quick") else "full") if run else ""),
            ("twinsight", run.get("version", "")),
            ("observed system", observation.get("system", "")),
            ("observation", observation.get("fits", "")),
            ("beam FWHM (px)", observation.get("beam_fwhm", "")),
            ("peak SNR", observation.get("snr", "")),
            ("inclination (deg)", observation.get("inclination", "")),
        ]
    )


def _calibration_intro(evaluation: dict[str, Any]) -> str:
    summary = evaluation.get("summary", {})
    systems = summary.get("systems")
    text = (
        f"<p>{html.escape(fmt(evaluation.get('items')))} images of "
        f"{html.escape(fmt(systems))} held-out systems, never seen in training nor in the "
        "index, each matched without its own system. A calibrated estimate holds the true "
        "value inside its 68 % interval about 68 % of the time."
    )
    if "coverage_68" in summary:
        text += " Mean coverage over the parameters: " + _value_tag(
            "b",
            summary["coverage_68"],
            "calibration.summary.coverage_68",
            fmt_percent(summary["coverage_68"]),
        )
        text += " (68 % intervals), " + _value_tag(
            "b",
            summary["coverage_95"],
            "calibration.summary.coverage_95",
            fmt_percent(summary["coverage_95"]),
        )
        text += " (95 % intervals)."
    return text + "</p>"


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
    figures = {key: _figure(png_data_uri(paths[key]), caption, key) for key, caption in FIGURES}

    n_matches = estimate.get("n_matches", len(estimate.get("matches", [])))
    final = training.get("final", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>twinsight best-match report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>twinsight best-match report</h1>",
        '<p class="lead">A Siamese network trained on simulated protostellar systems finds the '
        "simulations that most resemble an observation; the parameters of those best matches "
        "estimate the observed system's parameters. Held-out systems show whether the "
        "estimate is honest.</p>",
        _run_meta(stages, observation),
        "<h2>1. The observation and its best matches</h2>",
        figures["fig_matches"],
        _guarded(matches_table, estimate, paths["estimate"]),
        "<h2>2. The parameter estimate</h2>",
        f"<p>Distributions over the best {html.escape(fmt(n_matches))} matches against the "
        "prior (all indexed simulations). Narrowing = width of the estimate's 68 % interval "
        "divided by the width of the prior's (smaller is sharper; 1 means nothing learned). "
        "Quantiles are taken in log10 for parameters that span decades.</p>",
        figures["fig_parameters"],
        _guarded(estimate_table, estimate, paths["estimate"]),
        "<h2>3. Is the estimate honest? Calibration on held-out systems</h2>",
        _calibration_intro(calibration),
        figures["fig_calibration"],
        _guarded(calibration_table, calibration, paths["calibration"]),
        figures["fig_recovery"],
        "<h2>4. Training</h2>",
        figures["fig_training"],
        _meta_list([(k, v) for k, v in final.items()]),
        "<h2>5. Predicted pairs</h2>",
        figures["fig_pairs"],
        f"<footer>Written {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} from "
        f"the outputs in {html.escape(str(run_dir))} by <code>twinsight report</code>.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


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
