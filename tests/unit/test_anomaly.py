"""Anomaly detector: features, injection, ONNX export and detection on real data slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smartgrid.engine import model_files as registry
from smartgrid.engine.anomaly import (
    ANOMALY_FEATURE_NAMES,
    KINDS,
    MISSING,
    anomaly_features,
    detect,
    feature_reach_steps,
)
from smartgrid.engine.data import DAY_S, Series
from smartgrid.errors import ModelIntegrityError
from smartgrid.training import anomaly_train as at
from tests.helpers.series import upsample

pytest.importorskip("lightgbm")
pytest.importorskip("onnx")

# Tests that train a detector (the trained fixture, train_detector, train_and_save) are marked slow.
TRAIN_DAYS = 110  # of the 150-day slices in tests/data; the rest is held out


@pytest.fixture(scope="module")
def train_series(gefcom: Series, pjme: Series) -> list[Series]:
    return [gefcom.slice(0, TRAIN_DAYS * 24), pjme.slice(0, TRAIN_DAYS * 24)]


@pytest.fixture(scope="module")
def test_slice(gefcom: Series) -> Series:
    return gefcom.slice(TRAIN_DAYS * 24, gefcom.n)


@pytest.fixture(scope="module")
def trained(train_series: list[Series]) -> tuple[Any, registry.LoadedModel, bytes]:
    booster = at.train_detector(train_series, seed=0, n_rounds=80, copies=3)
    onnx_bytes = at.export_detector_onnx(booster)
    return booster, at.session_model(onnx_bytes), onnx_bytes


def _with_load(s: Series, load: np.ndarray) -> Series:
    return Series(s.start, s.step_s, load, None, source=s.source)


# ----------------------------------------------------------------------------- features


def test_features_shape_and_dtype(gefcom: Series) -> None:
    X = anomaly_features(gefcom.load, gefcom.step_s, gefcom.start)
    assert X.shape == (gefcom.n, len(ANOMALY_FEATURE_NAMES))
    assert X.dtype == np.float32
    assert len(set(ANOMALY_FEATURE_NAMES)) == len(ANOMALY_FEATURE_NAMES)
    assert not np.isinf(X).any()
    reach = feature_reach_steps(gefcom.step_s)
    assert gefcom.n > 2 * reach
    assert np.isfinite(X[reach : gefcom.n - reach]).all()  # away from the ends all is known


@pytest.mark.parametrize("n", [0, 1, 2, 5, 30, 200])
def test_features_tolerate_short_series_nan_and_zero(n: int) -> None:
    rng = np.random.default_rng(n)
    load = 1000 + 100 * rng.random(n)
    if n >= 5:
        load[1] = np.nan
        load[3] = 0.0
    X = anomaly_features(load, 3600)
    assert X.shape == (n, len(ANOMALY_FEATURE_NAMES))
    assert not np.isinf(X).any()


@pytest.mark.parametrize("minutes", [60, 15])
def test_features_are_local(gefcom: Series, minutes: int) -> None:
    """Changing readings beyond the reach does not change a reading's features."""
    s = gefcom if minutes == 60 else upsample(gefcom, minutes)
    load = s.load.copy()
    reach = feature_reach_steps(s.step_s)
    i = s.n // 2
    base = anomaly_features(load, s.step_s, s.start)[i]
    changed = load.copy()
    changed[: i - reach] *= 1.7
    changed[i + reach + 1 :] = np.nan
    changed[i - reach - 5 : i - reach - 2] = changed[i - reach - 5]  # a flatline far away
    np.testing.assert_array_equal(base, anomaly_features(changed, s.step_s, s.start)[i])
    # ... and the reach is not vacuous: a change a few hours away does matter.
    near = load.copy()
    near[i - 3 * 3600 // s.step_s] *= 1.7
    assert not np.array_equal(base, anomaly_features(near, s.step_s, s.start)[i])


def test_features_do_not_depend_on_resolution(gefcom: Series) -> None:
    """Lags are whole days and windows hours: at the hourly readings of 15-minute data the
    calendar and profile features equal those of the hourly data."""
    hourly = anomaly_features(gefcom.load, gefcom.step_s, gefcom.start)
    fine = upsample(gefcom, 15)
    quarter = anomaly_features(fine.load, fine.step_s, fine.start)[::4]
    names = ["hour", "weekday", "day_ratio", "week_ratio", "profile_ratio", "profile_weeks"]
    cols = [ANOMALY_FEATURE_NAMES.index(n) for n in names]
    np.testing.assert_allclose(quarter[:, cols], hourly[:, cols], atol=1e-6)


# ---------------------------------------------------------------------------- injection


def test_inject_anomalies_is_documented_and_deterministic(gefcom: Series) -> None:
    load = gefcom.load.copy()
    load[100:110] = np.nan
    a, la = at.inject_anomalies(load, 3600, np.random.default_rng(3), 25)
    b, lb = at.inject_anomalies(load, 3600, np.random.default_rng(3), 25)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert np.isnan(a[100:110]).all() and (la[100:110] == 0).all()
    clean = la == 0
    np.testing.assert_array_equal(a[clean], load[clean])
    starts = np.flatnonzero((la > 0) & np.r_[True, la[1:] != la[:-1]])
    ends = np.flatnonzero((la > 0) & np.r_[la[1:] != la[:-1], True]) + 1
    assert 10 <= starts.size <= 25
    assert np.all(starts[1:] - ends[:-1] >= 24)  # at least a day apart
    for s, e in zip(starts, ends, strict=True):
        kind = KINDS[la[s]]
        ratio = a[s:e] / load[s:e]
        if kind == "spike":
            assert e - s == 1 and 1.25 <= ratio[0] <= 2.0
        elif kind == "dip":
            assert e - s == 1 and 0.2 <= ratio[0] <= 0.75
        elif kind == "flatline":
            assert 3 <= e - s <= 12 and np.all(a[s:e] == load[s])
        else:
            assert 6 <= e - s <= 72 and np.allclose(ratio, ratio[0])
            assert 0.2 <= abs(ratio[0] - 1) <= 0.4


# ------------------------------------------------------------------------ ONNX and model


@pytest.mark.slow
def test_onnx_matches_booster(trained: tuple[Any, registry.LoadedModel, bytes], test_slice: Series) -> None:
    booster, model, onnx_bytes = trained
    load, _ = at.inject_anomalies(test_slice.load, 3600, np.random.default_rng(1), 15)
    load[50:53] = np.nan
    X = anomaly_features(load, 3600, test_slice.start)
    assert at.onnx_max_abs_diff(booster, model, X) < 1e-5
    assert len(onnx_bytes) < 500 * 1024


def _events(s: Series) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str]]]:
    """Hand-placed events of moderate size, two of each kind, days apart."""
    load = s.load.copy()
    labels = np.zeros(s.n, dtype="int64")
    plan = [
        (2 * 24 + 9, 1, "spike", 1.5),
        (6 * 24 + 3, 1, "spike", 1.35),
        (10 * 24 + 14, 1, "dip", 0.55),
        (14 * 24 + 2, 1, "dip", 0.7),
        (18 * 24 + 6, 8, "flatline", 0.0),
        (22 * 24 + 15, 5, "flatline", 0.0),
        (26 * 24 + 8, 30, "level_shift", 1.3),
        (33 * 24 + 20, 12, "level_shift", 0.7),
    ]
    events = []
    for a, length, kind, factor in plan:
        b = a + length
        load[a:b] = load[a] if kind == "flatline" else load[a:b] * factor
        labels[a:b] = KINDS.index(kind)
        events.append((a, b, kind))
    return load, labels, events


@pytest.mark.slow
def test_detects_injected_events_with_kind(
    trained: tuple[Any, registry.LoadedModel, bytes], test_slice: Series
) -> None:
    _, model, _ = trained
    load, labels, events = _events(test_slice)
    det = detect(_with_load(test_slice, load), model)
    right = 0
    for a, b, kind in events:
        hit = det.flagged[a:b]
        kinds = [k for k, f in zip(det.kind[a:b], hit, strict=True) if f]
        if hit.mean() >= 0.5 and kinds.count(kind) >= len(kinds) / 2:
            right += 1
    assert right >= len(events) - 1, [(e, det.kind[e[0]], det.score[e[0]]) for e in events]
    # Clean readings: a few next to an event may be flagged (a level shift's edge is
    # uncertain by an hour or two); far from events hardly any.
    near = np.convolve(labels > 0, np.ones(25), mode="same") > 0
    assert det.flagged[labels == 0].mean() < 0.02
    assert det.flagged[~near].mean() < 0.01


@pytest.mark.slow
def test_clean_data_has_few_flags(trained: tuple[Any, registry.LoadedModel, bytes], test_slice: Series) -> None:
    det = detect(test_slice, trained[1])
    assert det.flagged.mean() < 0.01
    assert det.score.min() >= 0.0 and det.score.max() <= 1.0
    assert set(det.kind) <= {"normal", *KINDS[1:]}


@pytest.mark.slow
def test_missing_readings_are_never_flagged(
    trained: tuple[Any, registry.LoadedModel, bytes], test_slice: Series
) -> None:
    load, _, _ = _events(test_slice)
    gaps = np.r_[2 * 24 + 8, 2 * 24 + 10, 10 * 24 + 14, np.arange(100, 106)]
    load[gaps] = np.nan
    det = detect(_with_load(test_slice, load), trained[1])
    assert not det.flagged[gaps].any()
    assert all(det.kind[i] == MISSING for i in gaps)
    assert np.all(det.score[gaps] == 0.0)
    assert np.all((det.score >= 0.0) & (det.score <= 1.0))
    assert det.flagged[2 * 24 + 9]  # the spike between two missing readings is still found
    rows = det.flagged_rows()
    assert len(rows) == int(det.flagged.sum())
    assert rows and all(r["timestamp"].endswith("Z") and r["kind"] in KINDS[1:] for r in rows)
    assert np.isfinite(det.score).all()


@pytest.mark.slow
def test_detect_refuses_other_feature_sets(
    trained: tuple[Any, registry.LoadedModel, bytes], test_slice: Series
) -> None:
    model = trained[1]
    meta = registry.ModelMetadata(**{**model.meta.__dict__, "features": ["a", "b"]})
    with pytest.raises(ModelIntegrityError):
        detect(test_slice, registry.LoadedModel(meta, model.session))
    with pytest.raises(ValueError):
        detect(test_slice, model, threshold=1.5)


@pytest.mark.slow
def test_evaluate_detector_reports_per_kind(
    trained: tuple[Any, registry.LoadedModel, bytes], test_slice: Series
) -> None:
    m = at.evaluate_detector([test_slice], trained[1].session, seed=4, n_events_per_series=12)
    assert set(m["per_kind"]) == set(KINDS[1:])
    assert m["f1"] > 0.9 and m["clean_fp_rate"] < 0.01
    assert 0 < m["injected_readings"] < m["readings"]


# -------------------------------------------------------------------- resolution, saving


@pytest.mark.slow
def test_15_minute_data(train_series: list[Series], gefcom: Series) -> None:
    """Hourly data upsampled to 15 minutes: windows are in hours, so the same features
    and training work; events are one 15-minute reading or many readings long."""
    train = [upsample(s, 15) for s in train_series]
    test = upsample(gefcom.slice(TRAIN_DAYS * 24 - 1, gefcom.n), 15)
    booster = at.train_detector(train, seed=1, n_rounds=60, copies=3)
    model = at.session_model(at.export_detector_onnx(booster), resolution_minutes=15)
    m = at.evaluate_detector([test], model, seed=2, n_events_per_series=10)
    assert m["recall"] > 0.9 and m["precision"] > 0.9
    assert m["clean_fp_rate"] < 0.01
    load, labels = at.inject_anomalies(test.load, test.step_s, np.random.default_rng(5), 8)
    det = detect(_with_load(test, load), model)
    assert det.flagged[labels > 0].mean() > 0.75
    assert det.score.shape == (test.n,)


@pytest.mark.slow
def test_train_and_save_round_trip(gefcom: Series, tmp_path: Path) -> None:
    series = [gefcom]
    meta = at.train_and_save(
        series, tmp_path, training_window={"start": "a", "end": "b"}, resolution_minutes=60, seed=0, n_rounds=30
    )
    loaded = registry.load_model(tmp_path, registry.ANOMALY_DETECTOR)
    assert loaded.meta.sha256 == meta.sha256
    assert loaded.meta.features == list(ANOMALY_FEATURE_NAMES)
    assert loaded.meta.params == {"threshold": 0.5, "kinds": list(KINDS)}
    assert loaded.meta.created_at.endswith("Z")
    assert {"precision", "recall", "f1", "clean_fp_rate", "per_kind"} <= set(loaded.meta.metrics)
    assert loaded.meta.metrics["onnx_max_abs_diff"] < 1e-5
    det = detect(series[0].slice(0, 30 * 24), loaded)
    assert det.score.shape == (30 * 24,)
    assert DAY_S % series[0].step_s == 0
