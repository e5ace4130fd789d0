"""Training the mixture-of-experts day-ahead forecaster and exporting it to ONNX.

Experts are LightGBM regressors, each specialised either by what it predicts relative to
(the 7-day level, or yesterday's same step) or by the days it weighs most (workdays,
winter, summer). A softmax gate over calendar and temperature inputs, fitted on days the
experts did not train on, mixes them. P10/P90 come from split-conformal calibration of
the mixture's ratio residuals per hour of day, so the P10-P90 interval is calibrated to
cover ~80% and quantiles cannot cross (P10 <= P50 <= P90 by construction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from smartgrid.engine.features import FEATURE_INDEX, FEATURE_NAMES, GATE_FEATURES
from smartgrid.training.buckets import HOUR_BUCKETS, hour_bucket, onnx_bucket_lookup

F = FEATURE_INDEX


def _month(X: np.ndarray) -> np.ndarray:
    # day of year from its sin/cos, then a month-like bucket 1..12
    ang = np.arctan2(X[:, F["doy_sin"]], X[:, F["doy_cos"]]) % (2 * np.pi)
    return (ang / (2 * np.pi) * 12).astype(int) + 1


@dataclass(frozen=True)
class ExpertSpec:
    """How one expert specialises: which rows it weighs most (``weight``) and which known
    quantity it predicts relative to (``anchor``: a ratio feature, or None for the 7-day
    mean). An expert anchored on last week's load learns how today differs from last week;
    one anchored on yesterday learns how it differs from yesterday; the gate learns when
    each view is reliable (after holidays, at season changes, ...)."""

    weight: Callable[[np.ndarray], np.ndarray]
    anchor: str | None = None


def _all(X: np.ndarray) -> np.ndarray:
    return np.ones(X.shape[0])


def _workday(X: np.ndarray) -> np.ndarray:
    return np.where(X[:, F["is_offday"]] > 0.5, 0.2, 1.0)


def _in_months(months: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda X: np.where(np.isin(_month(X), months), 1.0, 0.2)


EXPERTS: dict[str, ExpertSpec] = {
    "level": ExpertSpec(_all),
    "daily": ExpertSpec(_all, "lag_1d"),
    "workday": ExpertSpec(_workday),
    "winter": ExpertSpec(_in_months([11, 12, 1, 2, 3])),
    "summer": ExpertSpec(_in_months([5, 6, 7, 8, 9])),
}


def anchors(X: np.ndarray, names: list[str]) -> np.ndarray:
    """[m, K] anchor of each expert (ratio units; 1.0 for the level, or where unknown)."""
    cols = []
    for name in names:
        a = EXPERTS[name].anchor
        v = np.ones(X.shape[0]) if a is None else X[:, F[a]].astype("float64")
        cols.append(np.where(np.isfinite(v) & (v > 0), v, 1.0))
    return np.stack(cols, axis=1)


@dataclass
class MoEParams:
    n_estimators: int = 600
    learning_rate: float = 0.1
    num_leaves: int = 31
    min_child_samples: int = 30
    subsample: float = 0.8
    colsample: float = 0.8
    objective: str = "regression"
    calib_fraction: float = 0.25  # share of training days held out for gate and intervals
    refit: bool = True  # refit experts on all days after calibration
    gate_l2: float = 1e-3
    gate_iters: int = 400
    seed: int = 7
    threads: int = 2


@dataclass
class MoEModel:
    boosters: list  # lightgbm.Booster per expert
    expert_names: list[str]
    gate_idx: np.ndarray  # int64 [G] columns of X used by the gate
    gate_mean: np.ndarray  # [G]
    gate_std: np.ndarray  # [G]
    gate_W: np.ndarray  # [G, K]
    gate_b: np.ndarray  # [K]
    q_lo: np.ndarray  # [24] ratio offsets (<= 0)
    q_hi: np.ndarray  # [24] ratio offsets (>= 0)
    info: dict = field(default_factory=dict)

    # -- pure-Python inference, the reference the ONNX export must match
    def gate_weights(self, X: np.ndarray) -> np.ndarray:
        G = X[:, self.gate_idx].astype("float64")
        G = np.where(np.isnan(G), self.gate_mean, G)
        z = ((G - self.gate_mean) / self.gate_std) @ self.gate_W + self.gate_b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def expert_preds(self, X: np.ndarray) -> np.ndarray:
        """[m, K] each expert's forecast in ratio units (anchor times its raw output)."""
        raw = np.stack([b.predict(X, num_threads=1) for b in self.boosters], axis=1)
        return raw * anchors(X, self.expert_names)

    def predict_ratio(self, X: np.ndarray) -> np.ndarray:
        """[m, 3] P10/P50/P90 in ratio units."""
        r50 = (self.gate_weights(X) * self.expert_preds(X)).sum(axis=1)
        h = hour_bucket(X[:, F["hour"]])
        return np.stack([r50 + self.q_lo[h], r50, r50 + self.q_hi[h]], axis=1)

    def predict(self, X: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return self.predict_ratio(X) * scale[:, None]


def _train_booster(X: np.ndarray, y: np.ndarray, w: np.ndarray, p: MoEParams, seed: int):
    import lightgbm as lgb

    params = {
        "objective": p.objective,
        "learning_rate": p.learning_rate,
        "num_leaves": p.num_leaves,
        "min_child_samples": p.min_child_samples,
        "bagging_fraction": p.subsample,
        "bagging_freq": 1,
        "feature_fraction": p.colsample,
        "seed": seed,
        "num_threads": p.threads,
        "verbose": -1,
        "deterministic": True,
        "force_row_wise": True,
    }
    ds = lgb.Dataset(X, y, weight=w, feature_name=list(FEATURE_NAMES), free_raw_data=True)
    return lgb.train(params, ds, num_boost_round=p.n_estimators)


def _fit_gate(G: np.ndarray, P: np.ndarray, y: np.ndarray, l2: float, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax gate minimising mean squared error of the mixture (Adam, full batch)."""
    g_dim, k = G.shape[1], P.shape[1]
    W = np.zeros((g_dim, k))
    b = np.zeros(k)
    # Start from the experts' relative skill so the gate begins as a sensible blend.
    err = ((P - y[:, None]) ** 2).mean(axis=0)
    b = -np.log(err / err.min())
    m_w = np.zeros_like(W)
    v_w = np.zeros_like(W)
    m_b = np.zeros_like(b)
    v_b = np.zeros_like(b)
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    n = y.shape[0]
    for t in range(1, iters + 1):
        z = G @ W + b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e / e.sum(axis=1, keepdims=True)
        yhat = (s * P).sum(axis=1)
        r = yhat - y  # d loss / d yhat = 2r/n
        dz = s * (P - yhat[:, None]) * (2 * r / n)[:, None]
        gW = G.T @ dz + l2 * W
        gb = dz.sum(axis=0)
        for param, grad, m, v in ((W, gW, m_w, v_w), (b, gb, m_b, v_b)):
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            v += (1 - b2) * grad * grad
            param -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return W, b


def train_moe(
    X: np.ndarray,
    y_ratio: np.ndarray,
    day_id: np.ndarray,
    params: MoEParams | None = None,
    progress: Callable[[str], None] | None = None,
    group: np.ndarray | None = None,
) -> MoEModel:
    """Train experts, gate and conformal intervals. ``day_id`` orders rows by day; within
    each ``group`` (one per training series), the latest ``calib_fraction`` of its days
    calibrate the gate (first half) and the intervals (second half), so pooled series all
    take part in calibration."""
    p = params or MoEParams()
    say = progress or (lambda _msg: None)
    groups = np.zeros(day_id.shape[0], dtype="int64") if group is None else np.asarray(group)
    gate_rows = np.zeros(day_id.shape[0], dtype=bool)
    conf_rows = np.zeros(day_id.shape[0], dtype=bool)
    for g in np.unique(groups):
        in_g = groups == g
        g_days = np.unique(day_id[in_g])
        n_cal = max(2, round(len(g_days) * p.calib_fraction))
        cal_days = g_days[-n_cal:]
        gate_rows |= in_g & np.isin(day_id, cal_days[: n_cal // 2])
        conf_rows |= in_g & np.isin(day_id, cal_days[n_cal // 2 :])
    fit = ~(gate_rows | conf_rows)
    conf_days = np.unique(day_id[conf_rows])
    gate_days = np.unique(day_id[gate_rows])
    days = np.unique(day_id)
    n_cal = len(np.unique(day_id[~fit]))
    names = list(EXPERTS)

    A = anchors(X, names)
    boosters = []
    for k, name in enumerate(names):
        say(f"expert {name} (calibration fit)")
        boosters.append(_train_booster(X[fit], y_ratio[fit] / A[fit, k], EXPERTS[name].weight(X[fit]), p, p.seed + k))
    gate_idx = np.array([F[g] for g in GATE_FEATURES], dtype="int64")
    Graw = X[:, gate_idx].astype("float64")
    known = np.isfinite(Graw[fit])
    counts = known.sum(axis=0)
    mean = np.where(counts > 0, np.where(known, Graw[fit], 0.0).sum(axis=0) / np.maximum(counts, 1), 0.0)
    # a missing gate input (no temperature) takes the training mean: neutral, not 0 deg C
    Gall = np.where(np.isnan(Graw), mean, Graw)
    std = Gall[fit].std(axis=0)
    std[std < 1e-6] = 1.0
    model = MoEModel(
        boosters,
        names,
        gate_idx,
        mean,
        std,
        np.zeros((len(gate_idx), len(names))),
        np.zeros(len(names)),
        np.zeros(HOUR_BUCKETS),
        np.zeros(HOUR_BUCKETS),
    )
    say("gate")
    P_gate = model.expert_preds(X[gate_rows])
    Gn = (Gall[gate_rows] - mean) / std
    model.gate_W, model.gate_b = _fit_gate(Gn, P_gate, y_ratio[gate_rows], p.gate_l2, p.gate_iters)

    say("conformal intervals")
    r50 = model.predict_ratio(X[conf_rows])[:, 1]
    resid = y_ratio[conf_rows] - r50
    hours = hour_bucket(X[conf_rows, F["hour"]])
    q_lo = np.zeros(HOUR_BUCKETS)
    q_hi = np.zeros(HOUR_BUCKETS)
    glo, ghi = np.quantile(resid, [0.1, 0.9])
    for h in range(HOUR_BUCKETS):
        rh = resid[hours == h]
        if rh.size >= 20:
            # finite-sample split-conformal levels
            n = rh.size
            lo_level = max(0.0, np.floor(0.1 * (n + 1)) / n - 1e-12)
            hi_level = min(1.0, np.ceil(0.9 * (n + 1)) / n)
            q_lo[h], q_hi[h] = np.quantile(rh, [lo_level, hi_level])
        else:
            q_lo[h], q_hi[h] = glo, ghi
    model.q_lo = np.minimum(q_lo, 0.0)
    model.q_hi = np.maximum(q_hi, 0.0)
    cover = np.mean((resid >= model.q_lo[hours]) & (resid <= model.q_hi[hours]))
    yc = y_ratio[conf_rows]
    model.info = {
        "holdout_mape": float(np.mean(np.abs(resid) / yc) * 100),
        "holdout_coverage_80": float(cover),
        "holdout_days": len(conf_days),
        "gate_days": len(gate_days),
        "fit_days": len(days) - n_cal,
    }

    if p.refit:
        for k, name in enumerate(names):
            say(f"expert {name} (refit on all days)")
            boosters[k] = _train_booster(X, y_ratio / A[:, k], EXPERTS[name].weight(X), p, p.seed + k)
    return model


# --------------------------------------------------------------------------- ONNX


def export_onnx(model: MoEModel) -> bytes:
    """One ONNX graph: experts (one TreeEnsemble node, a column each), gate, mixture, intervals.

    Inputs: ``features`` float32 [N, F], ``scale`` float32 [N, 1].
    Outputs: ``quantiles`` float32 [N, 3] (P10, P50, P90 in MW), ``gate_weights`` [N, K].
    """
    from onnx import TensorProto, helper, numpy_helper

    from smartgrid.training.onnx_trees import make_model, tree_ensemble_node

    nf = len(FEATURE_NAMES)
    trees, k = tree_ensemble_node(model.boosters, "features", "experts")
    inits: list = []

    def const(name: str, arr: np.ndarray, dtype: str = "float32") -> None:
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))

    const("gate_idx", model.gate_idx, "int64")
    const("gate_mean", model.gate_mean)
    const("gate_std", model.gate_std)
    const("gate_W", model.gate_W)
    const("gate_b", model.gate_b)
    const("zero", np.array(0.0))
    const("hour_col", np.array([F["hour"]]), "int64")
    const("sum_axes", np.array([1]), "int64")
    const("one", np.array(1.0))
    # anchor columns: features at these indices; the level experts use a constant-1 column
    anchor_names = [EXPERTS[n].anchor for n in model.expert_names]
    anchor_idx = [F[a] if a else F["hour"] for a in anchor_names]
    anchor_mask = [0.0 if a else 1.0 for a in anchor_names]
    const("anchor_idx", np.array(anchor_idx), "int64")
    const("anchor_is_level", np.array(anchor_mask) > 0.5, "bool")
    lookup, lookup_inits = onnx_bucket_lookup("hour", {"lo_off": model.q_lo, "hi_off": model.q_hi}, "hb_")
    inits += lookup_inits
    N = helper.make_node
    nodes = [
        trees,
        N("Gather", ["features", "gate_idx"], ["g_raw"], axis=1),
        N("IsNaN", ["g_raw"], ["g_nan"]),
        N("Where", ["g_nan", "gate_mean", "g_raw"], ["g_filled"]),
        N("Sub", ["g_filled", "gate_mean"], ["g_c"]),
        N("Div", ["g_c", "gate_std"], ["g_n"]),
        N("MatMul", ["g_n", "gate_W"], ["g_z0"]),
        N("Add", ["g_z0", "gate_b"], ["g_z"]),
        N("Softmax", ["g_z"], ["gate_weights"], axis=1),
        N("Gather", ["features", "anchor_idx"], ["a_raw"], axis=1),
        N("IsNaN", ["a_raw"], ["a_nan"]),
        N("LessOrEqual", ["a_raw", "zero"], ["a_nonpos"]),
        N("Or", ["a_nan", "a_nonpos"], ["a_bad0"]),
        N("Or", ["a_bad0", "anchor_is_level"], ["a_bad"]),
        N("Where", ["a_bad", "one", "a_raw"], ["anchor"]),
        N("Mul", ["experts", "anchor"], ["expert_ratio"]),
        N("Mul", ["expert_ratio", "gate_weights"], ["weighted"]),
        N("ReduceSum", ["weighted", "sum_axes"], ["r50"], keepdims=1),
        N("Gather", ["features", "hour_col"], ["hour"], axis=1),
        *lookup,
        N("Add", ["r50", "lo_off"], ["r10"]),
        N("Add", ["r50", "hi_off"], ["r90"]),
        N("Concat", ["r10", "r50", "r90"], ["ratios"], axis=1),
        N("Mul", ["ratios", "scale"], ["quantiles"]),
    ]
    return make_model(
        nodes,
        "load_forecast_moe",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, nf]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("gate_weights", TensorProto.FLOAT, [None, k]),
        ],
        inits,
    )
