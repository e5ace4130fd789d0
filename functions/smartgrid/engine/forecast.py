"""Day-ahead forecasting with the primary model and its fallback, through onnxruntime.

``ModelSet`` loads the three models once (per process / Lambda container). A model that
fails to load (missing, checksum mismatch, unreadable) is recorded, not raised, so the
service keeps forecasting with what it has. ``Forecaster.forecast`` uses the mixture of
experts when it can and the baseline profile otherwise, and says which one it used and why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smartgrid.engine.data import MAX_TEMPERATURE_C, MIN_TEMPERATURE_C, Readings, Series, flat_runs, iso, validate
from smartgrid.engine.features import (
    DAY_S,
    FEATURE_NAMES,
    MIN_PRIMARY_HISTORY_DAYS,
    HolidayCalendar,
    baseline_lags,
    build_features,
)
from smartgrid.engine.model_files import BASELINE_FORECAST, LOAD_FORECAST, MODEL_NAMES, LoadedModel, load_model
from smartgrid.errors import (
    DataValidationError,
    ForecastUnavailableError,
    InsufficientHistoryError,
    ModelIntegrityError,
    ModelNotFoundError,
    Problem,
)

log = logging.getLogger(__name__)

# The primary model reads up to 28 days back (the 4-week same-step mean); gaps or flatlines
# in that window send the forecast to the fallback, older ones do not matter.
PRIMARY_WINDOW_DAYS = 28


@dataclass
class ModelSet:
    directory: Path
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    set_id: str | None = None  # the registry's model set (None: the bundled or a local directory)

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
    transient: bool = False  # the fallback answered because the primary model failed (may pass)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"timestamp": iso(t), "p10": float(a), "p50": float(b), "p90": float(c)}
            for t, a, b, c in zip(self.timestamps, self.p10, self.p50, self.p90, strict=True)
        ]


ForecastResult = Forecast | DataValidationError | ForecastUnavailableError


class Forecaster:
    def __init__(
        self, models: ModelSet, calendar: HolidayCalendar, flatline_hours: float = 6.0, max_steps: int | None = None
    ) -> None:
        self.models = models
        self.calendar = calendar
        self.flatline_hours = flatline_hours
        self.max_steps = max_steps  # see data.validate (the API's limit; the CLI has none)

    # -- entry point for raw readings (CLI, API): validation decides primary vs fallback
    def forecast_readings(self, readings: Readings, future: Readings | None = None) -> Forecast:
        """Validate, then forecast. Hard problems (duplicates, order, non-numeric or negative
        loads, unsupported resolution, less than a day) raise ``DataValidationError``; gaps and
        flatlines are allowed here and judged by ``_primary_blocker`` on the window the
        primary model reads, switching to the fallback (with the reason) when they touch it."""
        (result,) = self.forecast_many([(readings, future)])
        if isinstance(result, Exception):
            raise result
        return result

    def forecast_many(self, inputs: Sequence[tuple[Readings, Readings | None]]) -> list[ForecastResult]:
        """``forecast_readings`` for many series at once: each one validated on its own (its
        error is returned in its place, as is ``ForecastUnavailableError`` when it needs the
        fallback and that is not loaded), then one ``session.run`` for all the primary
        forecasts and one for all the fallbacks."""
        out: list[ForecastResult | None] = [None] * len(inputs)
        jobs: dict[int, _Job] = {}
        for i, (readings, future) in enumerate(inputs):
            try:
                series = validate(
                    readings, min_days=1.0, flatline_hours=None, allow_gaps=True, max_steps=self.max_steps
                )
                jobs[i] = self._job(series, self._future_temperature(series, future), None)
            except DataValidationError as exc:
                out[i] = exc
        self._run_jobs(jobs, out)
        return [r for r in out if r is not None]

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
        out: list[ForecastResult | None] = [None]
        self._run_jobs({0: self._job(series, future_temperature, fallback_reason)}, out)
        result = out[0]
        if isinstance(result, Exception):
            raise result
        assert result is not None
        return result

    def _job(self, series: Series, future_temperature: np.ndarray | None, fallback_reason: str | None) -> _Job:
        S = DAY_S // series.step_s
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
        targets = np.arange(series.n, series.n + S, dtype="int64")
        origins = np.full(S, series.n, dtype="int64")
        return _Job(series, future_temperature, targets, origins, fallback_reason or self._primary_blocker(series))

    def _run_jobs(self, jobs: dict[int, _Job], out: list[ForecastResult | None]) -> None:
        primary = {i: j for i, j in jobs.items() if j.reason is None}
        if primary:
            try:
                version = self._run_primary(primary)
            except Exception as exc:  # any failure of the primary path degrades to the fallback
                log.warning("primary forecast failed, using fallback: %s", exc)
                for j in primary.values():
                    j.reason, j.transient = "primary model failed (the error is logged)", True
            else:
                for i, j in primary.items():
                    if j.reason is None:
                        out[i] = j.result(LOAD_FORECAST, version)
        fallback = {i: j for i, j in jobs.items() if j.reason is not None}
        if fallback:
            try:
                version = self._run_baseline(fallback)
            except ForecastUnavailableError as exc:  # the fallback model is not loaded
                for i in fallback:
                    out[i] = exc
                return
            for i, j in fallback.items():
                out[i] = j.error if j.error is not None else j.result(BASELINE_FORECAST, version)

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

    def _run_primary(self, jobs: dict[int, _Job]) -> str:
        """All jobs' feature rows through the primary model in one run. A job whose features
        or output are unusable gets a fallback reason; a model failure raises."""
        model = self.models.get(LOAD_FORECAST)
        assert model is not None
        if list(model.meta.features) != list(FEATURE_NAMES):
            raise ModelIntegrityError(
                f"{LOAD_FORECAST} expects features {model.meta.features}, code builds {list(FEATURE_NAMES)}"
            )
        Xs, scales, used = [], [], []
        for j in jobs.values():
            series, S = j.series, j.targets.shape[0]
            temp = None
            if series.temperature is not None or j.future_temperature is not None:
                past = series.temperature if series.temperature is not None else np.full(series.n, np.nan)
                fut = j.future_temperature if j.future_temperature is not None else np.full(S, np.nan)
                temp = np.concatenate([past, np.asarray(fut, dtype="float64")])
            try:
                fb = build_features(series.load, temp, series.start, series.step_s, j.targets, j.origins, self.calendar)
            except Exception as exc:  # this series only: it goes to the fallback
                log.warning("features failed, using fallback: %s", exc)
                j.reason, j.transient = "primary model failed (the error is logged)", True
                continue
            if not fb.valid.all():
                j.reason = "primary model failed: history too short to compute the load level"
                continue
            Xs.append(fb.X)
            scales.append(fb.scale)
            used.append(j)
        if not used:
            return model.meta.version
        X = Xs[0] if len(Xs) == 1 else np.concatenate(Xs)
        scale = (scales[0] if len(scales) == 1 else np.concatenate(scales)).astype("float32")[:, None]
        q = tidy_quantiles(np.asarray(model.run({"features": X, "scale": scale}, ["quantiles"])[0], dtype="float64"))
        at = 0
        for j in used:
            part = q[at : at + j.targets.shape[0]]
            at += j.targets.shape[0]
            if np.isfinite(part).all():
                j.q = part
            else:
                j.reason = "primary model failed: non-finite output"
        return model.meta.version

    def _run_baseline(self, jobs: dict[int, _Job]) -> str:
        """All jobs through the fallback profile in one run."""
        model = self.models.get(BASELINE_FORECAST)
        if model is None:
            raise ForecastUnavailableError(
                f"no forecast possible: {BASELINE_FORECAST} not loaded ({self.models.errors.get(BASELINE_FORECAST)})"
            )
        lags, hours = [], []
        for j in jobs.values():
            s = j.series
            lags.append(baseline_lags(s.load, s.step_s, j.targets, j.origins))
            hours.append(((j.targets * s.step_s + _secs(s.start)) % DAY_S / 3600.0).astype("float32")[:, None])
        feeds = {"lags": np.concatenate(lags), "hour": np.concatenate(hours)}
        q = tidy_quantiles(np.asarray(model.run(feeds, ["quantiles"])[0], dtype="float64"))
        at = 0
        for j in jobs.values():
            part = q[at : at + j.targets.shape[0]]
            at += j.targets.shape[0]
            if np.isfinite(part).all():
                j.q = part
            else:
                j.error = InsufficientHistoryError(
                    [
                        Problem(
                            "insufficient_history",
                            "no forecast possible: the fallback needs at least one full day of readings "
                            "without gaps at the same time of day",
                            field_name="load",
                        )
                    ],
                    j.series.source,
                )
        return model.meta.version


@dataclass
class _Job:
    """One series on its way through ``Forecaster._run_jobs``."""

    series: Series
    future_temperature: np.ndarray | None
    targets: np.ndarray
    origins: np.ndarray
    reason: str | None  # why not the primary model; None = primary
    transient: bool = False  # the reason is a failure that may pass, not the data
    q: np.ndarray | None = None  # [S, 3] quantiles once run
    error: DataValidationError | None = None

    def result(self, model: str, version: str) -> Forecast:
        assert self.q is not None
        s = self.series
        ts = s.start + self.targets * np.timedelta64(s.step_s, "s")
        q = self.q
        return Forecast(
            ts, q[:, 0], q[:, 1], q[:, 2], model, version, s.resolution_minutes, self.reason, self.transient
        )


def _secs(t: np.datetime64) -> int:
    return int(t.astype("datetime64[s]").astype("int64"))


def tidy_quantiles(q: np.ndarray) -> np.ndarray:
    """Loads are not negative; keep P10 <= P50 <= P90 exactly."""
    return np.sort(np.maximum(q, 0.0), axis=1)
