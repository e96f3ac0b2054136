"""Simulated sets: in memory, as the seed-000 per-system HDF5 layout, or one packed file.

Every writer renders system by system with that system's own random streams
(see :mod:`twinsight.simulator.priors`), so the same seed gives bit-identical
images and parameters whichever writer is used and however the work is
batched. Files are written atomically: an interrupted run leaves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinsight.data.collection import Collection
from twinsight.data.packed import h5_create, write_packed
from twinsight.errors import TwinsightError
from twinsight.fsutil import atomic_dir, check_output_path
from twinsight.progress import track
from twinsight.simulator.priors import (
    PARAMETERS,
    STREAM_NOISE,
    UNITS,
    check_count,
    draw_views,
    simulate_systems,
    system_rng,
)
from twinsight.simulator.render import (
    FIELD_OF_VIEW_AU,
    MIN_SIZE,
    NOISE_LEVEL,
    pixel_scale,
    render_system,
)

#: Version of the simulator model; bump it whenever the images of a seed change.
SIMULATOR_VERSION = 1

_ITEM_COLUMNS = ("key", "system", "projection", "inclination", "position_angle")


def check_sizes(n_systems: int, n_projections: int, size: int) -> tuple[int, int, int]:
    """Validate the three counts of a simulation (clear errors for bad values)."""
    return (
        check_count(n_systems, "number of systems (--systems)"),
        check_count(n_projections, "number of projections (--projections)"),
        check_count(size, "image size (--size)", minimum=MIN_SIZE),
    )


def simulation_meta(n_projections: int, size: int, seed: int) -> dict[str, Any]:
    """The ``meta`` dict of a simulated collection: units and how it was made."""
    return {
        "units": dict(UNITS),
        "simulator": {
            "version": SIMULATOR_VERSION,
            "seed": int(seed),
            "n_projections": int(n_projections),
            "size": int(size),
            "field_of_view_au": FIELD_OF_VIEW_AU,
            "pixel_scale_au": pixel_scale(size),
            "noise_level": NOISE_LEVEL,
        },
    }


def _system_views(
    systems: pd.DataFrame, n_projections: int, seed: int, start: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [draw_views(n_projections, seed=seed, index=start + i) for i in range(len(systems))]


def simulation_items(
    systems: pd.DataFrame,
    views: list[tuple[np.ndarray, np.ndarray]],
) -> pd.DataFrame:
    """The items table: one row per (system, projection), projections numbered 1..K."""
    n_projections = len(views[0][0]) if views else 0
    rep = np.repeat(np.arange(len(systems)), n_projections)
    items = systems.iloc[rep].reset_index(drop=True)
    projection = np.tile(np.arange(1, n_projections + 1), len(systems))
    items.insert(0, "key", [f"{s}/{k}" for s, k in zip(items["system"], projection, strict=True)])
    items.insert(2, "projection", projection.astype(np.int64))
    incl = np.concatenate([v[0] for v in views]) if views else np.zeros(0)
    pa = np.concatenate([v[1] for v in views]) if views else np.zeros(0)
    items.insert(3, "inclination", incl)
    items.insert(4, "position_angle", pa)
    return items[[*_ITEM_COLUMNS, *PARAMETERS, "has_companion"]]


def render_systems(
    systems: pd.DataFrame,
    views: list[tuple[np.ndarray, np.ndarray]],
    size: int,
    seed: int,
    *,
    start: int = 0,
    progress: bool = False,
) -> Iterator[np.ndarray]:
    """Yield each system's images [K, S, S] in order (system ``start + i`` for row ``i``)."""
    records = systems.to_dict("records")
    pairs = zip(records, views, strict=True)
    for i, (row, (incl, pa)) in enumerate(
        track(pairs, total=len(records), description="simulating", enabled=progress)
    ):
        rng = system_rng(seed, start + i, STREAM_NOISE)
        yield render_system(row, incl, pa, size, rng)


def simulate_collection(
    n_systems: int, n_projections: int = 8, size: int = 64, seed: int = 0
) -> Collection:
    """An in-memory simulated :class:`Collection` of ``n_systems * n_projections`` images."""
    n_systems, n_projections, size = check_sizes(n_systems, n_projections, size)
    systems = simulate_systems(n_systems, seed=seed)
    views = _system_views(systems, n_projections, seed, 0)
    items = simulation_items(systems, views)
    images = np.concatenate(list(render_systems(systems, views, size, seed)))
    return Collection.from_arrays(
        images,
        items,
        name=f"simulated(seed={seed})",
        param_columns=PARAMETERS,
        meta=simulation_meta(n_projections, size, seed),
    )


def _write_system_file(
    path: Path,
    row: dict[str, Any],
    images: np.ndarray,
    incl: np.ndarray,
    pa: np.ndarray,
    index: int,
    seed: int,
) -> None:
    with h5_create(path) as (f, _):  # a full disk: one clean error, no segfault
        f.attrs["system"] = row["system"]
        f.attrs["index"] = int(index)
        f.attrs["seed"] = int(seed)
        f.attrs["simulator_version"] = SIMULATOR_VERSION
        f.attrs["field_of_view_au"] = FIELD_OF_VIEW_AU
        f.attrs["pixel_scale_au"] = pixel_scale(images.shape[-1])
        f.attrs["units"] = json.dumps(UNITS)
        f.attrs["has_companion"] = bool(row["has_companion"])
        for name in ("companion_separation", "companion_phase", "companion_ratio"):
            f.attrs[name] = float(row[name])
        for k, image in enumerate(images, start=1):
            ds = f.create_dataset(f"intensity_projection_{k}", data=image)
            ds.attrs["inclination"] = float(incl[k - 1])
            ds.attrs["position_angle"] = float(pa[k - 1])
        for name in PARAMETERS:
            ds = f.create_dataset(name, data=np.float64(row[name]))
            ds.attrs["units"] = UNITS[name]


def write_seed_layout(
    out_dir: str | Path,
    n_systems: int,
    n_projections: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the seed-000 layout: a folder with one ``<system>.h5`` per system.

    Each file holds ``intensity_projection_1..K`` ([S, S] float32, attributes
    ``inclination`` and ``position_angle`` in degrees), the seven parameters as
    scalar datasets (attribute ``units``) and the companion as file attributes.
    """
    n_systems, n_projections, size = check_sizes(n_systems, n_projections, size)
    out_dir = Path(out_dir)
    if out_dir.suffix.lower() in (".h5", ".hdf5", ".fits", ".fit"):
        raise TwinsightError(
            f"'{out_dir}' looks like a file name; the seed layout is written to a folder"
        )
    check_output_path(out_dir, overwrite)
    systems = simulate_systems(n_systems, seed=seed)
    views = _system_views(systems, n_projections, seed, 0)
    records = systems.to_dict("records")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        images = render_systems(systems, views, size, seed, progress=progress)
        for i, (row, imgs) in enumerate(zip(records, images, strict=True)):
            incl, pa = views[i]
            _write_system_file(tmp / f"{row['system']}.h5", row, imgs, incl, pa, i, seed)
    return out_dir


def split_by_system(
    systems: Sequence[str], seed: int, val: float = 0.0, test: float = 0.0
) -> list[str]:
    """``train`` / ``val`` / ``test`` per item, whole systems on one side, seeded.

    ``val`` and ``test`` are fractions of the systems (at least one system each when > 0).
    """
    for name, fraction in (("val", val), ("test", test)):
        if not 0.0 <= fraction < 1.0:
            raise TwinsightError(f"the {name} fraction must be in [0, 1), got {fraction}")
    if val + test >= 1.0:
        raise TwinsightError(
            f"val + test fractions must leave systems to train on, got {val} + {test}"
        )
    names = sorted(set(map(str, systems)))
    n_test = max(1, round(test * len(names))) if test > 0 else 0
    n_val = max(1, round(val * len(names))) if val > 0 else 0
    if n_test + n_val >= len(names):
        raise TwinsightError(
            f"cannot split {len(names)} systems into train, {n_val} val and {n_test} test "
            "systems; simulate more systems or lower the fractions"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(names))
    side = {}
    for rank, i in enumerate(order):
        side[names[i]] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
    return [side[str(s)] for s in systems]


def write_packed_simulation(
    out_path: str | Path,
    n_systems: int,
    n_projections: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write one packed HDF5 file (:mod:`twinsight.data.packed`), streaming system by system.

    Only the items table is held in memory; images go to disk as they are rendered.
    With ``val_fraction`` / ``test_fraction`` the items get a ``split`` column
    (``train`` / ``val`` / ``test``, whole systems on one side, seeded), which
    training and evaluation respect.
    """
    n_systems, n_projections, size = check_sizes(n_systems, n_projections, size)
    out_path = Path(out_path)
    check_output_path(out_path, overwrite)
    systems = simulate_systems(n_systems, seed=seed)
    views = _system_views(systems, n_projections, seed, 0)
    items = simulation_items(systems, views)
    if val_fraction or test_fraction:
        items["split"] = split_by_system(items["system"], seed, val_fraction, test_fraction)
    return write_packed(
        out_path,
        items,
        render_systems(systems, views, size, seed, progress=progress),
        (size, size),
        param_columns=PARAMETERS,
        meta=simulation_meta(n_projections, size, seed),
        overwrite=overwrite,
    )


def write_simulation(
    out: str | Path,
    n_systems: int,
    n_projections: int = 8,
    size: int = 64,
    seed: int = 0,
    *,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a simulated set: a packed file when ``out`` ends in ``.h5``, else a folder.

    A ``split`` column (``val_fraction`` / ``test_fraction``) needs the packed file: the
    seed-000 folder layout has no place for it.
    """
    out = Path(out)
    if out.suffix.lower() in (".h5", ".hdf5"):
        return write_packed_simulation(
            out,
            n_systems,
            n_projections,
            size,
            seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            overwrite=overwrite,
            progress=progress,
        )
    if val_fraction or test_fraction:
        raise TwinsightError(
            f"--val-fraction/--test-fraction need a packed output (a .h5 path), not the "
            f"folder '{out}': the seed-000 layout has no split column"
        )
    return write_seed_layout(
        out, n_systems, n_projections, size, seed, overwrite=overwrite, progress=progress
    )
