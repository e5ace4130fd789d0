"""Features for day-ahead forecasting, computed only from what is known at forecast time.

Every target step ``i`` has a forecast origin ``o`` (the first step not yet observed; for
day-ahead forecasts made at midnight, the day's first step). Load features only read
``load[:o]``; temperature features read the observed temperature before ``o`` and the
temperature forecast for the target day ``[o, o + steps_per_day)``. Lags are whole days,
so the same feature list works at every resolution from 5 to 60 minutes.

Load features are divided by ``scale`` (mean load of the 7 days before the origin) so the
models learn shapes and ratios, not one site's level.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from smartgrid.engine.data import DAY_S

FEATURE_NAMES: tuple[str, ...] = (
    "tod_sin",
    "tod_cos",
    "hour",
    "weekday",
    "is_weekend",
    "is_holiday",
    "is_offday",
    "doy_sin",
    "doy_cos",
    "prev_day_offday",
    "lag_1d",
    "lag_2d",
    "lag_7d",
    "lag_14d",
    "same_step_mean_4w",
    "last_known",
    "prev_day_mean",
    "prev_day_max",
    "prev_day_min",
    "std_7d",
    "week_over_week",
    "temperature",
    "temp_lag_1d",
    "temp_day_mean",
    "temp_prev_day_mean",
    "temp_roll_3h",
    "temp_roll_12h",
    "temp_day_max",
    "temp_day_min",
    "temp_change_1d",
    "temp_day_mean_change",
)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
# Inputs of the mixture-of-experts gate: when a load pattern applies, not the load itself.
GATE_FEATURES: tuple[str, ...] = (
    "tod_sin",
    "tod_cos",
    "is_offday",
    "prev_day_offday",
    "doy_sin",
    "doy_cos",
    "temperature",
    "temp_day_mean",
)
# Lags (days) the fallback profile uses, in the column order of its ONNX input.
BASELINE_LAG_DAYS: tuple[int, ...] = (1, 7, 14, 21, 28)
MIN_PRIMARY_HISTORY_DAYS = 14


class HolidayCalendar:
    """Public holidays of one country (``holidays`` package), as a vectorised lookup."""

    def __init__(self, country: str = "US", subdivision: str | None = None) -> None:
        self.country = country.upper()
        self.subdivision = subdivision
        try:
            self._days = _holiday_days(self.country, subdivision)
        except NotImplementedError as exc:
            raise ValueError(f"unknown holiday calendar: country {country!r}, subdivision {subdivision!r}") from exc

    def is_holiday(self, days: np.ndarray) -> np.ndarray:
        d = days.astype("datetime64[D]").astype("int64")
        if not self._days.size:
            return np.zeros(d.shape, dtype=bool)
        i = np.minimum(np.searchsorted(self._days, d), self._days.size - 1)  # _days is sorted
        return self._days[i] == d


HOLIDAY_YEARS = range(1990, 2051)
# Pre-computed calendars (``smartgrid calendars``), so that a Lambda cold start reads a small
# file instead of importing ``holidays`` and computing 61 years (~0.2 s of CPU here).
CALENDAR_DIR = Path(__file__).resolve().parent / "calendars"


def calendar_file(country: str, subdivision: str | None) -> Path:
    return CALENDAR_DIR / (f"{country}-{subdivision}.txt" if subdivision else f"{country}.txt")


def compute_holiday_days(country: str, subdivision: str | None) -> np.ndarray:
    """Holidays of ``HOLIDAY_YEARS`` from the ``holidays`` package, as days since the epoch."""
    import holidays

    cal = holidays.country_holidays(country, subdiv=subdivision, years=HOLIDAY_YEARS)
    return np.array(sorted(np.datetime64(d, "D").astype("int64") for d in cal), dtype="int64")


@lru_cache(maxsize=8)
def _holiday_days(country: str, subdivision: str | None) -> np.ndarray:
    path = calendar_file(country, subdivision)
    if path.is_file():
        days = [np.datetime64(line, "D") for line in path.read_text().split()]
        return np.array(days, dtype="datetime64[D]").astype("int64")
    return compute_holiday_days(country, subdivision)


def write_calendar(country: str, subdivision: str | None = None) -> Path:
    from smartgrid.engine.atomic import atomic_write_text

    days = compute_holiday_days(country.upper(), subdivision)
    path = calendar_file(country.upper(), subdivision)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(str(d) for d in days.astype("datetime64[D]")) + "\n")
    return path


@dataclass(frozen=True)
class FeatureBatch:
    X: np.ndarray  # float32 [m, F]
    scale: np.ndarray  # float64 [m]; NaN where the history is too short
    targets: np.ndarray  # int64 [m] grid index of each row
    origins: np.ndarray  # int64 [m]

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.scale) & (self.scale > 0)


def _window_mean(cs: np.ndarray, cnt: np.ndarray, a: np.ndarray, b: np.ndarray, min_frac: float = 0.5) -> np.ndarray:
    """Mean of values[a:b] from NaN-aware cumulative sums; NaN if a < 0 or too few values."""
    n = cs.shape[0] - 1
    a_c = np.minimum(np.maximum(a, 0), n)  # np.clip, without its Python overhead (hot: 4 calls per series)
    b_c = np.minimum(np.maximum(b, 0), n)
    total = cs[b_c] - cs[a_c]
    count = cnt[b_c] - cnt[a_c]
    width = b - a
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[(a < 0) | (b > n) | (count < np.maximum(1, min_frac * width))] = np.nan
    return out


def _cumsums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    finite = np.isfinite(x)
    xz = np.where(finite, x, 0.0)
    cs = np.concatenate([[0.0], np.cumsum(xz)])
    cs2 = np.concatenate([[0.0], np.cumsum(xz * xz)])
    cnt = np.concatenate([[0], np.cumsum(finite)])
    return cs, cs2, cnt


def _take(x: np.ndarray, j: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """x[j] where 0 <= j < limit (known at the origin), else NaN."""
    ok = (j >= 0) & (j < limit) & (j < x.shape[0])
    out = np.full(j.shape, np.nan)
    out[ok] = x[j[ok]]
    return out


def build_features(
    load: np.ndarray,
    temperature: np.ndarray | None,
    start: np.datetime64,
    step_s: int,
    targets: np.ndarray,
    origins: np.ndarray,
    calendar: HolidayCalendar,
) -> FeatureBatch:
    """Feature rows for ``targets`` (grid indices) forecast from ``origins``.

    ``load`` may be shorter than the targets (future steps unknown); ``temperature`` may
    extend past the load with a temperature forecast. Load at or after a row's origin is
    never read.
    """
    S = DAY_S // step_s
    targets = np.asarray(targets, dtype="int64")
    origins = np.asarray(origins, dtype="int64")
    if np.any(targets < origins) or np.any(targets >= origins + S):
        raise ValueError("each target must lie within one day after its origin")
    m = targets.shape[0]
    X = np.full((m, len(FEATURE_NAMES)), np.nan, dtype="float64")
    F = FEATURE_INDEX

    secs = start.astype("datetime64[s]").astype("int64") + targets * step_s
    tod = (secs % DAY_S) / DAY_S
    X[:, F["tod_sin"]] = np.sin(2 * np.pi * tod)
    X[:, F["tod_cos"]] = np.cos(2 * np.pi * tod)
    X[:, F["hour"]] = tod * 24.0
    day = secs // DAY_S  # days since 1970-01-01 (a Thursday)
    weekday = (day + 3) % 7
    X[:, F["weekday"]] = weekday
    is_weekend = weekday >= 5
    X[:, F["is_weekend"]] = is_weekend
    hol = calendar.is_holiday(day.astype("datetime64[D]"))
    X[:, F["is_holiday"]] = hol
    X[:, F["is_offday"]] = is_weekend | hol
    prev = day - 1
    X[:, F["prev_day_offday"]] = (((prev + 3) % 7) >= 5) | calendar.is_holiday(prev.astype("datetime64[D]"))
    dates = day.astype("datetime64[D]")
    doy = (dates - dates.astype("datetime64[Y]")).astype("int64")
    X[:, F["doy_sin"]] = np.sin(2 * np.pi * doy / 365.25)
    X[:, F["doy_cos"]] = np.cos(2 * np.pi * doy / 365.25)

    load = np.asarray(load, dtype="float64")
    cs, cs2, cnt = _cumsums(load)
    scale = _window_mean(cs, cnt, origins - 7 * S, origins)
    lags = {d: _take(load, targets - d * S, origins) for d in (1, 2, 7, 14, 21, 28)}
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = 1.0 / scale
        X[:, F["lag_1d"]] = lags[1] * inv
        X[:, F["lag_2d"]] = lags[2] * inv
        X[:, F["lag_7d"]] = lags[7] * inv
        X[:, F["lag_14d"]] = lags[14] * inv
        stack = np.stack([lags[7], lags[14], lags[21], lags[28]])
        n_ok = np.isfinite(stack).sum(axis=0)
        X[:, F["same_step_mean_4w"]] = np.where(n_ok > 0, np.nansum(stack, axis=0) / np.maximum(n_ok, 1), np.nan) * inv
        X[:, F["last_known"]] = _take(load, origins - 1, origins) * inv
        prev_mean = _window_mean(cs, cnt, origins - S, origins)
        X[:, F["prev_day_mean"]] = prev_mean * inv
        mean_sq = _window_mean(cs2, cnt, origins - 7 * S, origins)
        X[:, F["std_7d"]] = np.sqrt(np.maximum(mean_sq - scale * scale, 0.0)) * inv
        week_ago = _window_mean(cs, cnt, origins - 8 * S, origins - 7 * S)
        X[:, F["week_over_week"]] = prev_mean / week_ago

    # Max/min of the day before each distinct origin.
    uo, inverse = np.unique(origins, return_inverse=True)
    win = uo[:, None] - S + np.arange(S)[None, :]
    okw = (win >= 0) & (win < load.shape[0])
    vals = np.where(okw, load[np.clip(win, 0, max(load.shape[0] - 1, 0))], np.nan)
    enough = np.isfinite(vals).sum(axis=1) >= S // 2
    with np.errstate(invalid="ignore"):
        vmax = np.where(enough, np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=1), np.nan)
        vmin = np.where(enough, np.nanmin(np.where(np.isfinite(vals), vals, np.inf), axis=1), np.nan)
        X[:, F["prev_day_max"]] = vmax[inverse] * inv
        X[:, F["prev_day_min"]] = vmin[inverse] * inv

    if temperature is not None:
        temp = np.asarray(temperature, dtype="float64")
        known_to = np.full_like(origins, temp.shape[0])
        X[:, F["temperature"]] = _take(temp, targets, targets + 1)
        X[:, F["temp_lag_1d"]] = _take(temp, targets - S, known_to)
        tcs, _, tcnt = _cumsums(temp)
        X[:, F["temp_day_mean"]] = _window_mean(tcs, tcnt, origins, origins + S)
        X[:, F["temp_prev_day_mean"]] = _window_mean(tcs, tcnt, origins - S, origins)
        h = 3600 // step_s
        X[:, F["temp_roll_3h"]] = _window_mean(tcs, tcnt, targets + 1 - 3 * h, targets + 1)
        X[:, F["temp_roll_12h"]] = _window_mean(tcs, tcnt, targets + 1 - 12 * h, targets + 1)
        tmax = np.full(uo.shape[0], np.nan)
        tmin = np.full(uo.shape[0], np.nan)
        twin = uo[:, None] + np.arange(S)[None, :]
        tok = twin < temp.shape[0]
        tv = np.where(tok, temp[np.clip(twin, 0, temp.shape[0] - 1)], np.nan)
        has = np.isfinite(tv).sum(axis=1) >= S // 2
        tmax[has] = np.nanmax(tv[has], axis=1)
        tmin[has] = np.nanmin(tv[has], axis=1)
        X[:, F["temp_day_max"]] = tmax[inverse]
        X[:, F["temp_day_min"]] = tmin[inverse]
        X[:, F["temp_change_1d"]] = X[:, F["temperature"]] - X[:, F["temp_lag_1d"]]
        X[:, F["temp_day_mean_change"]] = X[:, F["temp_day_mean"]] - X[:, F["temp_prev_day_mean"]]

    return FeatureBatch(X.astype("float32"), scale, targets, origins)


def day_starts(start: np.datetime64, step_s: int, n: int) -> np.ndarray:
    """Grid indices of every midnight (UTC) within ``n`` steps."""
    first_s = int(start.astype("datetime64[s]").astype("int64"))
    S = DAY_S // step_s
    m0 = ((DAY_S - first_s % DAY_S) % DAY_S) // step_s
    return np.arange(m0, n, S, dtype="int64")


def day_ahead_rows(
    n: int,
    start: np.datetime64,
    step_s: int,
    min_history_days: int = MIN_PRIMARY_HISTORY_DAYS,
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and origins for forecasting every whole day at its midnight, from
    ``min_history_days`` days into the data onwards."""
    S = DAY_S // step_s
    starts = day_starts(start, step_s, n)
    starts = starts[(starts >= min_history_days * S) & (starts + S <= n)]
    targets = (starts[:, None] + np.arange(S)[None, :]).ravel()
    origins = np.repeat(starts, S)
    return targets, origins


def baseline_lags(load: np.ndarray, step_s: int, targets: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Same-step loads 1, 7, 14, 21 and 28 days before each target (NaN when unknown)."""
    S = DAY_S // step_s
    return np.stack(
        [_take(np.asarray(load, dtype="float64"), targets - d * S, origins) for d in BASELINE_LAG_DAYS],
        axis=1,
    ).astype("float32")
