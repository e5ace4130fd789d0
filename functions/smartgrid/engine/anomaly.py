"""Anomaly detection in load readings: features and ONNX inference (numpy + onnxruntime).

A multiclass tree model (trained by ``training/anomaly_train.py``) scores every reading as
one of ``KINDS``. Features are log ratios of the reading to its neighbours, to the same
time on other days, and robust local levels and level-shift edges of its ratio to a weekly
profile. Windows are in hours and days, so the same features work at 5 to 60 minutes.
Missing readings are NaN: windows ignore them and they are never flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from smartgrid.engine.data import DAY_S, iso, run_lengths
from smartgrid.errors import ModelIntegrityError

if TYPE_CHECKING:
    from smartgrid.engine.data import Series
    from smartgrid.engine.model_files import LoadedModel

KINDS: tuple[str, ...] = ("normal", "spike", "dip", "flatline", "level_shift")
MISSING = "missing"
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"

EPS = 1e-6  # MW added before taking logs, so zero loads stay finite
NEIGHBOUR_H = 3.0  # neighbours within +-3 h give the local reference of a reading
LEVEL_H = 2.0  # half-width of the centred level window
VOL_H = 12.0  # half-width of the window of the local volatility
NEAR_H = 6.0  # short before/after level windows
FAR_H = 24.0  # long before/after level windows
EDGE_H = 3.0  # medians this long on either side of a candidate level-shift edge
SHIFT_H = 72.0  # how far before/after a reading to look for level-shift edges
RUN_CAP_H = 48.0  # flatline run lengths are capped here (keeps features local)
PROFILE_DAYS = (7, 14, 21)  # weekly profile: same step this many days before and after

ANOMALY_FEATURE_NAMES: tuple[str, ...] = (
    "hour",
    "weekday",
    "nb_ratio",
    "nb_z",
    "prev_ratio",
    "next_ratio",
    "day_ratio",
    "week_ratio",
    "profile_ratio",
    "profile_weeks",
    "volatility",
    "run_hours",
    "level",
    "level_vs_before_6h",
    "level_vs_after_6h",
    "level_vs_before_24h",
    "level_vs_after_24h",
    "edge_before",
    "edge_before_hours",
    "edge_after",
    "edge_after_hours",
    "step_from_before",
    "step_to_after",
)


def steps(hours: float, step_s: int) -> int:
    """A duration in hours as a whole number of steps (at least 1)."""
    return max(1, round(hours * 3600 / step_s))


def feature_reach_steps(step_s: int) -> int:
    """How far (in steps, either way) a reading can influence another reading's features."""

    def h(hours: float) -> int:
        return steps(hours, step_s)

    local = max(
        h(SHIFT_H) + h(EDGE_H) + h(LEVEL_H),
        h(FAR_H) + h(LEVEL_H),
        h(VOL_H) + h(NEIGHBOUR_H),
        h(RUN_CAP_H),
    )
    return max(PROFILE_DAYS) * (DAY_S // step_s) + local  # windows over profile ratios


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """``x[i - k]`` at position i (NaN outside the array)."""
    out = np.full_like(x, np.nan)
    n = x.shape[0]
    if k >= 0 and k < n:
        out[k:] = x[: n - k]
    elif k < 0 and -k < n:
        out[: n + k] = x[-k:]
    return out


def _median_rows(w: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN if a row has none). Sorts ``w`` in place."""
    w.sort(axis=1)  # NaN last
    cnt = np.count_nonzero(~np.isnan(w), axis=1)
    rows = np.arange(w.shape[0])
    lo = np.maximum((cnt - 1) // 2, 0)
    hi = np.minimum(cnt // 2, w.shape[1] - 1)
    med = 0.5 * (w[rows, lo] + w[rows, hi])
    med[cnt == 0] = np.nan
    return med


def _windows(x: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """Sliding windows of ``x`` (NaN-padded) covering offsets lo..hi, and the start row."""
    pad_l, pad_r = max(0, -lo), max(0, hi)
    padded = np.concatenate([np.full(pad_l, np.nan), x, np.full(pad_r, np.nan)])
    return sliding_window_view(padded, hi - lo + 1), lo + pad_l


def _chunks(n: int, width: int) -> list[tuple[int, int]]:
    size = max(1, (1 << 21) // max(width, 1))
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def rolling_median(x: np.ndarray, lo: int, hi: int, *, skip_self: bool = False) -> np.ndarray:
    """Median of the non-NaN ``x[i+lo .. i+hi]`` (inclusive) for every i; NaN if none."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n == 0 or hi < lo:
        return out
    win, start = _windows(x, lo, hi)
    for a, b in _chunks(n, hi - lo + 1):
        w = np.array(win[start + a : start + b], dtype="float64")
        if skip_self and lo <= 0 <= hi:
            w[:, -lo] = np.nan
        out[a:b] = _median_rows(w)
    return out


def _strongest(x: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """For every i, the value of largest magnitude in ``x[i+lo .. i+hi]`` and its offset."""
    n = x.shape[0]
    val = np.full(n, np.nan)
    off = np.full(n, np.nan)
    if n == 0:
        return val, off
    mag = np.where(np.isnan(x), -1.0, np.abs(x))
    win_m, start = _windows(mag, lo, hi)
    win_x, _ = _windows(x, lo, hi)
    for a, b in _chunks(n, hi - lo + 1):
        wm = np.nan_to_num(win_m[start + a : start + b], nan=-1.0)
        j = np.argmax(wm, axis=1)
        rows = np.arange(b - a)
        ok = wm[rows, j] >= 0
        val[a:b] = np.where(ok, win_x[start + a : start + b][rows, j], np.nan)
        off[a:b] = np.where(ok, j + lo, np.nan)
    return val, off


def anomaly_features(load: np.ndarray, step_s: int, start: np.datetime64 | None = None) -> np.ndarray:
    """Feature matrix float32 [n, len(ANOMALY_FEATURE_NAMES)] for readings on a regular grid.

    ``load`` may hold NaN (missing readings). ``start`` (time of the first step) gives the
    calendar features; without it they are NaN.
    """
    load = np.asarray(load, dtype="float64")
    n = load.shape[0]
    if step_s <= 0 or DAY_S % step_s:
        raise ValueError(f"step of {step_s} s does not divide a day")
    spd = DAY_S // step_s

    def h(hours: float) -> int:
        return steps(hours, step_s)

    lg = np.log(np.maximum(load, 0.0) + EPS)
    cols: dict[str, np.ndarray] = {}
    if start is not None:
        secs = start.astype("datetime64[s]").astype("int64") + np.arange(n, dtype="int64") * step_s
        cols["hour"] = (secs % DAY_S) / 3600.0
        cols["weekday"] = ((secs // DAY_S + 3) % 7).astype("float64")  # Monday = 0
    else:
        cols["hour"] = cols["weekday"] = np.full(n, np.nan)

    nb = lg - rolling_median(lg, -h(NEIGHBOUR_H), h(NEIGHBOUR_H), skip_self=True)
    vol = rolling_median(np.abs(nb), -h(VOL_H), h(VOL_H)) + 1e-3
    cols["nb_ratio"] = nb
    cols["nb_z"] = nb / vol
    cols["prev_ratio"] = lg - _shift(lg, 1)
    cols["next_ratio"] = lg - _shift(lg, -1)
    cols["day_ratio"] = lg - _shift(lg, spd)
    cols["week_ratio"] = lg - _shift(lg, 7 * spd)

    # Weekly profile: the same step 1-3 weeks before and after. Where none of those is
    # known (short series), the same step 1-3 days before and after stands in.
    weekly_lags = [s * d * spd for d in PROFILE_DAYS for s in (1, -1)]
    daily_lags = [s * d * spd for d in (1, 2, 3) for s in (1, -1)]
    weekly = np.stack([_shift(load, lag) for lag in weekly_lags], axis=1)
    n_weekly = np.count_nonzero(~np.isnan(weekly), axis=1)
    use_weekly = n_weekly > 0

    def same_step_median(x: np.ndarray) -> np.ndarray:
        w = _median_rows(np.stack([_shift(x, lag) for lag in weekly_lags], axis=1))
        d = _median_rows(np.stack([_shift(x, lag) for lag in daily_lags], axis=1))
        return np.where(use_weekly, w, d)

    profile = same_step_median(load)
    rp = lg - np.log(np.maximum(profile, 0.0) + EPS)
    cols["profile_ratio"] = rp
    cols["profile_weeks"] = n_weekly.astype("float64")
    cols["volatility"] = vol

    runs = np.minimum(run_lengths(load), h(RUN_CAP_H)).astype("float64")
    runs[np.isnan(load)] = np.nan
    cols["run_hours"] = runs * step_s / 3600.0

    level = rolling_median(rp, -h(LEVEL_H), h(LEVEL_H))
    cols["level"] = level
    for name, hours in (("6h", NEAR_H), ("24h", FAR_H)):
        cols[f"level_vs_before_{name}"] = level - rolling_median(rp, -h(hours), -1)
        cols[f"level_vs_after_{name}"] = level - rolling_median(rp, 1, h(hours))

    # Level-shift edges at each boundary j (between readings j-1 and j): the change of the
    # profile ratio's median over EDGE_H either side, counted only as far as it is also a
    # jump between the two readings. Weather moves the ratio gradually and a single spike
    # moves neither median. The jump is the step from the previous reading less the usual
    # step at that time (median of the steps on the profile's days), so that the profile
    # switching between days does not make jumps of its own.
    k = h(EDGE_H)
    before = rolling_median(rp, -k, -1)
    after = rolling_median(rp, 0, k - 1)
    smooth = after - before
    step = lg - _shift(lg, 1)
    jump = step - same_step_median(step)
    edge = np.sign(smooth) * np.minimum(np.abs(smooth), np.abs(jump))
    edge[np.sign(jump) != np.sign(smooth)] = 0.0
    edge[np.isnan(smooth) | np.isnan(jump)] = np.nan
    w = h(SHIFT_H)
    e_b, o_b = _strongest(edge, -w + 1, 0)
    e_a, o_a = _strongest(edge, 1, w)
    idx = np.arange(n)
    cols["edge_before"] = e_b
    cols["edge_before_hours"] = -o_b * step_s / 3600.0
    cols["edge_after"] = e_a
    cols["edge_after_hours"] = o_a * step_s / 3600.0
    cols["step_from_before"] = level - _gather(before, idx, o_b)
    cols["step_to_after"] = level - _gather(after, idx, o_a)

    X = np.stack([cols[name] for name in ANOMALY_FEATURE_NAMES], axis=1)
    return X.astype("float32")


def _gather(x: np.ndarray, idx: np.ndarray, offset: np.ndarray) -> np.ndarray:
    ok = np.isfinite(offset)
    out = np.full(idx.shape[0], np.nan)
    out[ok] = x[idx[ok] + offset[ok].astype("int64")]
    return out


@dataclass
class Detection:
    """Per-reading anomaly scores of one series."""

    timestamps: np.ndarray  # datetime64[s]
    load: np.ndarray  # float64, NaN where missing
    score: np.ndarray  # float64 in [0, 1]: 1 - P(normal); 0 where missing
    kind: list[str]  # most likely anomaly kind where flagged, else "normal" (or "missing")
    flagged: np.ndarray  # bool

    def flagged_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "timestamp": iso(self.timestamps[i]),
                "load": float(self.load[i]),
                "score": float(self.score[i]),
                "kind": self.kind[i],
            }
            for i in np.flatnonzero(self.flagged)
        ]


def predict_probabilities(model: LoadedModel, X: np.ndarray) -> np.ndarray:
    """Class probabilities [N, len(KINDS)] from the ONNX model."""
    if list(model.meta.features) != list(ANOMALY_FEATURE_NAMES):
        raise ModelIntegrityError(f"{model.meta.name}: model features do not match this code's anomaly features")
    if X.shape[0] == 0:
        return np.zeros((0, len(KINDS)), dtype="float32")
    out = model.run({INPUT_NAME: np.ascontiguousarray(X, dtype="float32")}, [OUTPUT_NAME])[0]
    probs = np.asarray(out, dtype="float32")
    if probs.shape != (X.shape[0], len(KINDS)):
        raise ModelIntegrityError(f"{model.meta.name}: unexpected output shape {probs.shape}")
    return probs


def detect(series: Series, model: LoadedModel, threshold: float = 0.5) -> Detection:
    """Score every reading; flag those with ``1 - P(normal) >= threshold``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    X = anomaly_features(series.load, series.step_s, series.start)
    probs = predict_probabilities(model, X).astype("float64")
    present = ~np.isnan(series.load)
    score = np.where(present, np.clip(1.0 - probs[:, 0], 0.0, 1.0), 0.0)
    flagged = present & (score >= threshold)
    best = 1 + np.argmax(probs[:, 1:], axis=1) if probs.shape[0] else np.zeros(0, dtype="int64")
    kind = [
        KINDS[int(b)] if f else ("normal" if p else MISSING) for b, f, p in zip(best, flagged, present, strict=True)
    ]
    return Detection(series.timestamps, series.load.copy(), score, kind, flagged)
