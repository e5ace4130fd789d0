"""The fallback forecaster: a weighted same-step profile of the last days and weeks.

In the spirit of OpenSTEF's fallbacks, it needs no features beyond past loads, so it runs
when the primary model cannot (short or gappy history, a model that failed to load, a
failed validation). Weights on the loads 1, 7, 14, 21 and 28 days earlier are fitted by
least squares on the simplex; at inference, missing lags are skipped and the remaining
weights renormalised, so one day of history is enough. P10/P90 are empirical quantiles of
the relative error per hour of day on the latest training days, so quantiles cannot cross.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smartgrid.engine.features import BASELINE_LAG_DAYS
from smartgrid.training.buckets import HOUR_BUCKETS, hour_bucket, onnx_bucket_lookup

MIN_WEIGHT = 1e-3  # every lag keeps a little weight so any available lag yields a forecast


@dataclass
class BaselineModel:
    weights: np.ndarray  # [L]
    q_lo: np.ndarray  # [24] relative offsets (<= 0)
    q_hi: np.ndarray  # [24] relative offsets (>= 0)

    def predict(self, lags: np.ndarray, hour: np.ndarray) -> np.ndarray:
        """[m, 3] P10/P50/P90 in MW, NaN where no lag is known."""
        known = np.isfinite(lags)
        num = np.where(known, lags, 0.0) @ self.weights
        den = known.astype("float64") @ self.weights
        with np.errstate(invalid="ignore", divide="ignore"):
            p50 = num / den
        h = hour_bucket(hour)
        return np.stack([p50 * (1 + self.q_lo[h]), p50, p50 * (1 + self.q_hi[h])], axis=1)


def _project_simplex(v: np.ndarray) -> np.ndarray:
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > (css - 1))[0][-1]
    theta = (css[rho] - 1) / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def train_baseline(
    lags: np.ndarray,
    y: np.ndarray,
    hour: np.ndarray,
    day_id: np.ndarray,
    calib_fraction: float = 0.25,
) -> BaselineModel:
    """Fit simplex weights on the earlier days, intervals on the latest ``calib_fraction``."""
    days = np.unique(day_id)
    n_cal = max(1, round(len(days) * calib_fraction))
    cal = np.isin(day_id, days[-n_cal:])
    full = np.isfinite(lags).all(axis=1) & np.isfinite(y)
    fit = full & ~cal
    if fit.sum() < 24:
        fit = full
    if fit.sum() == 0:
        w = np.full(len(BASELINE_LAG_DAYS), 1.0 / len(BASELINE_LAG_DAYS))
    else:
        A = lags[fit].astype("float64") / np.mean(y[fit])
        b = y[fit] / np.mean(y[fit])
        w = np.full(A.shape[1], 1.0 / A.shape[1])
        step = 1.0 / (np.linalg.norm(A, 2) ** 2 / A.shape[0])
        for _ in range(500):
            grad = A.T @ (A @ w - b) / A.shape[0]
            w = _project_simplex(w - step * grad)
    w = np.maximum(w, MIN_WEIGHT)
    w = w / w.sum()
    model = BaselineModel(w, np.zeros(HOUR_BUCKETS), np.zeros(HOUR_BUCKETS))
    pred = model.predict(lags[cal], hour[cal])[:, 1]
    model.q_lo, model.q_hi = relative_offsets(pred, y[cal], hour[cal])
    return model


def relative_offsets(pred: np.ndarray, y: np.ndarray, hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-hour 10% and 90% quantiles of ``y / pred - 1`` (clipped to <= 0 and >= 0):
    empirical P10/P90 factors around a point forecast."""
    ok = np.isfinite(pred) & np.isfinite(y) & (pred > 0)
    rel = y[ok] / pred[ok] - 1.0
    h = hour_bucket(hour[ok])
    glo, ghi = np.quantile(rel, [0.1, 0.9]) if rel.size else (-0.1, 0.1)
    q_lo = np.full(HOUR_BUCKETS, glo)
    q_hi = np.full(HOUR_BUCKETS, ghi)
    for k in range(HOUR_BUCKETS):
        r = rel[h == k]
        if r.size >= 20:
            q_lo[k], q_hi[k] = np.quantile(r, [0.1, 0.9])
    return np.minimum(q_lo, 0.0), np.maximum(q_hi, 0.0)


def export_onnx(model: BaselineModel) -> bytes:
    """Inputs ``lags`` float32 [N, L] (NaN = unknown), ``hour`` float32 [N, 1];
    output ``quantiles`` float32 [N, 3] (P10, P50, P90 in MW)."""
    from onnx import TensorProto, helper, numpy_helper

    from smartgrid.training.onnx_trees import make_model

    L = len(BASELINE_LAG_DAYS)
    inits = [
        numpy_helper.from_array(model.weights.reshape(L, 1).astype("float32"), "w"),
        numpy_helper.from_array(np.array(0.0, dtype="float32"), "zero"),
        numpy_helper.from_array(np.array(1.0, dtype="float32"), "one"),
    ]
    lookup, lookup_inits = onnx_bucket_lookup("hour", {"lof": 1.0 + model.q_lo, "hif": 1.0 + model.q_hi}, "hb_")
    N = helper.make_node
    nodes = [
        N("IsNaN", ["lags"], ["nan"]),
        N("Where", ["nan", "zero", "lags"], ["lz"]),
        N("Where", ["nan", "zero", "one"], ["known"]),
        N("MatMul", ["lz", "w"], ["num"]),
        N("MatMul", ["known", "w"], ["den"]),
        N("Div", ["num", "den"], ["p50"]),
        *lookup,
        N("Mul", ["p50", "lof"], ["p10"]),
        N("Mul", ["p50", "hif"], ["p90"]),
        N("Concat", ["p10", "p50", "p90"], ["quantiles"], axis=1),
    ]
    return make_model(
        nodes,
        "baseline_forecast",
        [
            helper.make_tensor_value_info("lags", TensorProto.FLOAT, [None, L]),
            helper.make_tensor_value_info("hour", TensorProto.FLOAT, [None, 1]),
        ],
        [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, [None, 3])],
        inits + lookup_inits,
    )
