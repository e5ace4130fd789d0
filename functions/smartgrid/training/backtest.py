"""Rolling-origin day-ahead backtest.

The test period is the last ``test_days`` whole days (default: 20% of the whole days in
the data). Each test day is forecast at its midnight from features that only read data up
to the day before (see ``features``); models are trained on days before the test period
and, with ``retrain_every=N``, retrained every N days on all days before that block.
The mixture of experts and the fallback are scored through onnxruntime, i.e. exactly as
served. Naive baselines (same step yesterday, same step last week) get empirical P10/P90
factors from their errors on the training days, so their interval metrics are meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smartgrid.engine.accuracy import all_metrics
from smartgrid.engine.data import Series, iso
from smartgrid.engine.features import DAY_S, HolidayCalendar, day_starts
from smartgrid.engine.forecast import tidy_quantiles
from smartgrid.engine.model_files import make_session
from smartgrid.training import baseline as baseline_mod
from smartgrid.training import moe as moe_mod
from smartgrid.training.buckets import hour_bucket
from smartgrid.training.pipeline import Progress, TrainingRows, day_ahead_training_rows, fit_models

# A reference method: (train rows, test rows) -> [m, 3] P10/P50/P90 for the test rows.
Reference = Callable[[TrainingRows, TrainingRows], np.ndarray]


@dataclass
class BacktestResult:
    resolution_minutes: int
    test_days: int
    test_start: str
    test_end: str
    retrain_every: int
    temperature: str
    methods: dict[str, dict[str, float]]
    timings: dict[str, float]
    timestamps: np.ndarray = field(repr=False)
    actual: np.ndarray = field(repr=False)
    predictions: dict[str, np.ndarray] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "resolution_minutes": self.resolution_minutes,
            "test_days": self.test_days,
            "test_period": {"start": self.test_start, "end": self.test_end},
            "retrain_every_days": self.retrain_every,
            "temperature": self.temperature,
            "methods": self.methods,
            "timings_seconds": self.timings,
        }


def _naive_q(pred: np.ndarray, hour: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    h = hour_bucket(hour)
    return np.stack([pred * (1 + lo[h]), pred, pred * (1 + hi[h])], axis=1)


def default_test_days(series: Series) -> int:
    """The default test period: the last 20% of the whole days in the data."""
    return max(1, round(whole_days(series) * 0.2))


def whole_days(series: Series) -> int:
    S = DAY_S // series.step_s
    starts = day_starts(series.start, series.step_s, series.n)
    return int(np.sum(starts + S <= series.n))


def run_backtest(
    series: Series,
    calendar: HolidayCalendar,
    *,
    test_days: int | None = None,
    retrain_every: int = 0,
    params: moe_mod.MoEParams | None = None,
    references: dict[str, Reference] | None = None,
    progress: Progress | None = None,
) -> BacktestResult:
    say = progress or (lambda _m: None)
    if test_days is None:
        test_days = default_test_days(series)
    rows = day_ahead_training_rows(series, calendar)
    all_days = np.unique(rows.day_id)
    if test_days >= len(all_days) - 14:
        raise ValueError(
            f"{test_days} test day(s) leave too few training days ({len(all_days)} forecastable days, "
            "at least 15 needed before the test period)"
        )
    test_day_ids = all_days[-test_days:]
    blocks = (
        [test_day_ids]
        if retrain_every <= 0
        else [test_day_ids[i : i + retrain_every] for i in range(0, len(test_day_ids), retrain_every)]
    )
    names = ["moe", "naive_day", "naive_week", "fallback", *(references or {})]
    preds: dict[str, list[np.ndarray]] = {k: [] for k in names}
    actual: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    timings = {"train": 0.0, "predict": 0.0, "references": 0.0}
    for bi, block in enumerate(blocks):
        train = rows.take(rows.day_id < block[0])
        test = rows.take(np.isin(rows.day_id, block))
        say(f"block {bi + 1}/{len(blocks)}: training on {len(np.unique(train.day_id))} days")
        t0 = time.perf_counter()
        moe, base = fit_models(train, params, progress=say)
        moe_sess = make_session(moe_mod.export_onnx(moe), threads=2)
        base_sess = make_session(baseline_mod.export_onnx(base), threads=2)
        timings["train"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        q = moe_sess.run(["quantiles"], {"features": test.X, "scale": test.scale.astype("float32")[:, None]})[0]
        preds["moe"].append(tidy_quantiles(q.astype("float64")))
        qb = base_sess.run(["quantiles"], {"lags": test.lags, "hour": test.hour.astype("float32")[:, None]})[0]
        preds["fallback"].append(tidy_quantiles(qb.astype("float64")))
        timings["predict"] += time.perf_counter() - t0
        for name, col in (("naive_day", 0), ("naive_week", 1)):
            lo, hi = baseline_mod.relative_offsets(train.lags[:, col].astype("float64"), train.y, train.hour)
            preds[name].append(_naive_q(test.lags[:, col].astype("float64"), test.hour, lo, hi))
        t0 = time.perf_counter()
        for name, ref in (references or {}).items():
            say(f"reference {name}")
            preds[name].append(ref(train, test))
        timings["references"] += time.perf_counter() - t0
        actual.append(test.y)
        stamps.append((test.day_id * DAY_S + np.round(test.hour * 3600).astype("int64")).astype("datetime64[s]"))
    y = np.concatenate(actual)
    stacked = {k: np.concatenate(v) for k, v in preds.items()}
    usable = np.all([np.isfinite(v).all(axis=1) for v in stacked.values()], axis=0)
    methods = {k: {**all_metrics(y[usable], v[usable]), "rows": int(usable.sum())} for k, v in stacked.items()}
    ts = np.concatenate(stamps)
    return BacktestResult(
        resolution_minutes=series.resolution_minutes,
        test_days=int(test_days),
        test_start=iso(ts.min()),
        test_end=iso(ts.max()),
        retrain_every=retrain_every,
        temperature=(
            "observed temperature of each forecast day used as a perfect temperature forecast"
            if series.temperature is not None
            else "none in the data"
        ),
        methods=methods,
        timings={k: round(v, 2) for k, v in timings.items()},
        timestamps=ts,
        actual=y,
        predictions=stacked,
    )


def render_backtest_png(result: BacktestResult, days: int = 14) -> bytes:
    """PNG of forecasts with their P10-P90 interval against actuals over the last ``days`` test days."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cut = result.timestamps.max() - np.timedelta64(days, "D")
    sel = result.timestamps > cut
    t = result.timestamps[sel].astype("datetime64[s]").astype(object)
    q = result.predictions["moe"][sel]
    fig, ax = plt.subplots(figsize=(14, 5))
    ax.fill_between(t, q[:, 0], q[:, 2], color="tab:blue", alpha=0.25, label="MoE P10-P90")
    ax.plot(t, q[:, 1], color="tab:blue", lw=1.2, label="MoE P50")
    ax.plot(
        t,
        result.predictions["naive_day"][sel][:, 1],
        color="tab:gray",
        lw=0.8,
        ls="--",
        label="same step yesterday",
    )
    ax.plot(t, result.actual[sel], color="black", lw=1.0, label="actual")
    m = result.methods["moe"]
    ax.set_title(
        f"Day-ahead backtest, last {days} of {result.test_days} test days - MoE MAPE {m['mape']:.2f}%, "
        f"P10-P90 coverage {m['coverage_80'] * 100:.0f}%"
    )
    ax.set_ylabel("load (MW)")
    ax.legend(loc="upper left", ncol=4)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
