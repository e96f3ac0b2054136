"""CLI commands: ``demo`` (the whole best-match pipeline) and ``report`` (rebuild the HTML).

Thin wrappers over :func:`twinsight.demo.run_demo` and
:func:`twinsight.report.build_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from twinsight.cli._app import app, console, err_console, print_json


def _fmt(value: Any) -> str:
    """Three significant digits: the terminal summary is short; the report has four."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return "–" if value is None else str(value)


def summary_table(estimate: dict[str, Any], calibration: dict[str, Any]) -> Table:
    """Per parameter: truth, median, 68 % interval, narrowing (width / prior width), coverage.

    ``coverage`` is the held-out systems' 68 % coverage of that parameter.
    """
    coverage = calibration.get("parameters", {})
    table = Table(
        title="best-match estimate of the observed system", title_justify="left", box=box.SIMPLE
    )
    table.add_column("parameter", no_wrap=True)
    for column in ("truth", "median", "68 % interval", "narrowing", "coverage"):
        table.add_column(column, justify="right")
    for name, p in estimate.get("parameters", {}).items():
        cov = coverage.get(name, {}).get("coverage_68")
        lo, hi = p["interval_68"]
        table.add_row(
            name,
            _fmt(p.get("truth")),
            _fmt(p["median"]),
            f"{_fmt(lo)} – {_fmt(hi)}",
            _fmt(p["narrowing"]),
            "–" if cov is None else f"{100 * cov:.1f} %",
        )
    return table


def _stage_printer(name: str, status: str, seconds: float) -> None:
    if status == "start":
        err_console.print(f"[bold]▶ {name}[/]")
    elif status == "ran":
        err_console.print(f"[green]✓ {name}[/] ({seconds:.1f} s)")
    else:
        err_console.print(f"[dim]✓ {name} (up to date, skipped)[/]")


@app.command()
def demo(
    out: Path = typer.Option(Path("twinsight-demo"), "--out", "-o", help="Run folder."),
    quick: bool = typer.Option(False, "--quick", help="A small set and few epochs (< 90 s)."),
    force: bool = typer.Option(False, "--force", help="Re-run every stage, even up-to-date ones."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulation, split and training."),
    json_out: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
) -> None:
    """Run the whole best-match pipeline on simulations and write OUT/report.html.

    Simulate a seeded set of protostellar systems, train a model with
    parameter targets, index the training systems, observe a held-out system
    (FITS: beam, noise), match it, check the estimate's calibration on the
    held-out systems, and write a self-contained HTML report. A re-run skips
    the stages that are up to date.
    """
    from twinsight.demo import run_demo

    result = run_demo(out, quick=quick, force=force, seed=seed, on_event=_stage_printer)
    if json_out:
        print_json(result.to_dict())
        return
    console.print(summary_table(result.estimate, result.calibration))
    cal = result.calibration.get("summary", {})
    if "coverage_68" in cal:
        console.print(
            f"held-out calibration ({cal.get('systems')} systems): the truth falls in the 68 % "
            f"interval {100 * cal['coverage_68']:.1f} % of the time, in the 95 % interval "
            f"{100 * cal['coverage_95']:.1f} %"
        )
    console.print(f"report: [bold]{result.report}[/]")


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run folder written by `twinsight demo`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Default: RUN/report.html."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    json_out: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
) -> None:
    """Rebuild the self-contained HTML report of RUN from its saved JSON and figures."""
    from twinsight.report import build_report

    path = build_report(run, out, overwrite=overwrite)
    if json_out:
        print_json({"report": str(path)})
    else:
        console.print(f"report: [bold]{path}[/]")
