"""The rolling-origin backtest: no training data from the test block, metrics as specified."""

from __future__ import annotations

import numpy as np
import pytest

from smartgrid.engine.accuracy import all_metrics, coverage, mape, pinball, rmae
from smartgrid.engine.data import Series
from smartgrid.engine.features import HolidayCalendar
from smartgrid.training.backtest import run_backtest
from smartgrid.training.moe import MoEParams
from smartgrid.training.pipeline import TrainingRows

# Backtests that train (run_backtest end to end) are marked slow; one refused before any training is not.
SMALL = MoEParams(n_estimators=30, num_leaves=15, learning_rate=0.2, threads=1)


@pytest.mark.slow
def test_blocks_train_only_on_earlier_days(gefcom: Series, calendar: HolidayCalendar) -> None:
    seen: list[tuple[int, int, int]] = []

    def spy(train: TrainingRows, test: TrainingRows) -> np.ndarray:
        seen.append((int(train.day_id.max()), int(test.day_id.min()), int(test.day_id.max())))
        return np.stack([test.lags[:, 0]] * 3, axis=1).astype("float64")

    s = gefcom.slice(0, 24 * 80)
    res = run_backtest(s, calendar, test_days=10, retrain_every=4, params=SMALL, references={"spy": spy})
    assert len(seen) == 3  # 4 + 4 + 2 days
    for train_last, test_first, _ in seen:
        assert train_last == test_first - 1  # everything up to the day before, nothing after
    assert res.test_days == 10 and res.retrain_every == 4
    assert res.methods["moe"]["rows"] == 240
    # the spy forecast equals the naive same-step-yesterday point forecast
    assert res.methods["spy"]["mape"] == pytest.approx(res.methods["naive_day"]["mape"])
    assert res.test_end.startswith(str(s.end.astype("datetime64[D]")))


@pytest.mark.slow
def test_default_test_period_is_last_fifth_of_whole_days(gefcom: Series, calendar: HolidayCalendar) -> None:
    s = gefcom.slice(5, 24 * 100 + 5)  # starts at 05:00: the first and last days are partial
    res = run_backtest(s, calendar, params=SMALL)
    assert res.test_days == round(99 * 0.2)
    js = res.to_json()
    assert set(js) >= {"resolution_minutes", "test_days", "methods"}
    assert set(js["methods"]) >= {"moe", "naive_day", "naive_week"}


def test_too_many_test_days_is_a_clear_error(gefcom: Series, calendar: HolidayCalendar) -> None:
    with pytest.raises(ValueError, match="too few training days"):
        run_backtest(gefcom.slice(0, 24 * 30), calendar, test_days=20, params=SMALL)


def test_metrics_by_hand() -> None:
    y = np.array([100.0, 200.0, 300.0])
    q = np.array([[90.0, 110.0, 120.0], [150.0, 180.0, 190.0], [280.0, 300.0, 330.0]])
    assert mape(y, q[:, 1]) == pytest.approx((10 / 100 + 20 / 200 + 0) / 3 * 100)
    assert rmae(y, q[:, 1]) == pytest.approx(10.0 / 200.0)
    assert coverage(y, q) == pytest.approx(2 / 3)
    # pinball at tau for each quantile, averaged
    expected = np.mean(
        [
            np.mean([0.1 * 10, 0.1 * 50, 0.1 * 20]),
            np.mean([0.5 * 10, 0.5 * 20, 0.0]),
            np.mean([0.1 * 20, 0.9 * 10, 0.1 * 30]),
        ]
    )
    assert pinball(y, q) == pytest.approx(expected)
    assert set(all_metrics(y, q)) == {"mape", "mae", "rmae", "pinball", "coverage_80"}
