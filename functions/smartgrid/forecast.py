"""Day-ahead forecasting with the primary model and its fallback, through onnxruntime.

``ModelSet`` loads the three models once (per process / Lambda container). A model that
fails to load (missing, checksum mismatch, unreadable) is recorded, not raised, so the
service keeps forecasting with what it has. ``Forecaster.forecast`` uses the mixture of
experts when it can and the baseline profile otherwise, and says which one it used and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import MAX_TEMPERATURE_C, MIN_TEMPERATURE_C, Readings, Series, flat_runs, iso, validate
from .errors import (
    DataValidationError,
    ForecastUnavailableError,
    ModelIntegrityError,
    ModelNotFoundError,
    Problem,
)
from .features import (
    DAY_S,
    FEATURE_NAMES,
    MIN_PRIMARY_HISTORY_DAYS,
    HolidayCalendar,
    baseline_lags,
    build_features,
)
from .registry import BASELINE_FORECAST, LOAD_FORECAST, MODEL_NAMES, LoadedModel, load_model

log = logging.getLogger(__name__)

# The primary model reads up to 28 days back (the 4-week same-step mean); gaps or flatlines
# in that window send the forecast to the fallback, older ones do not matter.
PRIMARY_WINDOW_DAYS = 28


@dataclass
class ModelSet:
    directory: Path
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path, threads: int = 1) -> ModelSet:
        ms = cls(Path(directory))
        for name in MODEL_NAMES:
            try:
                ms.models[name] = load_model(directory, name, threads=threads)
            except (ModelIntegrityError, ModelNotFoundError) as exc:
                ms.errors[name] = str(exc)
                log.error("model %s not loaded: %s", name, exc)
        return ms

    @property
    def models_loaded(self) -> int:
        return len(self.models)

    def get(self, name: str) -> LoadedModel | None:
        return self.models.get(name)

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name in MODEL_NAMES:
            m = self.models.get(name)
            if m is None:
                out.append({"name": name, "loaded": False, "error": self.errors.get(name)})
            else:
                meta = m.meta
                out.append(
                    {
                        "name": name,
                        "loaded": True,
                        "version": meta.version,
                        "created_at": meta.created_at,
                        "training_window": meta.training_window,
                        "resolution_minutes": meta.resolution_minutes,
                        "metrics": meta.metrics,
                        "sha256": meta.sha256,
                    }
                )
        return out


@dataclass
class Forecast:
    timestamps: np.ndarray  # datetime64[s], the next day's steps
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    model: str  # LOAD_FORECAST or BASELINE_FORECAST
    model_version: str
    resolution_minutes: int
    fallback_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"timestamp": iso(t), "p10": float(a), "p50": float(b), "p90": float(c)}
            for t, a, b, c in zip(self.timestamps, self.p10, self.p50, self.p90, strict=True)
        ]


class Forecaster:
    def __init__(self, models: ModelSet, calendar: HolidayCalendar, flatline_hours: float = 6.0) -> None:
        self.models = models
        self.calendar = calendar
        self.flatline_hours = flatline_hours

    # -- entry point for raw readings (CLI, API): validation decides primary vs fallback
    def forecast_readings(self, readings: Readings, future: Readings | None = None) -> Forecast:
        """Validate, then forecast. Hard problems (duplicates, order, non-numeric or negative
        loads, unsupported resolution, less than a day) raise ``DataValidationError``; gaps and
        flatlines are allowed here and judged by ``_primary_blocker`` on the window the
        primary model reads, switching to the fallback (with the reason) when they touch it."""
        series = validate(readings, min_days=1.0, flatline_hours=None, allow_gaps=True)
        return self.forecast(series, self._future_temperature(series, future))

    @staticmethod
    def _future_temperature(series: Series, future: Readings | None) -> np.ndarray | None:
        """The temperature forecast's values, checked to cover exactly the next day's steps."""
        if future is None or future.temperature is None:
            return None
        S = DAY_S // series.step_s
        expected = series.end + np.arange(1, S + 1) * np.timedelta64(series.step_s, "s")
        if len(future) != S or not np.array_equal(future.timestamps.astype("datetime64[s]"), expected):
            raise DataValidationError(
                [
                    Problem(
                        "bad_temperature_forecast",
                        f"the temperature forecast must have one value per step of the next day: {S} rows from "
                        f"{iso(expected[0])} to {iso(expected[-1])} every {series.resolution_minutes} minutes; got "
                        f"{len(future)} rows",
                        field_name="temperature_forecast",
                    )
                ],
                future.source,
            )
        t = future.temperature
        bad = np.flatnonzero((t < MIN_TEMPERATURE_C) | (t > MAX_TEMPERATURE_C))
        if bad.size:
            raise DataValidationError(
                [
                    Problem(
                        "temperature_out_of_range",
                        f"temperature forecast outside [{MIN_TEMPERATURE_C:g}, {MAX_TEMPERATURE_C:g}] deg C at "
                        f"row(s) {', '.join(str(int(r)) for r in future.rows[bad][:8])}",
                        tuple(int(r) for r in future.rows[bad]),
                        "temperature_forecast",
                    )
                ],
                future.source,
            )
        return t

    def forecast(
        self,
        series: Series,
        future_temperature: np.ndarray | None = None,
        fallback_reason: str | None = None,
    ) -> Forecast:
        S = DAY_S // series.step_s
        n = series.n
        if future_temperature is not None and len(future_temperature) != S:
            raise DataValidationError(
                [
                    Problem(
                        "bad_temperature_forecast",
                        f"temperature forecast has {len(future_temperature)} values; the next day has {S} steps",
                        field_name="temperature_forecast",
                    )
                ],
                series.source,
            )
        targets = np.arange(n, n + S, dtype="int64")
        origins = np.full(S, n, dtype="int64")
        ts = series.start + targets * np.timedelta64(series.step_s, "s")
        notes: list[str] = []

        reason = fallback_reason or self._primary_blocker(series)
        if reason is None:
            try:
                q, version = self._run_primary(series, future_temperature, targets, origins)
                return Forecast(
                    ts,
                    q[:, 0],
                    q[:, 1],
                    q[:, 2],
                    LOAD_FORECAST,
                    version,
                    series.resolution_minutes,
                    None,
                    notes,
                )
            except Exception as exc:  # any failure of the primary path degrades to the fallback
                log.warning("primary forecast failed, using fallback: %s", exc)
                reason = f"primary model failed: {exc}"
        q, version = self._run_baseline(series, targets, origins)
        return Forecast(
            ts,
            q[:, 0],
            q[:, 1],
            q[:, 2],
            BASELINE_FORECAST,
            version,
            series.resolution_minutes,
            reason,
            notes,
        )

    def _primary_blocker(self, series: Series) -> str | None:
        """Why the primary model cannot forecast this series, or None if it can."""
        if self.models.get(LOAD_FORECAST) is None:
            return f"{LOAD_FORECAST} not loaded: {self.models.errors.get(LOAD_FORECAST, 'unknown error')}"
        S = DAY_S // series.step_s
        need = PRIMARY_WINDOW_DAYS * S
        if series.n < MIN_PRIMARY_HISTORY_DAYS * S:
            return (
                f"history covers {series.n / S:.1f} day(s); the primary model needs "
                f"{MIN_PRIMARY_HISTORY_DAYS} whole days"
            )
        if (_secs(series.start) + series.n * series.step_s) % DAY_S:
            return (
                f"history ends at {iso(series.end)}, not at the end of a day (UTC); the day-ahead model "
                "forecasts from midnight, so send whole days for the primary forecast"
            )
        window = series.load[-need:]
        if np.isnan(window[-MIN_PRIMARY_HISTORY_DAYS * S :]).any():
            missing = int(np.isnan(window).sum())
            return f"{missing} missing reading(s) in the last {PRIMARY_WINDOW_DAYS} days of history"
        runs = flat_runs(window, max(3, int(np.ceil(self.flatline_hours * 3600 / series.step_s))))
        if runs:
            a, b = runs[0]
            return (
                f"flatline in the history: {b - a} identical readings ({window[a]:g} MW) within the last "
                f"{PRIMARY_WINDOW_DAYS} days"
            )
        return None

    def _run_primary(
        self,
        series: Series,
        future_temperature: np.ndarray | None,
        targets: np.ndarray,
        origins: np.ndarray,
    ) -> tuple[np.ndarray, str]:
        model = self.models.get(LOAD_FORECAST)
        assert model is not None
        if list(model.meta.features) != list(FEATURE_NAMES):
            raise ModelIntegrityError(
                f"{LOAD_FORECAST} expects features {model.meta.features}, code builds {list(FEATURE_NAMES)}"
            )
        S = targets.shape[0]
        temp = None
        if series.temperature is not None or future_temperature is not None:
            past = series.temperature if series.temperature is not None else np.full(series.n, np.nan)
            fut = future_temperature if future_temperature is not None else np.full(S, np.nan)
            temp = np.concatenate([past, np.asarray(fut, dtype="float64")])
        fb = build_features(series.load, temp, series.start, series.step_s, targets, origins, self.calendar)
        if not fb.valid.all():
            raise ValueError("history too short to compute the load level")
        q = model.run({"features": fb.X, "scale": fb.scale.astype("float32")[:, None]}, ["quantiles"])[0]
        q = tidy_quantiles(np.asarray(q, dtype="float64"))
        if not np.isfinite(q).all():
            raise ValueError("non-finite output")
        return q, model.meta.version

    def _run_baseline(self, series: Series, targets: np.ndarray, origins: np.ndarray) -> tuple[np.ndarray, str]:
        model = self.models.get(BASELINE_FORECAST)
        if model is None:
            raise ForecastUnavailableError(
                f"no forecast possible: {BASELINE_FORECAST} not loaded ({self.models.errors.get(BASELINE_FORECAST)})"
            )
        lags = baseline_lags(series.load, series.step_s, targets, origins)
        hour = ((targets * series.step_s + _secs(series.start)) % DAY_S / 3600.0).astype("float32")[:, None]
        q = tidy_quantiles(np.asarray(model.run({"lags": lags, "hour": hour}, ["quantiles"])[0], dtype="float64"))
        if not np.isfinite(q).all():
            raise ForecastUnavailableError("no forecast possible: the fallback needs at least one full day of history")
        return q, model.meta.version


def _secs(t: np.datetime64) -> int:
    return int(t.astype("datetime64[s]").astype("int64"))


def tidy_quantiles(q: np.ndarray) -> np.ndarray:
    """Loads are not negative; keep P10 <= P50 <= P90 exactly."""
    return np.sort(np.maximum(q, 0.0), axis=1)
