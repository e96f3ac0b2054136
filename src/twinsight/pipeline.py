"""Fingerprinted stages: run a pipeline in a folder, skipping what is up to date.

A :class:`Stage` names its outputs, its config and the stages it depends on;
:func:`run_stages` records in ``DIR/stages.json`` a fingerprint of each stage's
inputs (its config plus the fingerprints of its upstream stages' outputs) and of
its outputs. A re-run skips a stage whose inputs are unchanged and whose outputs
are still on disk, byte for byte; ``force`` re-runs everything. The demo runs on
it (:mod:`twinsight.demo`).
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
