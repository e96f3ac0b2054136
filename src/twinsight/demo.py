"""The end-to-end demo: simulate, train, index, observe, match, calibrate, report.

:func:`run_demo` is what ``twinsight demo`` calls. It chains the façade's
functions (:mod:`twinsight.api`, the ones the individual commands call; no
special path), as :class:`~twinsight.pipeline.Stage` objects run by
:func:`~twinsight.pipeline.run_stages`, which skips the stages that are up to date:

1. ``simulate``    a seeded set of protostellar systems, written packed (.h5)
2. ``train``       a model with parameter targets (train/val split by system)
3. ``index``       a similarity index over the training + validation systems
4. ``observe``     one held-out system rendered as a FITS observation: a celestial WCS at
                   140 pc, the beam in BMAJ/BMIN/BPA, noise
5. ``match``       the observation matched as an archive file would be: the intake derives
                   its pixel scale, beam and noise from the header and brings it onto the
                   library's grid; the estimate is calibrated for that instrument
6. ``calibrate``   the estimate on every held-out test system: R², coverage, clean and
                   through each instrument of a grid (beam x SNR)
7. ``report``      the self-contained ``report.html``
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinsight import api
from twinsight.errors import TwinsightError
from twinsight.fsutil import write_text_atomic
from twinsight.index import FILES as INDEX_FILES
from twinsight.instrument import Instrument, instrument_grid
from twinsight.io import dumps
from twinsight.pipeline import EventHook, Stage, StageResult, run_stages
from twinsight.report import LAYOUT, build_report, read_json

log = logging.getLogger(__name__)


# -- the demo pipeline ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSettings:
    """Everything that sets what the demo computes (all of it enters the fingerprints)."""

    n_systems: int
    n_projections: int
    size: int
    test_fraction: float
    val_fraction: float
    epochs: int
    batch_size: int
    encoder: str
    embedding_dim: int
    lr: float
    kernel: str
    width: float
    beam_fwhm: float
    snr: float
    n_shown: int
    augment: str = "auto"  # parameters: the instrument augmentation
    #: The instrument grid the calibrate stage measures coverage through: beams (FWHM,
    #: library pixels) x peak SNRs (``inf``: no added noise).
    grid_beams: tuple[float, ...] = (0.0, 2.0)
    grid_snrs: tuple[float, ...] = (30.0, math.inf)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (an infinite SNR as ``"inf"``, so the JSON stays strict)."""
        from dataclasses import asdict

        out = asdict(self)
        out["grid_beams"] = [float(b) for b in self.grid_beams]
        out["grid_snrs"] = [_snr_json(v) for v in self.grid_snrs]
        return out

    def instruments(self) -> list[Instrument]:
        """The calibrate stage's instrument grid (every beam with every SNR)."""
        return instrument_grid(self.grid_beams, self.grid_snrs)


def _snr_json(value: float) -> float | str:
    return "inf" if math.isinf(value) else float(value)


#: The full demo: 1,000 systems (enough for the calibration target), 8 views at 64 x 64.
FULL = DemoSettings(
    n_systems=1000,
    n_projections=8,
    size=64,
    test_fraction=0.1,
    val_fraction=0.1,
    epochs=6,
    batch_size=128,
    encoder="small-cnn",
    embedding_dim=64,
    lr=3e-3,
    kernel="rbf",
    width=1.0,
    beam_fwhm=2.0,
    snr=30.0,
    n_shown=11,
    grid_beams=(0.0, 1.0, 2.0, 3.0),
    grid_snrs=(10.0, 30.0, 100.0, math.inf),
)

#: The quick demo (well under 90 s on two cores): a small set, small images, few epochs, and
#: a 2 x 2 instrument grid.
QUICK = DemoSettings(
    n_systems=150,
    n_projections=4,
    size=32,
    test_fraction=0.15,
    val_fraction=0.15,
    epochs=3,
    batch_size=64,
    encoder="small-cnn",
    embedding_dim=32,
    lr=3e-3,
    kernel="rbf",
    width=1.0,
    beam_fwhm=1.5,
    snr=30.0,
    n_shown=11,
    grid_beams=(0.0, 2.0),
    grid_snrs=(30.0, math.inf),
)

#: Paths inside a demo folder (the report's inputs are in :data:`twinsight.report.LAYOUT`).
DATA_FILE = "data/simulations.h5"
TRAIN_DIR = "train"
INDEX_DIR = "index"
OBSERVATION_FITS = "observation/observation.fits"
FIGURES_DIR = "figures"
#: The observed system's distance (pc): it sets the FITS file's WCS in degrees, and the match
#: stage gives it as a user would, so the intake turns the WCS into AU per pixel.
DISTANCE_PC = 140.0


def _simulate(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 1: the simulated set, packed, with a ``split`` column (whole systems per side).

    The same as ``twinsight simulate out.h5 --systems N --projections K --size S
    --seed SEED --val-fraction V --test-fraction T``.
    """
    sims = api.simulate(
        run_dir / DATA_FILE,
        n_systems=s.n_systems,
        n_projections=s.n_projections,
        size=s.size,
        seed=seed,
        val_fraction=s.val_fraction,
        test_fraction=s.test_fraction,
        overwrite=True,
        progress=True,
    )
    per_split = sims.items.groupby("split")["system"].nunique()
    return {"images": len(sims), "systems": {k: int(v) for k, v in per_split.items()}}


def _train(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 2: ``twinsight train`` with parameter targets on the train/val systems."""
    from twinsight.data.schema import SIMULATOR_PARAMETERS

    run = api.train(
        run_dir / DATA_FILE,
        run_dir / TRAIN_DIR,
        overwrite=True,
        targets="params",
        log10=list(SIMULATOR_PARAMETERS),  # all seven span one to four decades
        kernel=s.kernel,
        width=s.width,
        encoder=s.encoder,
        embedding_dim=s.embedding_dim,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        seed=seed,
        early_stopping=0,
        num_workers=0,
        augment=s.augment,
    )
    return {
        "model_fingerprint": run.bundle.fingerprint,
        "metrics": run.bundle.training.get("metrics"),
    }


def _index(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 3: ``twinsight index`` over the training and validation systems (never test).

    Its outputs are the index's own files: the per-instrument calibrations that matching
    caches in the same folder (``calibrations/``) are not part of them, so a re-run does
    not take the cache for a changed index.
    """
    sims = api.open_collection(run_dir / DATA_FILE)
    pool = sims.subset(np.isin(sims.items["split"].astype(str).to_numpy(), ["train", "val"]))
    index = api.build_index(run_dir / TRAIN_DIR / "model", pool, progress=True)
    index.save(run_dir / INDEX_DIR, overwrite=True)
    return {"items": len(index), "model_fingerprint": index.model_fingerprint}


def observed_system(items: Any, seed: int) -> str:
    """The held-out (test) system the demo observes: one drawn with the seed."""
    test = sorted(set(items.loc[items["split"].astype(str) == "test", "system"].astype(str)))
    if not test:
        raise TwinsightError("the simulated set has no test systems to observe")
    return test[int(np.random.default_rng([seed, 11]).integers(len(test)))]


def _observe(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 4: ``twinsight observe`` of one held-out system (beam, noise, new viewing angle).

    The FITS file is what an archive would give: a celestial WCS at :data:`DISTANCE_PC`,
    the beam in BMAJ/BMIN/BPA, the noise. Its ``TRUE_`` keys only let the report show the
    truth; matching never reads them.
    """
    from twinsight.data.schema import SIMULATOR_PARAMETERS

    items = api.open_collection(run_dir / DATA_FILE).items
    system = observed_system(items, seed)
    row = items[items["system"].astype(str) == system].iloc[0]
    params = {p: float(row[p]) for p in SIMULATOR_PARAMETERS}
    truth = api.observe(
        run_dir / OBSERVATION_FITS,
        params,
        seed=seed,
        size=s.size,
        snr=s.snr,
        beam_fwhm=s.beam_fwhm,
        distance=DISTANCE_PC,
        overwrite=True,
    )
    record = {
        "system": system,
        "fits": OBSERVATION_FITS,
        "truth": params,
        **{k: v for k, v in truth.items() if k not in params and k != "path"},
    }
    write_text_atomic(run_dir / LAYOUT["observation"], json.dumps(record, indent=2) + "\n")
    return {"system": system}


def _match(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 5: ``twinsight match OBS --distance 140``: best matches, parameter estimate.

    The observation is matched as a user would match an archive file: the intake reads its
    pixel scale (WCS and the distance), beam and noise from the header, brings it onto the
    library's grid, and the estimate is calibrated for the instrument it finds. The matches
    shown are those of the same regridded image.
    """
    index = api.load_index(run_dir / INDEX_DIR)
    model = run_dir / TRAIN_DIR / "model"
    observation = str(run_dir / OBSERVATION_FITS)
    estimate = api.match(index, observation, model=model, distance=DISTANCE_PC)
    estimate.query = OBSERVATION_FITS
    if estimate.observation is not None:
        estimate.observation["source"] = OBSERVATION_FITS  # relative: the same in every folder
    write_text_atomic(
        run_dir / LAYOUT["estimate"], dumps(estimate.to_dict(with_values=True)) + "\n"
    )
    shown = api.search(index, observation, s.n_shown, model=model, distance=DISTANCE_PC)
    shown.plot(run_dir / LAYOUT["fig_matches"], query_names=["observation"], caption="system")
    estimate.plot(run_dir / LAYOUT["fig_parameters"])
    return {
        "n_matches": estimate.n_matches,
        "calibrated": estimate.calibrated,
        "calibrated_for": (estimate.instrument or {}).get("key"),
    }


def _calibrate(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 6: ``twinsight evaluate`` on the held-out test systems: R², coverage, pairs,
    clean and through each instrument of the settings' grid (under ``instruments``).

    The summary keeps the clean coverage figures; the report shows the grid.
    """
    result = api.evaluate(
        run_dir / TRAIN_DIR / "model",
        run_dir / DATA_FILE,
        split="test",
        seed=seed,
        progress=True,
        instruments=s.instruments(),
    )
    data = result.to_dict()
    params = data.get("parameters") or {}
    items = result.collection.items
    data["summary"] = {
        "systems": int(items.loc[items["split"].astype(str) == "test", "system"].nunique()),
        "coverage_68": float(np.mean([p["coverage_68"] for p in params.values()])),
        "coverage_95": float(np.mean([p["coverage_95"] for p in params.values()])),
    }
    write_text_atomic(run_dir / LAYOUT["calibration"], dumps(data) + "\n")
    result.plot(run_dir / FIGURES_DIR)
    return data["summary"]


def _report(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 7: the self-contained HTML report, from the JSON and PNG outputs above."""
    return {"report": str(build_report(run_dir))}


def demo_stages(settings: DemoSettings, seed: int) -> list[Stage]:
    """The seven stages of the demo, with their configs, outputs and dependencies."""
    from functools import partial

    cfg = settings.to_dict()

    def stage(
        name: str,
        description: str,
        outputs: list[str],
        fn: Callable[..., dict[str, Any]],
        keys: list[str],
        depends: tuple[str, ...] = (),
    ) -> Stage:
        config = {k: cfg[k] for k in keys} | {"seed": seed}
        return Stage(
            name, description, tuple(outputs), partial(fn, s=settings, seed=seed), config, depends
        )

    return [
        stage(
            "simulate",
            "simulating protostellar systems",
            [DATA_FILE],
            _simulate,
            ["n_systems", "n_projections", "size", "test_fraction", "val_fraction"],
        ),
        stage(
            "train",
            "training the Siamese network on parameter similarity",
            [TRAIN_DIR + "/model", TRAIN_DIR + "/metrics.json", TRAIN_DIR + "/training_curves.png"],
            _train,
            [
                "epochs",
                "batch_size",
                "encoder",
                "embedding_dim",
                "lr",
                "kernel",
                "width",
                "augment",
            ],
            ("simulate",),
        ),
        stage(
            "index",
            "indexing the training systems",
            [f"{INDEX_DIR}/{name}" for name in INDEX_FILES],
            _index,
            [],
            ("simulate", "train"),
        ),
        stage(
            "observe",
            "observing a held-out system",
            [OBSERVATION_FITS, LAYOUT["observation"]],
            _observe,
            ["size", "snr", "beam_fwhm"],
            ("simulate",),
        ),
        stage(
            "match",
            "matching the observation",
            [LAYOUT["estimate"], LAYOUT["fig_matches"], LAYOUT["fig_parameters"]],
            _match,
            ["n_shown"],
            ("simulate", "train", "index", "observe"),
        ),
        stage(
            "calibrate",
            "checking calibration on held-out systems",
            [
                LAYOUT["calibration"],
                LAYOUT["fig_calibration"],
                LAYOUT["fig_recovery"],
                LAYOUT["fig_pairs"],
            ],
            _calibrate,
            ["grid_beams", "grid_snrs"],
            ("simulate", "train"),
        ),
        stage(
            "report",
            "writing the report",
            [LAYOUT["report"]],
            _report,
            [],
            ("observe", "match", "calibrate", "train"),
        ),
    ]


@dataclass
class DemoResult:
    """What :func:`run_demo` did and found: stage results, the estimate and its calibration."""

    run_dir: Path
    report: Path
    stages: list[StageResult]
    estimate: dict[str, Any]
    calibration: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (what ``twinsight demo --json`` prints)."""
        est = {
            name: {k: p.get(k) for k in ("truth", "median", "interval_68", "narrowing", "in_68")}
            for name, p in self.estimate.get("parameters", {}).items()
        }
        return {
            "run_dir": str(self.run_dir),
            "report": str(self.report),
            "stages": {
                r.name: {"status": r.status, "seconds": round(r.seconds, 2)} for r in self.stages
            },
            "estimate": est,
            "calibration": {
                "summary": self.calibration.get("summary"),
                "parameters": self.calibration.get("parameters"),
            },
        }


def run_demo(
    out: str | Path = "twinsight-demo",
    *,
    quick: bool = False,
    force: bool = False,
    seed: int = 0,
    on_event: EventHook | None = None,
) -> DemoResult:
    """Run the whole demo in ``out`` (see the module docstring); returns what it found.

    ``quick`` uses a small set and few epochs (under 90 s on two cores); a
    re-run skips the stages that are up to date unless ``force``.
    """
    from twinsight import __version__

    settings = QUICK if quick else FULL
    run_dir = Path(out)
    info = {"seed": seed, "quick": quick, "version": __version__, "settings": settings.to_dict()}
    results = run_stages(
        run_dir, demo_stages(settings, seed), force=force, run_info=info, on_event=on_event
    )
    return DemoResult(
        run_dir=run_dir,
        report=run_dir / LAYOUT["report"],
        stages=results,
        estimate=read_json(run_dir / LAYOUT["estimate"], "parameter estimate"),
        calibration=read_json(run_dir / LAYOUT["calibration"], "calibration record"),
    )
