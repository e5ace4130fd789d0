"""ONNX export round trips, checksum refusal, and primary/fallback selection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from smartgrid.engine.data import Series, readings_from_records
from smartgrid.engine.features import FEATURE_NAMES, HolidayCalendar
from smartgrid.engine.forecast import Forecaster, ModelSet
from smartgrid.engine.model_files import BASELINE_FORECAST, LOAD_FORECAST, ModelMetadata, load_model, save_model
from smartgrid.errors import DataValidationError, ForecastUnavailableError, ModelIntegrityError
from smartgrid.training import baseline as baseline_mod
from smartgrid.training import moe as moe_mod
from smartgrid.training.pipeline import TrainingRows, day_ahead_training_rows, fit_models
from tests.helpers.series import upsample

pytestmark = pytest.mark.slow  # every test uses models trained here (fit_models, the trained fixture)

SMALL = moe_mod.MoEParams(n_estimators=40, num_leaves=15, learning_rate=0.2, threads=1)


@pytest.fixture(scope="module")
def rows(gefcom: Series, calendar: HolidayCalendar) -> TrainingRows:
    return day_ahead_training_rows(gefcom.slice(0, 24 * 120), calendar)


@pytest.fixture(scope="module")
def trained(rows: TrainingRows):
    return fit_models(rows, SMALL)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, trained) -> Path:
    moe, base = trained
    d = tmp_path_factory.mktemp("models")
    common = {
        "version": "test",
        "created_at": "2024-01-01T00:00:00Z",
        "training_window": {"start": "a", "end": "b"},
        "resolution_minutes": 60,
        "metrics": {},
    }
    save_model(d, ModelMetadata(name=LOAD_FORECAST, features=list(FEATURE_NAMES), **common), moe_mod.export_onnx(moe))
    save_model(d, ModelMetadata(name=BASELINE_FORECAST, features=[], **common), baseline_mod.export_onnx(base))
    return d


def readings_of(s: Series, n: int | None = None):
    load = s.load if n is None else s.load[:n]
    ts = s.timestamps[: load.size]
    temp = None if s.temperature is None else s.temperature[: load.size]
    return readings_from_records(ts, load, temp)


def test_moe_onnx_matches_training_library(trained, rows: TrainingRows) -> None:
    moe, _ = trained
    sess = ort.InferenceSession(moe_mod.export_onnx(moe))
    X = rows.X[-500:].copy()
    X[::7, 5:12] = np.nan  # missing values take LightGBM's default branches in ONNX too
    scale = rows.scale[-500:]
    q_onnx, gates = sess.run(None, {"features": X, "scale": scale.astype("float32")[:, None]})
    q_py = moe.predict(X, scale)
    np.testing.assert_allclose(q_onnx, q_py, rtol=1e-4)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-5)
    assert (gates > 0).all() and len(moe.expert_names) >= 3  # soft weights over several experts
    assert (np.diff(q_onnx, axis=1) >= 0).all()  # quantiles never cross


def test_each_expert_tree_export_is_exact(trained, rows: TrainingRows) -> None:
    from onnx import TensorProto, helper

    from smartgrid.training.onnx_trees import make_model, tree_ensemble_node

    moe, _ = trained
    node, k = tree_ensemble_node(moe.boosters, "features", "raw")
    onnx_bytes = make_model(
        [node],
        "t",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [None, k])],
        [],
    )
    X = rows.X[:300].copy()
    X[::5, :] = np.nan
    out = ort.InferenceSession(onnx_bytes).run(None, {"features": X})[0]
    ref = np.stack([b.predict(X) for b in moe.boosters], axis=1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_baseline_onnx_matches_python(trained, rows: TrainingRows) -> None:
    _, base = trained
    sess = ort.InferenceSession(baseline_mod.export_onnx(base))
    lags = rows.lags[:200].copy()
    lags[::3, 1:] = np.nan  # missing weeks: weights renormalise over what is known
    hour = rows.hour[:200].astype("float32")[:, None]
    q = sess.run(None, {"lags": lags, "hour": hour})[0]
    np.testing.assert_allclose(q, base.predict(lags.astype("float64"), rows.hour[:200]), rtol=1e-5)
    assert np.isclose(base.weights.sum(), 1.0) and (base.weights > 0).all()


def test_checksum_mismatch_is_refused(model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    data = bytearray((d / "load_forecast.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "load_forecast.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        load_model(d, LOAD_FORECAST)
    ms = ModelSet.load(d)
    assert LOAD_FORECAST not in ms.models and "checksum" in ms.errors[LOAD_FORECAST]
    assert BASELINE_FORECAST in ms.models


def test_truncated_model_is_refused(model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    (d / "baseline_forecast.onnx").write_bytes((d / "baseline_forecast.onnx").read_bytes()[:100])
    with pytest.raises(ModelIntegrityError):
        load_model(d, BASELINE_FORECAST)


def _forecaster(d: Path, calendar: HolidayCalendar) -> Forecaster:
    return Forecaster(ModelSet.load(d), calendar)


def test_primary_used_with_full_history(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    fc = _forecaster(model_dir, calendar).forecast_readings(readings_of(gefcom, 24 * 60))
    assert fc.model == LOAD_FORECAST and fc.fallback_reason is None
    assert len(fc.p50) == 24 and str(fc.timestamps[0]) == str(gefcom.timestamps[24 * 60])
    assert (fc.p10 <= fc.p50).all() and (fc.p50 <= fc.p90).all()
    actual = gefcom.load[24 * 60 : 24 * 61]
    assert np.mean(np.abs(fc.p50 - actual) / actual) < 0.15  # a real forecast, not noise


def test_fallback_on_short_history(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    fc = _forecaster(model_dir, calendar).forecast_readings(readings_of(gefcom, 24 * 5))
    assert fc.model == BASELINE_FORECAST
    assert "14" in (fc.fallback_reason or "")
    np.testing.assert_allclose(fc.p50, gefcom.load[24 * 4 : 24 * 5], rtol=1e-5)  # only yesterday is known


def _without(r, lo: int, hi: int):
    keep = np.ones(len(r), bool)
    keep[lo:hi] = False
    return readings_from_records(r.timestamps[keep], r.load[keep], r.temperature[keep])


def test_fallback_on_recent_gap_only(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    r = readings_of(gefcom, 24 * 60)
    fc = _forecaster(model_dir, calendar).forecast_readings(_without(r, 24 * 50, 24 * 50 + 5))
    assert fc.model == BASELINE_FORECAST and "5 missing reading(s)" in (fc.fallback_reason or "")
    # a gap older than the 28 days the primary reads does not matter
    fc = _forecaster(model_dir, calendar).forecast_readings(_without(r, 24 * 20, 24 * 20 + 5))
    assert fc.model == LOAD_FORECAST


def test_fallback_on_recent_flatline(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    r = readings_of(gefcom, 24 * 60)
    r.load[24 * 55 : 24 * 55 + 8] = 1234.0
    fc = _forecaster(model_dir, calendar).forecast_readings(r)
    assert fc.model == BASELINE_FORECAST and "flatline" in (fc.fallback_reason or "")


def test_fallback_when_history_ends_mid_day(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    fc = _forecaster(model_dir, calendar).forecast_readings(readings_of(gefcom, 24 * 60 + 13))
    assert fc.model == BASELINE_FORECAST and "end of a day" in (fc.fallback_reason or "")
    assert str(fc.timestamps[0]) == str(gefcom.timestamps[24 * 60 + 13])


def test_fallback_when_primary_missing_or_corrupt(
    model_dir: Path, tmp_path: Path, gefcom: Series, calendar: HolidayCalendar
) -> None:
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    (d / "load_forecast.onnx").write_bytes(b"not a model")
    fc = _forecaster(d, calendar).forecast_readings(readings_of(gefcom, 24 * 60))
    assert fc.model == BASELINE_FORECAST and "checksum" in (fc.fallback_reason or "")
    (d / "load_forecast.onnx").unlink()
    (d / "load_forecast.json").unlink()
    fc = _forecaster(d, calendar).forecast_readings(readings_of(gefcom, 24 * 60))
    assert fc.model == BASELINE_FORECAST and "not loaded" in (fc.fallback_reason or "")
    (d / "baseline_forecast.json").unlink()
    with pytest.raises(ForecastUnavailableError):
        _forecaster(d, calendar).forecast_readings(readings_of(gefcom, 24 * 60))


def test_hard_errors_are_not_papered_over(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    r = readings_of(gefcom, 24 * 60)
    r.load[100] = -3.0
    with pytest.raises(DataValidationError, match="negative"):
        _forecaster(model_dir, calendar).forecast_readings(r)
    with pytest.raises(DataValidationError, match="day"):
        _forecaster(model_dir, calendar).forecast_readings(readings_of(gefcom, 12))


def test_temperature_forecast_must_cover_the_next_day(
    model_dir: Path, gefcom: Series, calendar: HolidayCalendar
) -> None:
    n = 24 * 60
    f = _forecaster(model_dir, calendar)
    fut_ts = gefcom.timestamps[n : n + 24]
    good = readings_from_records(fut_ts, [0.0] * 24, gefcom.temperature[n : n + 24])
    a = f.forecast_readings(readings_of(gefcom, n), good)
    b = f.forecast_readings(readings_of(gefcom, n))
    assert a.model == b.model == LOAD_FORECAST and not np.allclose(a.p50, b.p50)
    bad = readings_from_records(fut_ts[:-1], [0.0] * 23, gefcom.temperature[n : n + 23])
    with pytest.raises(DataValidationError, match="one value per step"):
        f.forecast_readings(readings_of(gefcom, n), bad)


def test_primary_at_15_minutes(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    fine = upsample(gefcom.slice(0, 24 * 40 + 1), 15)
    fine = fine.slice(0, 40 * 96)  # whole days: 00:00 .. 23:45
    fc = _forecaster(model_dir, calendar).forecast(fine)
    assert fc.model == LOAD_FORECAST and fc.p50.shape == (96,) and fc.resolution_minutes == 15
    assert str(fc.timestamps[0]) == str(gefcom.timestamps[24 * 40])
    actual = gefcom.load[24 * 40 : 24 * 41]  # the hourly readings at :00
    assert np.mean(np.abs(fc.p50[::4] - actual) / actual) < 0.1


def test_temperature_forecast_range_is_checked(model_dir: Path, gefcom: Series, calendar: HolidayCalendar) -> None:
    n = 24 * 60
    hot = gefcom.temperature[n : n + 24].copy()
    hot[3] = 500.0
    bad = readings_from_records(gefcom.timestamps[n : n + 24], [0.0] * 24, hot)
    with pytest.raises(DataValidationError, match="row\\(s\\) 4"):
        _forecaster(model_dir, calendar).forecast_readings(readings_of(gefcom, n), bad)
