"""The training-time calibration hook: matching defaults and score calibration for a new model."""

from __future__ import annotations

import logging
from typing import Any

from twinsight.errors import TwinsightError
from twinsight.inference.conformal import calibrate_matching
from twinsight.inference.verification import calibrate_scores

log = logging.getLogger(__name__)


def calibrate_for_inference(bundle: Any, train_collection: Any, val_collection: Any) -> None:
    """Training-time calibration hook (called by ``api.train``): matching and score calibration.

    Matching defaults are calibrated when the validation items carry parameters
    and systems; the score calibration is fitted (Platt, same label or same
    system) when training did not provide one. A set too small or without
    groups is skipped with a log line, never failing the training run.
    """
    from twinsight.embedding import embed_collection

    if val_collection is None or len(val_collection) == 0:
        log.info("no validation items: matching and score calibration skipped")
        return
    if val_collection.param_columns and val_collection.has_systems:
        try:
            ref = embed_collection(bundle, train_collection)
            calibrate_matching(bundle, (ref, train_collection.items), val_collection)
        except TwinsightError as exc:
            log.warning("matching calibration skipped: %s", exc)
    if not getattr(bundle, "calibration", None):
        try:
            calibrate_scores(bundle, val_collection)
        except TwinsightError as exc:
            log.warning("score calibration skipped: %s", exc)
