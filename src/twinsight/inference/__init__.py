"""Best-match inference: parameter distributions, their calibration, verification scores.

- :mod:`.intervals`: scales, match weights, weighted quantiles, intervals;
- :mod:`.estimate`: :func:`estimate_parameters` and its result types, and the
  arrays of many queries whose truth is known (:func:`recovery_arrays`);
- :mod:`.conformal`: the matching calibration (number of matches, interval
  inflation) on validation systems;
- :mod:`.verification`: same/different pairs and the score calibration;
- :mod:`.queries`: query images from files, embedded;
- :mod:`.calibration`: the training-time hook that runs both calibrations;
- :mod:`.instrumented`: the calibration for an observation's instrument, and typicality.
"""

from __future__ import annotations

from twinsight.inference.calibration import calibrate_for_inference
from twinsight.inference.conformal import (
    MIN_SYSTEMS,
    TOP_CANDIDATES,
    calibrate_from_embeddings,
    calibrate_matching,
    conformal_inflation,
    coverage,
    split_systems,
    system_weights,
)
from twinsight.inference.estimate import (
    DEFAULT_TOP,
    HIST_BINS,
    ParameterEstimate,
    ParameterStats,
    estimate_parameters,
    recovery_arrays,
)
from twinsight.inference.instrumented import (
    calibrate_for_instrument,
    range_warnings,
    typicality,
    write_calibration_set,
)
from twinsight.inference.intervals import (
    LEVELS,
    REPORTED_LEVELS,
    choose_scale,
    from_scale,
    inflation_factors,
    level_index,
    match_weights,
    neighbour_intervals,
    to_scale,
    weighted_quantile,
    with_reported_levels,
)
from twinsight.inference.queries import (
    Queries,
    embed_queries,
    load_queries,
    queries_from_arrays,
    query_truths,
)
from twinsight.inference.verification import (
    balanced_pairs,
    calibrate_scores,
    decision_threshold,
    fit_platt,
    pair_groups,
    probability,
)

__all__ = [
    "DEFAULT_TOP",
    "HIST_BINS",
    "LEVELS",
    "MIN_SYSTEMS",
    "REPORTED_LEVELS",
    "TOP_CANDIDATES",
    "ParameterEstimate",
    "ParameterStats",
    "Queries",
    "balanced_pairs",
    "calibrate_for_inference",
    "calibrate_from_embeddings",
    "calibrate_matching",
    "calibrate_for_instrument",
    "range_warnings",
    "typicality",
    "write_calibration_set",
    "calibrate_scores",
    "choose_scale",
    "conformal_inflation",
    "coverage",
    "decision_threshold",
    "embed_queries",
    "estimate_parameters",
    "fit_platt",
    "from_scale",
    "inflation_factors",
    "level_index",
    "load_queries",
    "queries_from_arrays",
    "match_weights",
    "neighbour_intervals",
    "pair_groups",
    "probability",
    "query_truths",
    "recovery_arrays",
    "split_systems",
    "system_weights",
    "to_scale",
    "weighted_quantile",
    "with_reported_levels",
]
