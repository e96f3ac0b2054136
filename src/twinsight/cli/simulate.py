"""CLI commands: ``simulate`` (a simulated set) and ``observe`` (one FITS observation).

See :mod:`twinsight.simulator` for the model; these commands only parse, call it and print.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from twinsight.cli._app import app, console, print_json
from twinsight.errors import TwinsightError

_FITS_SUFFIXES = (".fits", ".fit", ".fts")


def _parse_params(values: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` options into a dict (values checked by the simulator)."""
    params: dict[str, float] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise TwinsightError(f"--param '{text}': expected NAME=VALUE, e.g. disk_size=150")
        try:
            params[name.strip()] = float(value)
        except ValueError:
            raise TwinsightError(f"--param '{text}': value '{value}' is not a number") from None
    return params


def _run_observe(
    out: Path,
    *,
    params: dict[str, float],
    seed: int,
    size: int,
    snr: float,
    beam: float,
    inclination: float | None,
    position_angle: float | None,
    flux_scale: float | None,
    overwrite: bool,
    json_out: bool,
) -> None:
    from twinsight.api import observe as write_observation

    truth = write_observation(
        out,
        params,
        seed=seed,
        size=size,
        inclination=inclination,
        position_angle=position_angle,
        snr=snr,
        beam_fwhm=beam,
        flux_scale=flux_scale,
        overwrite=overwrite,
    )
    if json_out:
        print_json(truth)
        return
    console.print(
        f"wrote observation {out} ({size}x{size}, inclination {truth['inclination']:.1f} deg, "
        f"SNR {snr:g}, beam {beam:g} px); true parameters in its FITS header (TRUE_<name>)"
    )


@app.command()
def simulate(
    out: Path = typer.Argument(
        ...,
        help="Output: a folder (one <system>.h5 per system), a .h5 file (packed), "
        "or a .fits file with --observe.",
    ),
    systems: int = typer.Option(200, "--systems", "-n", help="Number of systems."),
    projections: int = typer.Option(8, "--projections", "-k", help="Viewing angles per system."),
    size: int = typer.Option(64, "--size", help="Image size in pixels (>= 16)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bits."),
    observe: bool = typer.Option(
        False, "--observe", help="Write one FITS observation instead (same as `twinsight observe`)."
    ),
    snr: float = typer.Option(30.0, "--snr", help="With --observe: peak signal-to-noise ratio."),
    beam: float = typer.Option(2.0, "--beam", help="With --observe: beam FWHM in pixels."),
    val_fraction: float = typer.Option(
        0.0, "--val-fraction", help="Packed output: share of systems marked split=val."
    ),
    test_fraction: float = typer.Option(
        0.0, "--test-fraction", help="Packed output: share of systems marked split=test."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    json_out: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
) -> None:
    """Simulate protostellar systems: seed-000 HDF5 folder, packed .h5, or --observe FITS."""
    from twinsight.api import simulate as write_simulation

    if out.suffix.lower() in _FITS_SUFFIXES or observe:
        if not observe:
            raise TwinsightError(
                f"'{out}' is a FITS path: add --observe (or use `twinsight observe {out}`) to "
                "write one observation; a simulated set goes to a folder or a .h5 file"
            )
        _run_observe(
            out,
            params={},
            seed=seed,
            size=size,
            snr=snr,
            beam=beam,
            inclination=None,
            position_angle=None,
            flux_scale=None,
            overwrite=overwrite,
            json_out=json_out,
        )
        return
    start = time.perf_counter()
    write_simulation(
        out,
        n_systems=systems,
        n_projections=projections,
        size=size,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        overwrite=overwrite,
        progress=not json_out,
    )
    seconds = time.perf_counter() - start
    path = out
    layout = "packed" if path.suffix.lower() in (".h5", ".hdf5") else "seed-layout"
    summary = {
        "path": str(path),
        "layout": layout,
        "systems": systems,
        "projections": projections,
        "images": systems * projections,
        "size": size,
        "seed": seed,
        "seconds": round(seconds, 3),
    }
    if json_out:
        print_json(summary)
        return
    console.print(
        f"wrote {summary['images']} images ({size}x{size}) of {systems} systems to {path} "
        f"({layout}) in {seconds:.1f} s"
    )


@app.command()
def observe(
    out: Path = typer.Argument(..., help="Output FITS file."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the observed system."),
    size: int = typer.Option(64, "--size", help="Image size in pixels (>= 16)."),
    snr: float = typer.Option(30.0, "--snr", help="Peak signal-to-noise ratio."),
    beam: float = typer.Option(2.0, "--beam", help="Beam FWHM in pixels (0: no convolution)."),
    inclination: float | None = typer.Option(
        None, "--inclination", help="Inclination in degrees (default: drawn, cos i uniform)."
    ),
    position_angle: float | None = typer.Option(
        None, "--pa", help="Position angle in degrees (default: drawn uniformly)."
    ),
    flux_scale: float | None = typer.Option(
        None, "--flux-scale", help="Flux scale factor (default: drawn log-uniform 0.1-10)."
    ),
    param: list[str] = typer.Option(
        [], "--param", help="Fix a parameter, NAME=VALUE (repeatable), e.g. disk_size=150."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    json_out: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
) -> None:
    """Write one simulated telescope observation (FITS; true parameters in its header)."""
    _run_observe(
        out,
        params=_parse_params(param),
        seed=seed,
        size=size,
        snr=snr,
        beam=beam,
        inclination=inclination,
        position_angle=position_angle,
        flux_scale=flux_scale,
        overwrite=overwrite,
        json_out=json_out,
    )
