"""The end-to-end demo: simulate, train, index, observe, match, calibrate, report.

:func:`run_demo` is what ``twinsight demo`` calls. It chains the same public
API functions the individual commands call (no special path), as a list of
:class:`Stage` objects run by :func:`run_stages`:

1. ``simulate``    a seeded set of protostellar systems, written packed (.h5)
2. ``train``       a model with parameter targets (train/val split by system)
3. ``index``       a similarity index over the training + validation systems
4. ``observe``     one held-out system rendered as a FITS observation (beam, noise)
5. ``match``       best matches and the parameter estimate of that observation
6. ``calibrate``   the estimate on every held-out test system: R², coverage
7. ``report``      the self-contained ``report.html``

Each stage records in ``DIR/stages.json`` a fingerprint of its inputs (its
config plus the fingerprints of its upstream stages' outputs) and a
fingerprint of its own outputs. A re-run skips a stage whose inputs are
unchanged and whose outputs are still on disk, byte for byte; ``force``
re-runs everything.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinsight.errors import TwinsightError
from twinsight.fsutil import write_text_atomic
from twinsight.io import dumps

log = logging.getLogger(__name__)

STAGES_FILE = "stages.json"
STAGES_FORMAT = "twinsight-demo-stages"

#: ``on_event(stage_name, status, seconds)``: status is "start", "ran" or "skipped".
EventHook = Callable[[str, str, float], None]


# -- the stage runner ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One step of a pipeline run in a folder.

    ``action(run_dir)`` writes every path of ``outputs`` (relative to the run
    folder, files or folders) and returns a small JSON-able dict of facts
    recorded in ``stages.json``. ``config`` holds every setting that changes
    what the stage produces; ``depends`` names the upstream stages whose
    outputs it reads.
    """

    name: str
    description: str
    outputs: tuple[str, ...]
    action: Callable[[Path], dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    depends: tuple[str, ...] = ()


@dataclass
class StageResult:
    """What happened to one stage: ``ran`` or ``skipped``, how long, with which fingerprints."""

    name: str
    status: str
    seconds: float
    fingerprint: str
    outputs_fingerprint: str
    info: dict[str, Any]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_fingerprint(path: Path) -> str | None:
    """sha256 of a file, or of a folder's (relative path, file hash) list; None if missing."""
    if path.is_file():
        return _sha256_file(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{_sha256_file(file)}\n".encode())
    return digest.hexdigest()


def outputs_fingerprint(run_dir: Path, outputs: Sequence[str]) -> str | None:
    """One fingerprint over all outputs of a stage; None when any of them is missing."""
    digest = hashlib.sha256()
    for rel in outputs:
        fp = path_fingerprint(run_dir / rel)
        if fp is None:
            return None
        digest.update(f"{rel}\0{fp}\n".encode())
    return digest.hexdigest()[:16]


def input_fingerprint(stage: Stage, upstream: dict[str, str]) -> str:
    """Fingerprint of what a stage is computed from: its config and its inputs' outputs."""
    payload = {
        "stage": stage.name,
        "config": stage.config,
        "upstream": {name: upstream[name] for name in stage.depends},
    }
    text = dumps(payload, indent=None, sort_keys=True, lenient=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_stages(run_dir: str | Path) -> dict[str, Any]:
    """The stage record of a run folder (an empty record when there is none yet)."""
    path = Path(run_dir) / STAGES_FILE
    if not path.is_file():
        return {"format": STAGES_FORMAT, "version": 1, "run": {}, "stages": {}}
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TwinsightError(
            f"stage record '{path}' is not valid JSON ({exc}); delete it or pass --force"
        ) from None
    if not isinstance(record, dict) or record.get("format") != STAGES_FORMAT:
        raise TwinsightError(
            f"'{path}' is not a twinsight stage record (format '{STAGES_FORMAT}'); "
            "choose another --out folder"
        )
    record.setdefault("stages", {})
    return record


def _write_stages(run_dir: Path, record: dict[str, Any]) -> None:
    write_text_atomic(run_dir / STAGES_FILE, dumps(record, lenient=True) + "\n")


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise TwinsightError(f"output folder '{run_dir}' is a file; choose a folder for --out")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / STAGES_FILE).is_file():
        raise TwinsightError(
            f"output folder '{run_dir}' is not empty and holds no {STAGES_FILE}, so it is not a "
            "twinsight demo folder; choose a new or empty folder for --out"
        )


def _can_skip(run_dir: Path, stage: Stage, fingerprint: str, old: dict[str, Any] | None) -> bool:
    if not old or old.get("fingerprint") != fingerprint:
        return False
    return outputs_fingerprint(run_dir, stage.outputs) == old.get("outputs_fingerprint")


def run_stages(
    run_dir: str | Path,
    stages: Sequence[Stage],
    *,
    force: bool = False,
    run_info: dict[str, Any] | None = None,
    on_event: EventHook | None = None,
) -> list[StageResult]:
    """Run ``stages`` in order in ``run_dir``, skipping the up-to-date ones unless ``force``.

    ``stages.json`` is rewritten after every stage, so an interrupted run keeps
    the stages it finished and resumes after them.
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise TwinsightError(f"stage names must be unique, got {names}")
    run_dir.mkdir(parents=True, exist_ok=True)
    record = read_stages(run_dir)
    record["run"] = dict(run_info or {})
    done: dict[str, str] = {}
    results = []
    for stage in stages:
        missing = [d for d in stage.depends if d not in done]
        if missing:
            raise TwinsightError(f"stage '{stage.name}' depends on {missing}, which run later")
        fingerprint = input_fingerprint(stage, done)
        old = record["stages"].get(stage.name)
        if not force and _can_skip(run_dir, stage, fingerprint, old):
            result = StageResult(
                stage.name, "skipped", 0.0, fingerprint, old["outputs_fingerprint"], old["info"]
            )
            log.info("%s: up to date, skipped", stage.name)
        else:
            result = _run_one(run_dir, stage, fingerprint, on_event)
            record["stages"][stage.name] = {
                "description": stage.description,
                "fingerprint": fingerprint,
                "outputs": list(stage.outputs),
                "outputs_fingerprint": result.outputs_fingerprint,
                "config": stage.config,
                "depends": list(stage.depends),
                "seconds": round(result.seconds, 3),
                "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "info": result.info,
            }
            _write_stages(run_dir, record)
        if on_event is not None and result.status == "skipped":
            on_event(stage.name, "skipped", 0.0)
        done[stage.name] = result.outputs_fingerprint
        results.append(result)
    _write_stages(run_dir, record)
    return results


def _run_one(
    run_dir: Path, stage: Stage, fingerprint: str, on_event: EventHook | None
) -> StageResult:
    if on_event is not None:
        on_event(stage.name, "start", 0.0)
    log.info("%s: %s", stage.name, stage.description)
    start = time.perf_counter()
    info = stage.action(run_dir) or {}
    seconds = time.perf_counter() - start
    produced = outputs_fingerprint(run_dir, stage.outputs)
    if produced is None:
        absent = [rel for rel in stage.outputs if not (run_dir / rel).exists()]
        raise TwinsightError(f"stage '{stage.name}' finished without writing {absent}")
    if on_event is not None:
        on_event(stage.name, "ran", seconds)
    return StageResult(stage.name, "ran", seconds, fingerprint, produced, info)


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
    augment: str = "none"

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


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
)

#: The quick demo (well under 90 s on two cores): a small set, small images, few epochs.
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
)

#: Paths inside a demo folder (the report's inputs are in :data:`twinsight.report.LAYOUT`).
DATA_FILE = "data/simulations.h5"
TRAIN_DIR = "train"
INDEX_DIR = "index"
OBSERVATION_FITS = "observation/observation.fits"


def _simulate(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 1: the simulated set, packed, with a ``split`` column (whole systems per side).

    The same as ``twinsight simulate out.h5 --systems N --projections K --size S
    --seed SEED --val-fraction V --test-fraction T``.
    """
    from twinsight.data.readers import open_collection
    from twinsight.simulate import write_simulation

    path = write_simulation(
        run_dir / DATA_FILE,
        s.n_systems,
        s.n_projections,
        s.size,
        seed,
        val_fraction=s.val_fraction,
        test_fraction=s.test_fraction,
        overwrite=True,
        progress=True,
    )
    items = open_collection(path).items
    per_split = items.groupby("split")["system"].nunique()
    return {"images": len(items), "systems": {k: int(v) for k, v in per_split.items()}}


def _train(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 2: ``twinsight train`` with parameter targets on the train/val systems."""
    from twinsight.api import train
    from twinsight.simulate import PARAMETERS

    bundle = train(
        run_dir / DATA_FILE,
        run_dir / TRAIN_DIR,
        overwrite=True,
        targets="params",
        log10=list(PARAMETERS),  # all seven span one to four decades
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
    return {"model_fingerprint": bundle.fingerprint, "metrics": bundle.training.get("metrics")}


def _trainval(collection: Any) -> Any:
    import numpy as np

    split = collection.items["split"].astype(str).to_numpy()
    return collection.subset(np.isin(split, ["train", "val"]))


def _index(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 3: ``twinsight index`` over the training and validation systems (never test)."""
    from twinsight.data.readers import open_collection
    from twinsight.index import build_index
    from twinsight.models.bundle import ModelBundle

    model = run_dir / TRAIN_DIR / "model"
    bundle = ModelBundle.load(model)
    pool = _trainval(open_collection(str(run_dir / DATA_FILE)))
    index = build_index(bundle, pool, model_path=str(model), progress=True)
    index.save(run_dir / INDEX_DIR, overwrite=True)
    return {"items": len(index), "model_fingerprint": bundle.fingerprint}


def observed_system(items: Any, seed: int) -> str:
    """The held-out (test) system the demo observes: one drawn with the seed."""
    import numpy as np

    test = sorted(set(items.loc[items["split"].astype(str) == "test", "system"].astype(str)))
    if not test:
        raise TwinsightError("the simulated set has no test systems to observe")
    return test[int(np.random.default_rng([seed, 11]).integers(len(test)))]


def _observe(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 4: ``twinsight observe`` of one held-out system (beam, noise, new viewing angle)."""
    from twinsight.data.readers import open_collection
    from twinsight.report import LAYOUT
    from twinsight.simulate import PARAMETERS, observe

    items = open_collection(str(run_dir / DATA_FILE)).items
    system = observed_system(items, seed)
    row = items[items["system"].astype(str) == system].iloc[0]
    params = {p: float(row[p]) for p in PARAMETERS}
    truth = observe(
        run_dir / OBSERVATION_FITS,
        params,
        seed=seed,
        size=s.size,
        snr=s.snr,
        beam_fwhm=s.beam_fwhm,
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
    """Stage 5: ``twinsight match`` of the observation: best matches, parameter estimate."""
    from twinsight.data.readers import open_collection
    from twinsight.index import SimilarityIndex
    from twinsight.inference import embed_queries, estimate_parameters, load_queries, query_truths
    from twinsight.models.bundle import ModelBundle
    from twinsight.plots import plot_parameter_matches, plot_search_results
    from twinsight.report import LAYOUT

    bundle = ModelBundle.load(run_dir / TRAIN_DIR / "model")
    index = SimilarityIndex.load(run_dir / INDEX_DIR)
    index.check_model(bundle.fingerprint, str(run_dir / TRAIN_DIR / "model"))
    queries = load_queries([str(run_dir / OBSERVATION_FITS)], bundle.preprocessing)
    embeddings = embed_queries(bundle, queries)
    columns = index.param_columns
    estimate = estimate_parameters(
        index,
        embeddings,
        matching=bundle.matching or index.meta.get("matching"),
        truths=query_truths(queries, columns),
        query_names=[OBSERVATION_FITS],
    )[0]
    write_text_atomic(
        run_dir / LAYOUT["estimate"],
        dumps(estimate.to_dict(with_values=True)) + "\n",
    )
    shown = min(s.n_shown, estimate.n_matches)
    library = open_collection(str(run_dir / DATA_FILE))
    by_key = {k: i for i, k in enumerate(library.items["key"].astype(str))}
    images = library.images([by_key[k] for k in estimate.keys[:shown]])
    plot_search_results(
        queries.raw[:1],
        [images],
        estimate.similarities[None, :shown],
        [estimate.systems[:shown]],
        run_dir / LAYOUT["fig_matches"],
        query_names=["observation"],
    )
    plot_parameter_matches(estimate, run_dir / LAYOUT["fig_parameters"])
    return {"n_matches": estimate.n_matches, "calibrated": estimate.calibrated}


def _calibrate(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 6: ``twinsight evaluate`` on the held-out test systems: R², coverage, pairs."""
    import numpy as np

    from twinsight.data.readers import open_collection
    from twinsight.evaluate import evaluate, public
    from twinsight.models.bundle import ModelBundle
    from twinsight.plots import (
        plot_coverage_calibration,
        plot_ranked_pairs,
        plot_recovery,
        select_ranked_pairs,
    )
    from twinsight.report import LAYOUT

    bundle = ModelBundle.load(run_dir / TRAIN_DIR / "model")
    collection = open_collection(str(run_dir / DATA_FILE))
    result = evaluate(bundle, collection, split="test", seed=seed, progress=True)
    data = public(result)
    params = data.get("parameters") or {}
    test = collection.items["split"].astype(str) == "test"
    data["summary"] = {
        "systems": int(collection.items.loc[test, "system"].nunique()),
        "coverage_68": float(np.mean([p["coverage_68"] for p in params.values()])),
        "coverage_95": float(np.mean([p["coverage_95"] for p in params.values()])),
    }
    write_text_atomic(run_dir / LAYOUT["calibration"], dumps(data) + "\n")
    plot_coverage_calibration(result["calibration_curve"], run_dir / LAYOUT["fig_calibration"])
    arrays = result["_arrays"]
    scales = [params[c].get("scale", "linear") for c in params]
    plot_recovery(
        list(params),
        arrays["truth"],
        arrays["median"],
        scales,
        run_dir / LAYOUT["fig_recovery"],
        r2=[p["r2"] for p in params.values()],
    )
    i, j, predicted, target = result["_pairs"]
    pick = np.unique(np.concatenate(list(select_ranked_pairs(predicted, 8).values())))
    held_out = collection.split("test")
    plot_ranked_pairs(
        held_out.images(i[pick]),
        held_out.images(j[pick]),
        predicted[pick],
        target[pick],
        run_dir / LAYOUT["fig_pairs"],
    )
    return data["summary"]


def _report(run_dir: Path, s: DemoSettings, seed: int) -> dict[str, Any]:
    """Stage 7: the self-contained HTML report, from the JSON and PNG outputs above."""
    from twinsight.report import build_report

    return {"report": str(build_report(run_dir))}


def demo_stages(settings: DemoSettings, seed: int) -> list[Stage]:
    """The seven stages of the demo, with their configs, outputs and dependencies."""
    from functools import partial

    from twinsight.report import LAYOUT

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
            ["epochs", "batch_size", "encoder", "embedding_dim", "lr", "kernel", "width"],
            ("simulate",),
        ),
        stage(
            "index", "indexing the training systems", [INDEX_DIR], _index, [], ("simulate", "train")
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
            [],
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
    from twinsight.report import LAYOUT, read_json

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
