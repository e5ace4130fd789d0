"""Training all three models from validated series and saving them as one model set."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from smartgrid.engine.atomic import staged_directory
from smartgrid.engine.data import Series, iso
from smartgrid.engine.features import (
    BASELINE_LAG_DAYS,
    DAY_S,
    FEATURE_INDEX,
    FEATURE_NAMES,
    HolidayCalendar,
    baseline_lags,
    build_features,
    day_ahead_rows,
)
from smartgrid.engine.model_files import BASELINE_FORECAST, LOAD_FORECAST, ModelMetadata, new_version, save_model
from smartgrid.training import baseline as baseline_mod
from smartgrid.training import moe as moe_mod

Progress = Callable[[str], None]


@dataclass
class TrainingRows:
    X: np.ndarray  # float32 [m, F]
    y: np.ndarray  # MW
    scale: np.ndarray
    day_id: np.ndarray  # days since epoch of each row's origin
    lags: np.ndarray  # baseline lags [m, L]
    hour: np.ndarray  # hour of day (float)
    group: np.ndarray  # which training series each row comes from

    _FIELDS: ClassVar[tuple[str, ...]] = ("X", "y", "scale", "day_id", "lags", "hour", "group")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, mask: np.ndarray) -> TrainingRows:
        return TrainingRows(*(getattr(self, f)[mask] for f in self._FIELDS))

    @staticmethod
    def concat(parts: list[TrainingRows]) -> TrainingRows:
        return TrainingRows(*(np.concatenate([getattr(p, f) for p in parts]) for f in TrainingRows._FIELDS))


def day_ahead_training_rows(series: Series, calendar: HolidayCalendar, group: int = 0) -> TrainingRows:
    """Every whole day forecast at its midnight (rows with unknown target or level dropped)."""
    targets, origins = day_ahead_rows(series.n, series.start, series.step_s)
    fb = build_features(series.load, series.temperature, series.start, series.step_s, targets, origins, calendar)
    y = series.load[targets]
    day_id = (int(series.start.astype("datetime64[s]").astype("int64")) + origins * series.step_s) // DAY_S
    rows = TrainingRows(
        fb.X,
        y,
        fb.scale,
        day_id,
        baseline_lags(series.load, series.step_s, targets, origins),
        fb.X[:, FEATURE_INDEX["hour"]].astype("float64"),
        np.full(y.shape[0], group, dtype="int64"),
    )
    return rows.take(fb.valid & np.isfinite(y))


def fit_models(
    rows: TrainingRows, params: moe_mod.MoEParams | None = None, progress: Progress | None = None
) -> tuple[moe_mod.MoEModel, baseline_mod.BaselineModel]:
    say = progress or (lambda _m: None)
    moe = moe_mod.train_moe(rows.X, rows.y / rows.scale, rows.day_id, params, progress=say, group=rows.group)
    say("baseline profile")
    base = baseline_mod.train_baseline(rows.lags, rows.y, rows.hour, rows.day_id)
    return moe, base


def _window(series_list: list[Series]) -> dict[str, str]:
    return {
        "start": iso(min(s.start for s in series_list)),
        "end": iso(max(s.end for s in series_list)),
    }


def train_all(
    series_list: list[Series],
    out_dir: str | Path,
    calendar: HolidayCalendar,
    params: moe_mod.MoEParams | None = None,
    progress: Progress | None = None,
    anomaly_events_per_series: int | None = None,
) -> dict[str, ModelMetadata]:
    """Train the mixture of experts, the fallback and the anomaly detector on the given
    series and write them to ``out_dir``. Files appear in ``out_dir`` only when all three
    are trained (a failure leaves ``out_dir`` untouched)."""
    from smartgrid.training import anomaly_train

    say = progress or (lambda _m: None)
    resolutions = {s.resolution_minutes for s in series_list}
    resolution = min(resolutions)
    window = _window(series_list)
    now = datetime.now(UTC)
    version = new_version(now)
    created = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.perf_counter()
    rows = TrainingRows.concat([day_ahead_training_rows(s, calendar, group=k) for k, s in enumerate(series_list)])
    if len(rows) == 0:
        raise ValueError("no trainable day-ahead rows (need more than 14 days of history)")
    p = params or moe_mod.MoEParams()
    moe, base = fit_models(rows, p, progress=say)
    train_s = time.perf_counter() - t0
    common: dict[str, Any] = {
        "version": version,
        "created_at": created,
        "training_window": window,
        "resolution_minutes": resolution,
    }
    metas: dict[str, ModelMetadata] = {}
    with staged_directory(out_dir) as stage:
        say("exporting ONNX")
        metas[LOAD_FORECAST] = save_model(
            stage,
            ModelMetadata(
                name=LOAD_FORECAST,
                features=list(FEATURE_NAMES),
                metrics={
                    **moe.info,
                    "training_rows": len(rows),
                    "training_seconds": round(train_s, 1),
                },
                params={
                    "experts": moe.expert_names,
                    "country": calendar.country,
                    "moe": p.__dict__,
                    "uses_temperature": any(s.temperature is not None for s in series_list),
                },
                **common,
            ),
            moe_mod.export_onnx(moe),
        )
        metas[BASELINE_FORECAST] = save_model(
            stage,
            ModelMetadata(
                name=BASELINE_FORECAST,
                features=[f"lag_{d}d" for d in BASELINE_LAG_DAYS] + ["hour"],
                metrics={
                    "weights": dict(
                        zip(
                            [f"lag_{d}d" for d in BASELINE_LAG_DAYS],
                            base.weights.round(4).tolist(),
                            strict=True,
                        )
                    )
                },
                params={},
                **common,
            ),
            baseline_mod.export_onnx(base),
        )
        say("anomaly detector")
        kwargs: dict[str, Any] = {}
        if anomaly_events_per_series is not None:
            kwargs["n_events_per_series"] = anomaly_events_per_series
        metas["anomaly_detector"] = anomaly_train.train_and_save(
            series_list,
            stage,
            # the detector trains on the first 80% of each series and evaluates on the rest
            training_window=_window([anomaly_train.split_series(s)[0] for s in series_list]),
            resolution_minutes=resolution,
            progress=say,
            **kwargs,
        )
    return metas
