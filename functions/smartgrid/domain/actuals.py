"""Actual loads recorded against a stored prediction (``PredictionService.record_actuals``):
which readings the prediction accepts, and how far its forecast was from them.

Each reading must be a step of the prediction, given once, and not negative (the service adds
the readings stamped beyond its clock: a measured load is never of the future). Once stored,
every actual the prediction has is compared with its forecast: the absolute error against P50
and whether it lies within P10..P90, point by point, and their mean; the readings of this
request are counted in the ``model_prediction_error_*`` metrics (``docs/requirements.md#metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smartgrid.catalog import MODEL_PREDICTION_ERROR_ABSOLUTE, MODEL_PREDICTION_ERROR_PERCENT
from smartgrid.engine.data import Readings, iso
from smartgrid.errors import DataValidationError, Problem
from smartgrid.observability import metrics
from smartgrid.store.records import PredictionRecord


@dataclass
class ActualsResult:
    prediction: PredictionRecord
    points: list[dict[str, Any]]
    mae: float


def _steps(pred: PredictionRecord) -> dict[str, int]:
    """Each forecast timestamp of the prediction -> its position."""
    return {t: i for i, t in enumerate(pred.timestamps)}


def actual_values(pred: PredictionRecord, readings: Readings, problems: list[Problem]) -> dict[str, float]:
    """The readings as ``{timestamp: load}``, each checked against the prediction;
    ``DataValidationError`` listing every problem (``problems``: those found before, first)."""
    index = _steps(pred)
    values: dict[str, float] = {}
    for i, (t, v) in enumerate(zip(readings.timestamps, readings.load, strict=True)):
        ts = iso(t)
        if ts not in index:
            problems.append(
                Problem(
                    "not_forecast",
                    f"timestamps[{i}] {ts} is not a step of prediction {pred.prediction_id} "
                    f"({pred.timestamps[0]} to {pred.timestamps[-1]})",
                    (i + 1,),
                    f"timestamps[{i}]",
                )
            )
        elif ts in values:
            problems.append(
                Problem("duplicate_timestamp", f"timestamps[{i}] {ts} is repeated", (i + 1,), f"timestamps[{i}]")
            )
        elif v < 0:
            problems.append(Problem("negative_load", f"load[{i}] is negative", (i + 1,), f"load[{i}]"))
        else:
            values[ts] = float(v)
    if problems:
        raise DataValidationError(problems, "actuals")
    return values


def compare_actuals(pred: PredictionRecord, merged: dict[str, float], values: dict[str, float]) -> ActualsResult:
    """Every stored actual of the prediction (``merged``) against its forecast, in time order;
    the errors of this request's readings (``values``) go to the metrics."""
    index = _steps(pred)
    points = []
    for ts in sorted(merged, key=index.__getitem__):
        j = index[ts]
        actual = float(merged[ts])
        err = abs(actual - pred.p50[j])
        points.append(
            {
                "timestamp": ts,
                "actual": actual,
                "p10": pred.p10[j],
                "p50": pred.p50[j],
                "p90": pred.p90[j],
                "abs_error": round(err, 3),
                "within_interval": pred.p10[j] <= actual <= pred.p90[j],
            }
        )
    for ts in values:
        err = abs(values[ts] - pred.p50[index[ts]])
        metrics.add_metric(name=MODEL_PREDICTION_ERROR_ABSOLUTE, unit="None", value=round(err, 3))
        if values[ts] > 0:  # a percentage of zero load is undefined
            metrics.add_metric(
                name=MODEL_PREDICTION_ERROR_PERCENT, unit="Percent", value=round(100 * err / values[ts], 3)
            )
    mae = float(np.mean([p["abs_error"] for p in points])) if points else 0.0
    return ActualsResult(pred, points, round(mae, 3))
