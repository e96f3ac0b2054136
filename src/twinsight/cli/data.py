"""CLI commands: ``info`` and ``pack`` (:func:`twinsight.api.info`, :func:`twinsight.api.pack`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from twinsight.cli._app import app, console, err_console, print_json

_SOURCE_HELP = (
    "A folder (one sub-folder per class, or per-system .h5 files), a .csv/.parquet table, "
    "an .h5 file, a FITS file, or a built-in name (digits, mnist5k, protostars, mnist, "
    "fashion-mnist, cifar10)."
)


@app.command()
def info(
    source: str = typer.Argument(..., help=_SOURCE_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
    image_size: int | None = typer.Option(
        None, "--image-size", min=1, help="Resize every image to NxN (needed for mixed sizes)."
    ),
    hdu: str | None = typer.Option(None, "--hdu", help="FITS HDU to read (name or number)."),
) -> None:
    """Describe a collection: items, shape, labels, parameters.

    Prints a table, or with --json only JSON (keys: source, n_items, image_shape, dtype,
    labels, parameters, n_systems, n_projections, splits).
    """
    from twinsight.api import info as describe

    summary = describe(source, image_size=image_size, hdu=hdu).to_dict()
    if json_output:
        print_json(summary)
        return
    _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    overview = Table(title=f"{summary['source']}", show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("value")
    overview.add_row("items", f"{summary['n_items']:,}")
    c, h, w = summary["image_shape"]
    overview.add_row("image shape (C, H, W)", f"{c} x {h} x {w}, {summary['dtype']}")
    if summary["n_systems"] is not None:
        overview.add_row("systems", f"{summary['n_systems']:,}")
    if summary.get("n_projections") is not None:
        overview.add_row("projections", f"{summary['n_projections']:,}")
    for name, count in summary["splits"].items():
        overview.add_row(f"split '{name}'", f"{count:,}")
    console.print(overview)
    if summary["labels"]:
        labels = Table(title="labels")
        labels.add_column("class")
        labels.add_column("items", justify="right")
        for name, count in summary["labels"].items():
            labels.add_row(name, f"{count:,}")
        console.print(labels)
    if summary["parameters"]:
        params = Table(title="parameters")
        for column in ("parameter", "min", "median", "max"):
            params.add_column(column, justify="left" if column == "parameter" else "right")
        for name, stats in summary["parameters"].items():
            params.add_row(name, *(f"{stats[k]:.4g}" for k in ("min", "median", "max")))
        console.print(params)


@app.command()
def pack(
    source: str = typer.Argument(..., help=_SOURCE_HELP),
    out: Path = typer.Argument(..., help="The packed HDF5 file to write (e.g. data.h5)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    image_size: int | None = typer.Option(
        None, "--image-size", min=1, help="Resize every image to NxN while packing."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images read per batch."),
    hdu: str | None = typer.Option(None, "--hdu", help="FITS HDU to read (name or number)."),
) -> None:
    """Pack any collection into one HDF5 file (the fast path).

    Written atomically: an existing OUT is refused unless --overwrite, and a failure
    midway leaves no partial file.
    """
    from twinsight.api import pack as pack_source

    packed = pack_source(
        source, out, overwrite=overwrite, image_size=image_size, batch_size=batch_size, hdu=hdu
    )
    c, h, w = packed.image_shape
    err_console.print(f"packed {len(packed):,} images of {c}x{h}x{w} into {out}")
